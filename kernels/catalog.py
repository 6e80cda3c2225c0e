"""``catalog``: search the site's series catalog from a notebook.

>>> catalog.search(modality="CT", body_part=["CHEST", "LUNG"], text="contrast")
>>> catalog.search(study_date=("2020-01-01", None), patient_age=(40, 70), limit=200)
>>> catalog.facets(["modality", "body_part"], modality="CT")

Keyword arguments name catalog fields (``modality``) or their DICOM keywords
(``Modality``): text fields take a value or a list of values (any of them;
``"(missing)"`` for empty), dates and numbers a ``(low, high)`` pair (either
may be None) or one value. Results are pandas DataFrames, within your
projects; the total number of matches is in ``df.attrs["total"]``.
"""

from __future__ import annotations


from .service import ServiceClient

# The catalog's fields: name -> (DuckDB type, DICOM keyword it comes from,
# kind). One table for the service (hub/services/data/catalog.py) and this
# client, which needs only the kinds and keywords.
FIELDS: dict[str, tuple[str, str, str]] = {
    "series_uid": ("VARCHAR", "SeriesInstanceUID", "text"),
    "study_uid": ("VARCHAR", "StudyInstanceUID", "text"),
    "patient_id": ("VARCHAR", "PatientID", "text"),
    "collection": ("VARCHAR", "", "text"),
    "modality": ("VARCHAR", "Modality", "text"),
    "body_part": ("VARCHAR", "BodyPartExamined", "text"),
    "study_date": ("DATE", "StudyDate", "date"),
    "series_date": ("DATE", "SeriesDate", "date"),
    "patient_sex": ("VARCHAR", "PatientSex", "text"),
    "patient_age": ("DOUBLE", "PatientAge", "number"),
    "manufacturer": ("VARCHAR", "Manufacturer", "text"),
    "model": ("VARCHAR", "ManufacturerModelName", "text"),
    "series_description": ("VARCHAR", "SeriesDescription", "text"),
    "study_description": ("VARCHAR", "StudyDescription", "text"),
    "slice_thickness": ("DOUBLE", "SliceThickness", "number"),
    "instances": ("INTEGER", "NumberOfSeriesRelatedInstances", "number"),
    "size_mb": ("DOUBLE", "", "number"),
}
# our name for a DICOM keyword given in its place
KEYWORDS = {kw: name for name, (_, kw, _) in FIELDS.items() if kw}


class Catalog(ServiceClient):
    name = "the catalog"
    unset = "no catalog configured: the hub sets IMAGINGHUB_DICOMWEB_URL in every user server"
    refused = "the catalog refused the query"
    not_found = "no such cohort (or not one you may see)"

    @classmethod
    def from_env(cls, environ=None) -> Catalog:
        from .environment import kernel_environment

        env = kernel_environment(environ)
        return cls(env.data_api, env.token)

    def __repr__(self) -> str:
        return f"<catalog {self.api or '(not configured)'}>"

    # -- queries ------------------------------------------------------------
    def query(self, **body) -> dict:
        """The service's answer to a query body (see the data service's
        catalog API): ``{"total", "rows", "facets", "took_ms"}``."""
        return self._post("catalog/query", body)

    def search(self, *, text: str | None = None, tags=None, attributes: dict | None = None,
               sort: str = "-study_date", limit: int = 50, offset: int = 0, **fields):
        """Matching series as a DataFrame (one page; ``attrs["total"]`` has
        the count of all matches)."""
        import pandas as pd

        answer = self.query(**self._body(fields, text, tags, attributes), sort=sort,
                            limit=limit, offset=offset)
        df = pd.DataFrame(answer["rows"])
        df.attrs["total"] = answer["total"]
        return df

    def facets(self, fields=("modality", "body_part", "manufacturer", "patient_sex",
                             "collection"), *, text=None, tags=None, attributes=None,
               **filters) -> dict:
        """Counts per value of each field, over the series that match the
        filters (each field's own filter left out): {field: pandas.Series}."""
        import pandas as pd

        answer = self.query(**self._body(filters, text, tags, attributes),
                            facets=list(fields), limit=0)
        return {f: pd.Series({v: n for v, n in counts}, name=f, dtype="int64")
                for f, counts in answer["facets"].items()}

    def count(self, *, text: str | None = None, tags=None, **filters) -> int:
        """How many series match."""
        return self.query(**self._body(filters, text, tags, None), limit=0)["total"]

    def tag(self, series, tag: str, project: str, remove: bool = False) -> int:
        """Tag series (UIDs) for everyone in ``project``; ``remove=True`` untags."""
        series = [series] if isinstance(series, str) else list(series)
        answer = self._post("catalog/tags", {"series": series, "tag": tag, "project": project,
                                             "remove": remove})
        return next(iter(answer.values()))

    # -- cohorts ------------------------------------------------------------
    def cohorts(self):
        """Every version of every cohort of your projects, as a DataFrame."""
        import pandas as pd

        rows = self._get("cohorts")["cohorts"]
        return pd.DataFrame(rows, columns=["project", "name", "version", "ref", "size",
                                           "saved_by", "saved_at", "note", "series_hash"])

    def cohort(self, ref: str, project: str | None = None) -> Cohort:
        """A saved cohort: ``"lung-ct"`` (its latest version) or ``"lung-ct@2"``.
        ``project`` may be left out when only one of your projects has it."""
        if project is None:
            name = ref.partition("@")[0]
            owners = sorted({c["project"] for c in self._get("cohorts")["cohorts"]
                             if c["name"] == name})
            if len(owners) != 1:
                raise ValueError(f"cohort {name!r} is in {len(owners)} of your projects "
                                 f"({', '.join(owners) or 'none'}): say project=...")
            project = owners[0]
        data = self._get(f"cohorts/{project}/{ref}")
        return Cohort(self, project, data["name"], data["series"], data["query"], data)

    def new_cohort(self, name: str, project: str, series=None, *, text: str | None = None,
                   tags=None, attributes: dict | None = None, **fields) -> Cohort:
        """An unsaved cohort from a list of series UIDs or from catalog filters
        (as :meth:`search` takes them); ``.save()`` stores it as a version."""
        query = {} if series is not None else self._body(fields, text, tags, attributes)
        return Cohort(self, project, name, list(series) if series is not None else None,
                      query, None)

    def thumbnail(self, series_uid: str) -> bytes | None:
        """The series' small PNG, or None when it has none (metadata-only
        collections, images that cannot be drawn)."""
        r = self._raw("GET", f"thumbnails/{series_uid}")
        return r.content if r.status_code == 200 else None

    def projects(self) -> list[str]:
        """The projects you are a member of."""
        return sorted(p["name"] for p in self._get("projects")["projects"] if p.get("member"))

    # -- plumbing -----------------------------------------------------------
    @staticmethod
    def _body(fields: dict, text, tags, attributes) -> dict:
        filters, ranges = {}, {}
        for name, value in fields.items():
            key = KEYWORDS.get(name, name)
            if key in FIELDS and FIELDS[key][2] != "text":
                if isinstance(value, (tuple, list)):
                    ranges[key] = list(value)
                else:
                    ranges[key] = [value, value]
            else:
                filters[key] = list(value) if isinstance(value, (tuple, list, set)) else [value]
        body = {"filters": filters, "ranges": ranges}
        if text:
            body["text"] = text
        if tags:
            body["tags"] = [tags] if isinstance(tags, str) else list(tags)
        if attributes:
            body["attributes"] = attributes
        return body

    def _get(self, path: str) -> dict:
        return self._json("GET", path)

    def _post(self, path: str, body: dict) -> dict:
        return self._json("POST", path, body)


class Cohort:
    """A named set of series of one project. Saved versions never change:
    ``save()`` makes the next one (``lung-ct@3``)."""

    def __init__(self, catalog: Catalog, project: str, name: str, series, query, info):
        self.catalog = catalog
        self.project = project
        self.name = name
        self.query = query or {}
        self.info = info or {}
        self._series = series

    @property
    def version(self) -> int | None:
        return self.info.get("version")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.version else self.name

    @property
    def series(self) -> list[str]:
        """The series UIDs (for an unsaved cohort from filters: what they match now)."""
        if self._series is None:
            self._series = list(self.catalog.search(
                **_as_kwargs(self.query), limit=1000)["series_uid"])
        return self._series

    def __len__(self) -> int:
        return self.info.get("size") or len(self.series)

    def __repr__(self) -> str:
        saved = (f"saved by {self.info['saved_by']} {self.info['saved_at'][:16]}"
                 if self.info else "not saved")
        return f"<Cohort {self.project}/{self.ref}: {len(self)} series, {saved}>"

    def save(self, note: str = "") -> Cohort:
        """Store as the next version; returns this cohort, now that version."""
        body = {"note": note, "query": self.query}
        if self._series is not None:
            body["series"] = self._series
        info = self.catalog._post(f"cohorts/{self.project}/{self.name}", body)
        data = self.catalog._get(f"cohorts/{self.project}/{info['ref']}")
        self.info, self._series, self.query = data, data["series"], data["query"]
        return self

    def to_dataframe(self):
        """The cohort's series with their catalog attributes."""
        import pandas as pd

        uids = self.series
        pages = [self.catalog.search(series_uid=uids[i:i + 1000], limit=1000,
                                     sort="series_uid") for i in range(0, len(uids), 1000)]
        return pd.concat(pages, ignore_index=True) if pages else pd.DataFrame()

    def map(self, fn, *, cluster=None, retries: int = 1, **kwargs):
        """Run ``fn(volume, series_metadata)`` once per series of the cohort on
        a Dask cluster, each worker loading its series through the data service
        as you; a DataFrame, one row per series, errors in its ``error``
        column. See :func:`imaginghub.kernels.mapping.map_series`."""
        from .mapping import map_cohort

        return map_cohort(self, fn, cluster=cluster, retries=retries, **kwargs)


def _as_kwargs(body: dict) -> dict:
    """A query body back into search()'s keyword arguments."""
    out = dict(body.get("filters") or {})
    out.update({k: tuple(v) for k, v in (body.get("ranges") or {}).items()})
    for key in ("text", "tags", "attributes"):
        if body.get(key):
            out[key] = body[key]
    return out
