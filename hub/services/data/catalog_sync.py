"""Keeping the catalog (:mod:`.catalog`) in step with the archive.

A row is read over DICOMweb only, so any archive will do: a QIDO-RS search
for the series (with ``includefield`` for the catalog's attributes), then
the WADO-RS metadata of one of its instances, which fills in what the
search left out and gives the row's other series-level ``attributes``.
People's names and birth dates are never kept.

Three ways in:

- :meth:`CatalogSync.full`: re-crawl the archive over QIDO-RS (paged),
  upsert every series, remove the rows of series that are gone.
- :meth:`CatalogSync.changed`: one series, called by the change feed
  (:mod:`.sync`) for Orthanc's ``NewSeries`` and ``StableSeries``.
- :meth:`CatalogSync.update_projects`: after a series' projects changed.

What Orthanc 1.10's ``/changes`` says (measured): ``NewSeries`` once, right
after a series' first instance; ``StableSeries`` ``StableAge`` seconds (5 in
our configuration) after its last instance, and again each time more
instances arrived later, so a series that grows is re-read once it has
settled, not once per instance (``NewInstance`` is not needed). Deleting an
instance or a series writes nothing to the feed: deletions reach the
catalog through :meth:`CatalogSync.deleted` (when the caller knows) or the
next full sync.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable

import httpx
from pydicom.datadict import keyword_for_tag

from .catalog import FIELDS, Catalog
from .db import Store

log = logging.getLogger("imaginghub.data.catalog")

DICOM_JSON = {"Accept": "application/dicom+json"}
PAGE = 500  # series per QIDO-RS page in a full sync
CONCURRENCY = 8  # series read at once
_INCLUDE = [("includefield", kw) for _, kw, _ in FIELDS.values() if kw]
# Kept out of ``attributes``: about the person (names have VR PN and are
# left out by VR), and what differs from one instance of a series to the next.
_PERSONAL = {"PatientBirthDate", "PatientBirthTime", "PatientAddress", "PatientBirthName",
             "PatientMotherBirthName", "PatientTelephoneNumbers", "OtherPatientIDs"}
_PER_INSTANCE = {"InstanceNumber", "ImagePositionPatient", "SliceLocation", "ContentDate",
                 "ContentTime", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
                 "InstanceCreationDate", "InstanceCreationTime", "TriggerTime", "WindowCenter",
                 "WindowWidth", "SmallestImagePixelValue", "LargestImagePixelValue",
                 "IrradiationEventUID", "InStackPositionNumber", "TemporalPositionIdentifier"}
# names, sequences, bulk data, free text
_SKIPPED_VRS = {"PN", "SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "LT", "ST", "UT"}
_COLUMNS = {kw for _, kw, _ in FIELDS.values() if kw}


async def series_row(archive: httpx.AsyncClient, dicomweb_url: str,
                     series_uid: str) -> dict | None:
    """The catalog row of one series of the archive whose DICOMweb root is
    ``dicomweb_url``, without its projects (the store's, added as it is
    written: :meth:`CatalogSync._write`); None when the archive does not have it."""
    dicomweb = dicomweb_url.rstrip("/")
    found = await qido_search(archive, f"{dicomweb}/series",
                        [("SeriesInstanceUID", series_uid), *_INCLUDE])
    return await _row(archive, dicomweb, found[0]) if found else None


async def qido_search(archive: httpx.AsyncClient, url: str, params: list) -> list[dict]:
    """A QIDO-RS search's records (none for 204, 404 or an empty answer)."""
    r = await archive.get(url, params=params, headers=DICOM_JSON)
    if r.status_code in (204, 404) or not r.content:
        return []
    r.raise_for_status()
    return r.json()


async def _row(archive: httpx.AsyncClient, dicomweb: str, record: dict) -> dict | None:
    """The row from a series' QIDO-RS record and one instance's metadata."""
    found = {_keyword(t): e for t, e in record.items()}
    study, series = _value(found.get("StudyInstanceUID")), _value(found.get("SeriesInstanceUID"))
    if not (study and series):
        return None
    url = f"{dicomweb}/studies/{study}/series/{series}/instances"
    first = await qido_search(archive, url, [("limit", 1)])
    sop = _value({_keyword(t): e for t, e in first[0].items()}.get("SOPInstanceUID")) \
        if first else None
    if not sop:
        return None  # gone meanwhile
    r = await archive.get(f"{url}/{sop}/metadata", headers=DICOM_JSON)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    meta = {_keyword(t): e for t, e in r.json()[0].items()}
    row: dict = {"series_uid": series, "collection": None, "size_mb": None}
    for name, (_, kw, kind) in FIELDS.items():
        if kw and name != "series_uid":
            value = _value(found.get(kw))
            row[name] = _convert(kw, kind, _value(meta.get(kw)) if value is None else value)
    row["attributes"] = _attributes(meta)
    return row


def _keyword(tag: str) -> str:
    try:
        return keyword_for_tag(int(tag, 16))
    except ValueError:
        return ""


def _value(element: dict | None):
    """The first value of a DICOM JSON element; None when it has none."""
    values = (element or {}).get("Value") or []
    value = values[0] if values else None
    if isinstance(value, str):
        value = value.strip()
    return None if value in ("", None) else value


def _convert(keyword: str, kind: str, value):
    if value is None:
        return None
    try:
        if keyword == "PatientAge":
            return _age(str(value))
        if kind == "date":
            return dt.datetime.strptime(str(value).replace(".", "")[:8], "%Y%m%d").date()
        if kind == "number":
            return int(value) if keyword == "NumberOfSeriesRelatedInstances" else float(value)
    except ValueError:
        return None
    return str(value)


def _age(text: str) -> float | None:
    """A DICOM age (``045Y``, ``006M``, ``010W``, ``003D``) in years."""
    per_year = {"Y": 1, "M": 12, "W": 365.25 / 7, "D": 365.25}.get(text[-1:].upper())
    return float(text[:-1]) / per_year if per_year and text[:-1].isdigit() else None


def _attributes(meta: dict[str, dict]) -> dict:
    """An instance's other series-level attributes that are strings or
    numbers (several values joined with ``\\``, as DICOM writes them)."""
    out = {}
    for kw, element in meta.items():
        values = element.get("Value")
        if (not kw or not values or element.get("vr") in _SKIPPED_VRS or kw in _COLUMNS
                or kw in _PERSONAL or kw in _PER_INSTANCE or "InstanceUID" in kw
                or not all(isinstance(v, (str, int, float)) for v in values)):
            continue
        out[kw] = values[0] if len(values) == 1 else "\\".join(str(v) for v in values)
    return out


class CatalogSync:
    """Writes the archive's series into ``catalog`` (rows of source
    ``archive``), with their projects from ``store``."""

    def __init__(self, archive: httpx.AsyncClient, dicomweb_url: str, catalog: Catalog,
                 store: Store):
        self.archive = archive
        self.dicomweb = dicomweb_url.rstrip("/")
        self.catalog = catalog
        self.store = store
        # A row's projects are looked up as it is written, under this lock,
        # which update_projects holds too: an assignment made while a series
        # is being read (the store changed, then update_projects) is never
        # overwritten by the projects looked up before it.
        self._projects = threading.Lock()

    def _write(self, rows: list[dict]) -> int:
        """Upsert archive rows with their projects as the store has them now."""
        with self._projects:
            for row in rows:
                row["projects"] = sorted(self.store.projects_of(row["series_uid"]))
            return self.catalog.upsert(rows)

    async def changed(self, series_uid: str) -> bool:
        """Re-read one series; its row is removed when the archive no longer
        has it. True when the series is in the catalog now."""
        row = await series_row(self.archive, self.dicomweb, series_uid)
        if row is None:
            await self.deleted([series_uid])
            return False
        await asyncio.to_thread(self._write, [row])
        return True

    async def deleted(self, series_uids: Iterable[str]) -> int:
        """Remove the rows of those of ``series_uids`` that the archive no
        longer has; returns how many were removed."""
        gone = [uid for uid in self._archive_rows(list(series_uids))
                if not await self._exists(uid)]
        if gone:
            await asyncio.to_thread(self.catalog.delete, gone)
        return len(gone)

    def update_projects(self, series_uids: Iterable[str] = (),
                        study_uids: Iterable[str] = ()) -> int:
        """Copy the current projects of these series (and of every series of
        these studies) from the store into their rows; returns the rows changed."""
        with self._projects:
            uids = self._archive_rows(list(series_uids), list(study_uids))
            for uid in uids:
                self.catalog.set_projects(uid, sorted(self.store.projects_of(uid)))
        return len(uids)

    async def full(self, progress: Callable[[int, int], None] | None = None) -> dict:
        """Re-crawl the archive: every series is read and written, rows of
        series that are gone are removed; returns the counts. ``progress(done,
        total)`` is called after each series; ``total`` counts the series
        listed so far (QIDO-RS pages of ``PAGE``), final when the last page is in."""
        started = dt.datetime.now()
        seen: set[str] = set()
        counts = {"seen": 0, "updated": 0, "deleted": 0, "failed": 0}
        limit = asyncio.Semaphore(CONCURRENCY)

        async def read(record: dict) -> tuple[str | None, dict | None]:
            series = _value(record.get("0020000E"))
            async with limit:
                try:
                    return series, await _row(self.archive, self.dicomweb, record)
                except (httpx.HTTPError, ValueError, LookupError) as e:
                    log.warning("catalog: series %s not read (%s)", series, e)
                    counts["failed"] += 1
                    return series, {}  # kept as it is

        offset = 0
        while True:
            page = await qido_search(self.archive, f"{self.dicomweb}/series",
                               [*_INCLUDE, ("limit", PAGE), ("offset", offset)])
            total = offset + len(page)
            rows = []
            for done, task in enumerate(asyncio.as_completed([read(r) for r in page]),
                                        offset + 1):
                series, row = await task
                if row is not None:  # None: gone meanwhile
                    seen.add(series)
                if row:
                    rows.append(row)
                if progress:
                    progress(done, total)
            counts["updated"] += await asyncio.to_thread(self._write, rows)
            offset = total
            if len(page) < PAGE:
                break
        seen.discard(None)
        counts["seen"] = len(seen)
        # Rows written before this crawl began, of series it did not find
        # (each is asked for once more: pages shift while series are deleted).
        stale = [uid for uid, in self.catalog.cursor().execute(
            "SELECT series_uid FROM series WHERE source = 'archive' AND updated < ?",
            [started]).fetchall() if uid not in seen]
        counts["deleted"] = await self.deleted(stale) if stale else 0
        log.info("catalog: full sync of the archive: %s", counts)
        return counts

    async def periodic(self, every: float) -> None:
        """A full sync now and then every ``every`` seconds (catches deletions)."""
        while True:
            try:
                await self.full()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("catalog: full sync failed; will try again")
            await asyncio.sleep(every)

    async def _exists(self, series_uid: str) -> bool:
        return bool(await qido_search(self.archive, f"{self.dicomweb}/series",
                                [("SeriesInstanceUID", series_uid)]))

    def _archive_rows(self, series_uids: list[str], study_uids: list[str] = ()) -> list[str]:
        """The catalog's archive rows of these series, or of these studies."""
        return [uid for uid, in self.catalog.cursor().execute(
            "SELECT series_uid FROM series WHERE source = 'archive' AND (series_uid IN "
            "(SELECT unnest(?)) OR study_uid IN (SELECT unnest(?)))",
            [series_uids, list(study_uids)]).fetchall()]
