"""Archive feeds: how the data service learns what arrived in the archive
and what left it, to keep the catalog and the project mapping in step.

A feed is a plugin: a subclass of :class:`ArchiveFeed` (a traitlets
``LoggingConfigurable``, configured from the site's configuration as
``c.ItsClassName.setting``), registered under the entry-point group
``imaginghub.archive_feeds`` and chosen with ``c.DataService.feed``.
imaginghub's own are registered the same way (pyproject.toml):

- ``orthanc`` (:class:`~.sync.OrthancFeed`): Orthanc's change feed, read
  every second; DIMSE arrivals get the project their called AE title names.
- ``qido`` (:class:`QidoFeed`): for archives without a feed (dcm4chee, a
  cloud DICOM store): QIDO-RS polled for the series of recent studies.

Override :meth:`ArchiveFeed.step`: one look at the archive for what is new
or changed since the last look; re-read each such series into the catalog
with ``self.catalog_sync.changed(uid)``, and give new series their project
where the archive tells which (``self.store.assign``); return how many
series it re-read. The base runs it every ``interval`` seconds, and a full
crawl (every series re-read over QIDO-RS, rows of deleted series removed:
:meth:`~.catalog_sync.CatalogSync.full`) at start and every
``full_sync_hours``, which also finds what a feed cannot see (series
stored with old study dates, deletions).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import httpx
from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

log = logging.getLogger("imaginghub.data.sync")

ENTRY_POINT_GROUP = "imaginghub.archive_feeds"


class ArchiveFeed(LoggingConfigurable):
    """The base of archive feeds (see the module's docstring for what to
    override). ``archive`` is the service's HTTP client of the archive (its
    credentials set), ``dicomweb_url`` the archive's DICOMweb root,
    ``orthanc_url`` its Orthanc REST root when it is the embedded Orthanc
    (None for any other archive), ``store`` the project mapping,
    ``catalog_sync`` the catalog's writer (None: the service runs without a
    catalog), ``aet`` the archive's own AE title."""

    name = "base"  # its entry point's name

    interval = Float(1.0, help="""
        Seconds between two looks at the archive for new and changed
        series.""").tag(config=True)
    full_sync_hours = Float(24.0, help="""
        How often the catalog re-reads every series of the archive (also
        once at start): it finds series the feed cannot see and removes the
        rows of deleted ones.""").tag(config=True)

    def __init__(self, *, archive: httpx.AsyncClient, dicomweb_url: str, store,
                 orthanc_url: str | None = None, catalog_sync=None, aet: str = "IMAGINGHUB",
                 **kwargs):
        super().__init__(**kwargs)
        self.archive = archive
        self.dicomweb = dicomweb_url.rstrip("/")
        self.orthanc = orthanc_url.rstrip("/") if orthanc_url else None
        self.store = store
        self.catalog_sync = catalog_sync
        self.own_aet = aet.upper()

    async def step(self) -> int:
        raise NotImplementedError

    async def start(self) -> None:
        """Once, before the first crawl starts (a feed that only sees what
        changes between two looks notes here what is there: the crawl reads
        that, the looks what comes after)."""

    async def run(self) -> None:
        """:meth:`start`, then look every ``interval`` seconds; crawl every
        ``full_sync_hours``, the first crawl right after :meth:`start`."""
        try:
            await self.start()
        except Exception:
            log.exception("%s feed: the first look failed; will retry", self.name)
        crawl = (asyncio.create_task(self.catalog_sync.periodic(self.full_sync_hours * 3600))
                 if self.catalog_sync is not None else None)
        try:
            while True:
                try:
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s feed: will retry", self.name)
                await asyncio.sleep(self.interval)
        finally:
            if crawl is not None:
                crawl.cancel()


class QidoFeed(ArchiveFeed):
    """For any DICOMweb archive: QIDO-RS polled for the series of the
    studies of the last ``window_days`` days. A series seen for the first
    time is read at once; one whose instance count changed is read again
    once the count held for one look (it has settled), not per instance.
    The first look, before the full crawl at start, only notes what is
    there (the crawl reads it all). Series of older studies, and deletions, reach
    the catalog by the full crawl. Series that arrive other than through
    the gateway stay in no project until an admin assigns them."""

    name = "qido"

    interval = Float(30.0, help="""
        Seconds between two polls of the archive (QIDO-RS: be kind to a
        shared archive).""").tag(config=True)
    window_days = Integer(7, help="""
        Series of studies dated within this many days are polled for; older
        ones are found by the full crawl.""").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._read: dict[str, int] | None = None  # series: instances when last read
        self._seen: dict[str, int] = {}   # series: instances at the last look

    async def _recent(self) -> dict[str, int]:
        """Series of recent studies and their instance counts."""
        from .catalog_sync import PAGE, qido_search

        since = (dt.date.today() - dt.timedelta(days=self.window_days)).strftime("%Y%m%d")
        found: dict[str, int] = {}
        offset = 0
        while True:
            page = await qido_search(self.archive, f"{self.dicomweb}/series",
                                     [("StudyDate", f"{since}-"), ("includefield", "00201209"),
                                      ("limit", PAGE), ("offset", offset)])
            for record in page:
                uid = (record.get("0020000E", {}).get("Value") or [None])[0]
                if uid:
                    count = (record.get("00201209", {}).get("Value") or [0])[0]
                    found[uid] = int(count or 0)
            offset += len(page)
            if len(page) < PAGE:
                break
        return found

    async def start(self) -> None:
        """Note what is there: the crawl, which starts after this, reads it."""
        now = await self._recent()
        self._read, self._seen = dict(now), dict(now)

    async def step(self) -> int:
        if self._read is None:  # start() failed: note what is there now
            await self.start()
            return 0
        now = await self._recent()
        todo = []
        for uid, count in now.items():
            if uid not in self._read:
                todo.append(uid)                    # new: read at once
            elif count != self._read[uid] and count == self._seen.get(uid):
                todo.append(uid)                    # grown, and settled since
        read = 0
        for uid in todo:
            if self.catalog_sync is not None:
                try:
                    await self.catalog_sync.changed(uid)
                except Exception:
                    log.exception("catalog: series %s not updated", uid)
                    continue
            self._read[uid] = now[uid]
            read += 1
        self._seen = now
        for uid in [u for u in self._read if u not in now]:  # left the window (or deleted)
            del self._read[uid]
        return read


def feed_class(name: str) -> type[ArchiveFeed]:
    """The feed registered as ``name``; a ValueError that says what is
    installed when there is none."""
    from ...plugins import plugin_class

    return plugin_class(ENTRY_POINT_GROUP, name, ArchiveFeed, kind="archive feed",
                        setting="c.DataService.feed")
