"""The ``orthanc`` archive feed (see :mod:`.feeds`): Orthanc's change feed
(``/changes``), read every second. Series that
arrive by DIMSE C-STORE get the project their called AE title names, as in
Kaapana (send to AE title ``ONCOLOGY`` and the series lands in project
``oncology``). A series that already has a project keeps it; one sent to the
archive's own AE title, or to a title that names no valid project, stays
unassigned (invisible) until an admin assigns it.

The position in the feed is kept in the service's database, so a restart
resumes where it stopped. With a :class:`~.catalog_sync.CatalogSync`, the feed
also re-reads into the catalog each series it reports new (``NewSeries``)
or settled (``StableSeries``, again after late instances): once per series
per page of the feed, whatever the number of its instances.
"""

from __future__ import annotations

import logging

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from ...errors import ConfigError
from ...users import validate_project
from .db import Base
from .feeds import ArchiveFeed

log = logging.getLogger("imaginghub.data.sync")


class FeedPosition(Base):
    __tablename__ = "feed_position"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last: Mapped[int] = mapped_column()


class OrthancFeed(ArchiveFeed):
    """Orthanc's change feed: new series (projects by called AE title for
    DIMSE arrivals) and settled ones (re-read into the catalog once)."""

    name = "orthanc"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not self.orthanc:
            raise ConfigError(
                "the orthanc feed reads the embedded Orthanc's change feed, and the archive "
                "is another (c.DataService.archive_url): use c.DataService.feed = 'qido'")
        self.url = self.orthanc
        Base.metadata.create_all(self.store.engine)

    def _position(self) -> int:
        with self.store.session() as s:
            row = s.get(FeedPosition, "orthanc")
            return row.last if row else 0

    def _save(self, last: int) -> None:
        with self.store.session.begin() as s:
            row = s.get(FeedPosition, "orthanc")
            if row is None:
                s.add(FeedPosition(name="orthanc", last=last))
            else:
                row.last = last

    async def step(self) -> int:
        """Read the feed once; returns how many series got a project."""
        assigned = 0
        since = self._position()
        while True:
            r = await self.archive.get(f"{self.url}/changes",
                                       params={"since": since, "limit": 500})
            r.raise_for_status()
            feed = r.json()
            touched: dict[str, None] = {}  # series to re-read, each once
            for change in feed.get("Changes", []):
                if change.get("ChangeType") == "NewSeries":
                    assigned += await self._new_series(change["ID"])
                if change.get("ChangeType") in ("NewSeries", "StableSeries"):
                    touched[change["ID"]] = None
            if self.catalog_sync is not None:
                for orthanc_id in touched:
                    await self._catalog(orthanc_id)
            since = feed.get("Last", since)
            self._save(since)
            if feed.get("Done", True):
                return assigned

    async def _catalog(self, orthanc_id: str) -> None:
        """Re-read a series into the catalog; a failure is logged, not raised
        (the feed goes on assigning projects; the next full sync repairs)."""
        try:
            r = await self.archive.get(f"{self.url}/series/{orthanc_id}")
            if r.status_code == 404:
                return  # deleted since: the next full sync removes its row
            r.raise_for_status()
            await self.catalog_sync.changed(r.json()["MainDicomTags"]["SeriesInstanceUID"])
        except Exception:
            log.exception("catalog: series %s not updated", orthanc_id)

    async def _new_series(self, orthanc_id: str) -> int:
        r = await self.archive.get(f"{self.url}/series/{orthanc_id}")
        if r.status_code == 404:
            return 0  # deleted since it arrived
        series = r.json()
        series_uid = series["MainDicomTags"].get("SeriesInstanceUID")
        if not series_uid or self.store.projects_of(series_uid):
            return 0
        study = (await self.archive.get(f"{self.url}/studies/{series['ParentStudy']}")).json()
        study_uid = study["MainDicomTags"].get("StudyInstanceUID")
        first = series["Instances"][0] if series.get("Instances") else None
        if not first:
            return 0
        origin = await self.archive.get(f"{self.url}/instances/{first}/metadata/Origin")
        if origin.text.strip() != "DicomProtocol":
            return 0  # came over HTTP: the gateway assigned it already
        called = await self.archive.get(f"{self.url}/instances/{first}/metadata/CalledAET")
        aet = called.text.strip().upper() if called.status_code == 200 else ""
        if not aet or aet == self.own_aet:
            log.info("series received by DIMSE for %s: no project named", aet or "?")
            return 0
        try:
            project = validate_project(aet.lower())
        except ConfigError:
            log.warning("series received by DIMSE for AE title %s: not a project name", aet)
            return 0
        self.store.assign([(study_uid, series_uid)], project, by=f"dimse:{aet}")
        self.store.audit("dimse", "dimse-store", [project], [series_uid], 200)
        log.info("series received by DIMSE for %s assigned to project %s", aet, project)
        return 1

