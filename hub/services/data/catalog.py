"""The catalog: one row per series, the attributes people filter on, in
DuckDB (a column store: facet counts over a million series in milliseconds,
where SQLite and PostgreSQL take tens to hundreds; see docs/dependencies.md).

Rows come from the archive (kept in step by the change feed and a full
re-crawl over QIDO-RS, :mod:`.catalog_sync`) and from metadata-only
collections (``imaginghub catalog import-idc``). Every row carries the
projects it belongs to; every query is limited to the caller's projects.

A query (:class:`Query`): values per field (OR within a field, AND across
fields; ``"(missing)"`` selects empty values), ranges (dates, age, instance
count, size, slice thickness), a case-insensitive text search in the series
and study descriptions, tags, and other series-level attributes by DICOM
keyword. The answer: the total, one page of rows, and facet counts per
requested field over the current filter (each field's own filter left out,
so that its other values can still be added).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from ....kernels.catalog import FIELDS, KEYWORDS
from .errors import QueryError

MISSING = "(missing)"
# the columns of a row in an answer, and the SQL that makes one row's JSON
# (the page's rows come out of the statement that finds them)
SHOWN = [*FIELDS, "project_set"]
ROW_JSON = "CAST(to_json({" + ", ".join(f"'{c}': {c}" for c in SHOWN) + "}) AS VARCHAR)"
MAX_PAGE = 1000
MAX_FACET_VALUES = 200

ALIASES = {**KEYWORDS, **{kw.lower(): name for kw, name in KEYWORDS.items()}}


def field_name(name: str) -> str:
    """Our column for ``name`` (ours or its DICOM keyword), else QueryError."""
    if name in FIELDS:
        return name
    if name in ALIASES:
        return ALIASES[name]
    raise QueryError(f"unknown field {name!r}: use one of {', '.join(FIELDS)}, or a DICOM "
                     "keyword under 'attributes'")


def _date(value) -> dt.date | None:
    if value in (None, ""):
        return None
    text = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise QueryError(f"malformed date {value!r}: write YYYY-MM-DD (or YYYYMMDD)")


def _number(value, name: str) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise QueryError(f"{name}: {value!r} is not a number") from None


@dataclass
class Query:
    filters: dict[str, list] = field(default_factory=dict)
    ranges: dict[str, tuple] = field(default_factory=dict)
    text: str = ""
    tags: list[str] = field(default_factory=list)
    attributes: dict[str, list[str]] = field(default_factory=dict)
    facets: list[str] = field(default_factory=list)
    sort: str = "-study_date"
    limit: int = 50
    offset: int = 0

    @classmethod
    def parse(cls, body: dict) -> Query:
        """Validate a request body (JSON); QueryError says what is wrong."""
        if not isinstance(body, dict):
            raise QueryError("the query must be a JSON object")
        unknown = set(body) - {"filters", "ranges", "text", "tags", "attributes", "facets",
                               "sort", "limit", "offset"}
        if unknown:
            raise QueryError(f"unknown query keys {sorted(unknown)}: use filters, ranges, "
                             "text, tags, attributes, facets, sort, limit, offset")
        q = cls()
        for name, values in (body.get("filters") or {}).items():
            col = field_name(name)
            values = values if isinstance(values, list) else [values]
            if FIELDS[col][2] != "text":
                raise QueryError(f"{col} is a {FIELDS[col][2]}: give it under 'ranges'")
            q.filters[col] = [None if v in (None, MISSING) else str(v) for v in values]
        for name, bounds in (body.get("ranges") or {}).items():
            col = field_name(name)
            kind = FIELDS[col][2]
            if kind == "text":
                raise QueryError(f"{col} is text: give its values under 'filters'")
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
                raise QueryError(f"range of {col}: give [low, high] (either may be null)")
            conv = _date if kind == "date" else (lambda v, c=col: _number(v, c))
            q.ranges[col] = (conv(bounds[0]), conv(bounds[1]))
        q.text = str(body.get("text") or "").strip()
        q.tags = [str(t) for t in (body.get("tags") or [])]
        for keyword, values in (body.get("attributes") or {}).items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{1,63}", str(keyword)):
                raise QueryError(f"attribute {keyword!r}: give a DICOM keyword")
            from pydicom.datadict import tag_for_keyword

            if tag_for_keyword(str(keyword)) is None:
                raise QueryError(f"attribute {keyword!r} is not a DICOM keyword")
            q.attributes[str(keyword)] = [str(v) for v in
                                          (values if isinstance(values, list) else [values])]
        q.facets = [field_name(f) for f in (body.get("facets") or [])]
        sort = str(body.get("sort") or "-study_date")
        q.sort = ("-" if sort.startswith("-") else "") + field_name(sort.lstrip("-"))
        try:
            q.limit = int(body.get("limit", 50))
            q.offset = int(body.get("offset", 0))
        except (TypeError, ValueError):
            raise QueryError("limit and offset must be whole numbers") from None
        if not 0 <= q.limit <= MAX_PAGE:
            raise QueryError(f"limit {q.limit}: pages hold 0 to {MAX_PAGE} rows; page "
                             "with offset for more")
        if q.offset < 0:
            raise QueryError("offset must not be negative")
        return q


class Catalog:
    def __init__(self, path: str | Path):
        self.path = str(path)
        self.db = duckdb.connect(self.path)
        self._write = threading.Lock()
        self._sets: list[str] | None = None
        columns = ", ".join(f"{name} {typ}" for name, (typ, _, _) in FIELDS.items()
                            if name != "series_uid")
        self.db.execute(f"""
            CREATE TABLE IF NOT EXISTS series (
                series_uid VARCHAR PRIMARY KEY, {columns},
                project_set VARCHAR, source VARCHAR, attributes JSON, updated TIMESTAMP,
                search_text VARCHAR)""")
        self.db.execute("""
            CREATE TABLE IF NOT EXISTS tags (
                series_uid VARCHAR, project VARCHAR, tag VARCHAR, added_by VARCHAR,
                added_at TIMESTAMP, PRIMARY KEY (series_uid, project, tag))""")

    def cursor(self):
        """A cursor for one thread (DuckDB connections are not shared)."""
        try:
            return self.db.cursor()
        except duckdb.ConnectionException:  # closed by _reopen just now
            with self._write:
                return self.db.cursor()

    def _reopen(self) -> None:
        """Open the file again (with the write lock held). After a bulk load
        DuckDB keeps the new rows in memory as they were inserted, and text
        searches over them took 1.4x as long (measured: 35 against 24 ms on
        the IDC import) until the database was opened again."""
        self.db.execute("CHECKPOINT")
        self.db.close()
        self.db = duckdb.connect(self.path)

    # -- writing ----------------------------------------------------------
    def upsert(self, rows: list[dict], source: str = "archive") -> int:
        """Insert or replace series rows (keys: our field names, ``projects``,
        ``attributes``)."""
        if not rows:
            return 0
        names = list(FIELDS)
        values = []
        now = dt.datetime.now()
        for r in rows:
            values.append([r.get(n) for n in names] + [
                _project_set(r.get("projects")), source,
                json.dumps(r.get("attributes") or {}), now,
                " ".join(str(r.get(k) or "") for k in ("series_description",
                                                        "study_description")).lower()])
        cols = ", ".join(names + ["project_set", "source", "attributes", "updated",
                                  "search_text"])
        marks = ", ".join("?" * (len(names) + 5))
        with self._write:
            self._sets = None
            c = self.cursor()
            c.execute("BEGIN")
            c.execute("DELETE FROM series WHERE series_uid IN (SELECT unnest(?))",
                      [[r["series_uid"] for r in rows]])
            c.executemany(f"INSERT INTO series ({cols}) VALUES ({marks})", values)
            c.execute("COMMIT")
        return len(rows)

    def delete(self, series_uids: list[str]) -> None:
        with self._write:
            self._sets = None
            c = self.cursor()
            c.execute("DELETE FROM series WHERE series_uid IN (SELECT unnest(?))",
                      [list(series_uids)])
            c.execute("DELETE FROM tags WHERE series_uid IN (SELECT unnest(?))",
                      [list(series_uids)])

    def set_projects(self, series_uid: str, projects: list[str]) -> None:
        with self._write:
            self._sets = None
            self.cursor().execute("UPDATE series SET project_set = ? WHERE series_uid = ?",
                                  [_project_set(projects), series_uid])

    def tag(self, series_uids: list[str], project: str, tag: str, by: str,
            remove: bool = False) -> int:
        """Add (or remove) a free-text tag on series, shared in ``project``."""
        tag = tag.strip()
        if not tag or len(tag) > 64:
            raise QueryError("a tag is 1 to 64 characters")
        with self._write:
            self._sets = None
            c = self.cursor()
            if remove:
                c.execute("DELETE FROM tags WHERE project = ? AND tag = ? AND series_uid IN "
                          "(SELECT unnest(?))", [project, tag, list(series_uids)])
                return len(series_uids)
            c.executemany("INSERT OR IGNORE INTO tags VALUES (?, ?, ?, ?, ?)",
                          [[s, project, tag, by, dt.datetime.now()] for s in series_uids])
        return len(series_uids)

    # -- reading ----------------------------------------------------------
    def search(self, q: Query, scope: set[str] | None) -> dict:
        """Rows, total and facets for ``q`` within the projects ``scope``
        (None: everything).

        Without a text search, tags or attributes: see _search_direct. With
        them, one pass: the rows that meet the scope, ranges, text, tags and
        attributes are gathered once with a flag per field filter; the total,
        each facet (all flags but its own) and the page's rows come from
        them in one statement."""
        t0 = time.perf_counter()
        base, params = self._where(q, scope)
        flags = self._flags(q)
        sort_col = q.sort.lstrip("-")
        order = f"{sort_col} {'DESC' if q.sort.startswith('-') else 'ASC'} NULLS LAST, series_uid"
        if not (q.text or q.tags or q.attributes):
            return self._search_direct(q, base, params, flags, order, t0)
        keep = list(dict.fromkeys([*q.facets, sort_col, "series_uid"]))
        select = ", ".join(keep + [f"({sql}) AS f_{col}" for col, (sql, _) in flags.items()])
        flag_params = [p for _, (_, ps) in flags.items() for p in ps]

        def meet(skip=None):
            return " AND ".join([f"f_{col}" for col in flags if col != skip] or ["TRUE"])

        parts = [f"SELECT '' AS facet, NULL AS v, count(*) AS n FROM base WHERE {meet()}",
                 f"SELECT '-page', series_uid, row_number() OVER () FROM (SELECT series_uid "
                 f"FROM base WHERE {meet()} ORDER BY {order} LIMIT {q.limit} OFFSET {q.offset})"]
        parts += [f"SELECT '{f}', CAST({f} AS VARCHAR), count(*) FROM base WHERE {meet(f)} "
                  "GROUP BY 2" for f in q.facets]
        cur = self.cursor()
        answer = cur.execute(f"WITH base AS MATERIALIZED (SELECT {select} FROM series WHERE "
                             f"{base}) " + " UNION ALL ".join(parts),
                             flag_params + params).fetchall()
        # the page's rows by UID: carrying every column through base costs more
        uids = [uid for f, uid, _ in answer if f == "-page"]
        rows = dict(cur.execute(
            f"SELECT series_uid, {ROW_JSON} FROM series WHERE series_uid IN (SELECT unnest(?))",
            [uids]).fetchall()) if uids else {}
        return self._answer(q, [(f, rows[v] if f == "-page" else v, n) for f, v, n in answer
                                if f != "-page" or v in rows], t0)

    def _search_direct(self, q: Query, base: str, params: list, flags: dict, order: str,
                       t0: float) -> dict:
        """Without a text search the filters are cheap: the total, the page's
        rows and each facet straight from the table, in one statement."""
        cur = self.cursor()

        def where(skip=None):
            conds = [f"({sql})" for col, (sql, _) in flags.items() if col != skip]
            ps = [p for col, (_, v) in flags.items() if col != skip for p in v]
            return " AND ".join([base, *conds]), params + ps

        w, wp = where()
        col = q.sort.lstrip("-")
        page_where, page_params = w, wp
        if col != "series_uid":
            # Sorting a million rows by (column, UID) reads every UID: first
            # the sort column's value on row offset + limit, from that column
            # alone; the page lies at or beyond it (2 ms instead of 9 on IDC's
            # index). None: too few values for a cut (NULLs come last).
            desc = q.sort.startswith("-")
            cut = cur.execute(
                f"SELECT CASE WHEN count({col}) = count(*) THEN {'min' if desc else 'max'}({col}) "
                f"END FROM (SELECT {col} FROM series WHERE {w} ORDER BY {col} "
                f"{'DESC' if desc else 'ASC'} NULLS LAST LIMIT {q.offset + q.limit})",
                wp).fetchone()[0]
            if cut is not None:
                page_where = f"{w} AND {col} {'>=' if desc else '<='} ?"
                page_params = wp + [cut]
        parts = [f"SELECT '' AS facet, NULL AS v, count(*) AS n FROM series WHERE {w}",
                 f"SELECT '-page', {ROW_JSON}, row_number() OVER () FROM (SELECT "
                 f"{', '.join(SHOWN)} FROM series WHERE {page_where} ORDER BY {order} "
                 f"LIMIT {q.limit} OFFSET {q.offset})"]
        all_params = wp + page_params
        for f in q.facets:
            fw, fp = where(f)
            parts.append(f"SELECT '{f}', CAST({f} AS VARCHAR), count(*) FROM series "
                         f"WHERE {fw} GROUP BY 2")
            all_params += fp
        answer = cur.execute(" UNION ALL ".join(parts), all_params).fetchall()
        return self._answer(q, answer, t0)

    def _answer(self, q: Query, answer: list, t0: float) -> dict:
        """The statement's rows (total, page rows, facet counts) as the answer."""
        total, page, counted = 0, [], {f: {} for f in q.facets}
        for facet, value, n in answer:
            if facet == "":
                total = n
            elif facet == "-page":
                page.append((n, value))
            else:
                key = MISSING if value is None or value == "" else value
                counted[facet][key] = counted[facet].get(key, 0) + n
        rows = []
        for _, row in sorted(page):
            r = json.loads(row)
            r["projects"] = (r.pop("project_set") or "").split(",")
            rows.append(r)
        facets = {f: sorted(([v, n] for v, n in counted[f].items()),
                            key=lambda e: (-e[1], str(e[0])))[:MAX_FACET_VALUES]
                  for f in q.facets}
        return {"total": total, "rows": rows, "facets": facets,
                "took_ms": round(1000 * (time.perf_counter() - t0), 1)}

    def _flags(self, q: Query) -> dict[str, tuple[str, list]]:
        """Per filtered field: its condition (OR of its values) and parameters."""
        out = {}
        for col, values in q.filters.items():
            present = [v for v in values if v is not None]
            ors = []
            if present:
                ors.append(f"{col} IN ({', '.join('?' * len(present))})")
            if len(present) < len(values):
                ors.append(f"({col} IS NULL OR {col} = '')")
            out[col] = (" OR ".join(ors), present)
        return out

    def _where(self, q: Query, scope: set[str] | None):
        """Everything but the value filters (those are flags, see _flags)."""
        parts, params = ["TRUE"], []
        if scope is not None:
            # The distinct project sets are few: compare with those that meet
            # the scope (a dictionary lookup, not a list test per row).
            sets = [s for s in self._project_sets() if scope & set(s.split(","))]
            if not sets:
                return "FALSE", []
            parts.append(f"project_set IN ({', '.join('?' * len(sets))})")
            params += sets
        for col, (lo, hi) in q.ranges.items():
            if lo is not None:
                parts.append(f"{col} >= ?")
                params.append(lo)
            if hi is not None:
                parts.append(f"{col} <= ?")
                params.append(hi)
        if q.text:  # case-insensitive, literal (no wildcards)
            parts.append("contains(search_text, ?)")
            params.append(q.text.lower())
        for tag in q.tags:
            projects = sorted(scope) if scope is not None else []
            parts.append("series_uid IN (SELECT series_uid FROM tags WHERE tag = ?"
                         + (f" AND project IN ({', '.join('?' * len(projects))}))"
                            if scope is not None else ")"))
            params += [tag, *projects]
        for keyword, values in q.attributes.items():
            parts.append(f"json_extract_string(attributes, '$.{keyword}') IN "
                         f"({', '.join('?' * len(values))})")
            params += values
        return " AND ".join(parts), params

    def import_parquet_idc(self, path: str, project: str) -> int:
        """Load IDC's series index (``idc-index-data``'s parquet file) as a
        metadata-only collection of ``project``; replaces an earlier import."""
        age = ("CASE right(PatientAge, 1) WHEN 'Y' THEN 1 WHEN 'M' THEN 1 / 12 "
               "WHEN 'W' THEN 7 / 365.25 WHEN 'D' THEN 1 / 365.25 END "
               "* try_cast(regexp_extract(PatientAge, '^(\\d+)', 1) AS DOUBLE)")
        extra = ", ".join(f"'{k}', {k}" for k in (
            "SeriesNumber", "SOPClassUID", "TransferSyntaxUID", "PhotometricInterpretation",
            "source_DOI", "license_short_name", "analysis_result_id"))
        with self._write:
            self._sets = None
            c = self.cursor()
            c.execute("BEGIN")
            c.execute("DELETE FROM series WHERE source = 'idc'")
            c.execute(f"""
                INSERT INTO series SELECT
                    SeriesInstanceUID, StudyInstanceUID, PatientID, collection_id, Modality,
                    BodyPartExamined, try_cast(StudyDate AS DATE), try_cast(SeriesDate AS DATE),
                    PatientSex, {age}, Manufacturer, ManufacturerModelName, SeriesDescription,
                    StudyDescription, NULL, instanceCount, series_size_MB, ?, 'idc',
                    json_object({extra}), now(),
                    lower(concat_ws(' ', SeriesDescription, StudyDescription))
                FROM read_parquet(?)
                WHERE SeriesInstanceUID NOT IN (SELECT series_uid FROM series)""",
                      [project, str(path)])
            n = c.execute("SELECT count(*) FROM series WHERE source = 'idc'").fetchone()[0]
            c.execute("COMMIT")
            del c
            self._reopen()
        return n

    def matching_uids(self, q: Query, scope: set[str] | None, limit: int) -> list[str]:
        """Every series UID that ``q`` matches in ``scope`` (at most ``limit``+1,
        so that the caller can tell when there are more)."""
        base, params = self._where(q, scope)
        flags = self._flags(q)
        conds = [base, *(f"({sql})" for sql, _ in flags.values())]
        params = params + [p for _, ps in flags.values() for p in ps]
        return [r[0] for r in self.cursor().execute(
            f"SELECT series_uid FROM series WHERE {' AND '.join(conds)} ORDER BY series_uid "
            f"LIMIT {int(limit) + 1}", params).fetchall()]

    def visible_uids(self, series_uids: list[str], scope: set[str] | None) -> set[str]:
        """Which of ``series_uids`` are in the catalog within ``scope``."""
        base, params = self._where(Query(), scope)
        return {r[0] for r in self.cursor().execute(
            f"SELECT series_uid FROM series WHERE {base} AND series_uid IN "
            "(SELECT unnest(?))", params + [list(series_uids)]).fetchall()}

    def _project_sets(self) -> list[str]:
        """The distinct project sets (cached; every write forgets them)."""
        sets = self._sets
        if sets is None:
            sets = self._sets = [r[0] for r in self.cursor().execute(
                "SELECT DISTINCT project_set FROM series WHERE project_set IS NOT NULL"
            ).fetchall()]
        return sets



def _project_set(projects) -> str | None:
    """A row's projects as one comparable string: sorted, comma-separated."""
    names = sorted(set(projects or []))
    return ",".join(names) if names else None
