"""The archive feed contract without a stack: what QidoFeed asks of an
archive (QIDO-RS with a StudyDate range, paged) and what it hands the
catalog (one re-read per new series, one per grown series once it has
settled, a failed read tried again).

The archive here is an in-memory DICOMweb answerer behind httpx's
MockTransport, and the catalog a recorder: a unit test of the feed's own
logic. The same feed runs against the real archive in test_catalog_sync.py."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from imaginghub.hub.services.data.catalog_sync import PAGE
from imaginghub.hub.services.data.feeds import ArchiveFeed, QidoFeed

TODAY = dt.date.today()


class Archive:
    """Series (uid: [study date, instances]) answered as QIDO-RS does."""

    def __init__(self):
        self.series: dict[str, list] = {}
        self.queries: list[dict] = []

    def add(self, uid: str, n: int = 1, days_ago: int = 0) -> None:
        self.series[uid] = [TODAY - dt.timedelta(days=days_ago), n]

    def answer(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/dicom-web/series"
        q = dict(request.url.params.multi_items())
        self.queries.append(q)
        low = dt.datetime.strptime(q["StudyDate"].rstrip("-"), "%Y%m%d").date()
        found = sorted(u for u, (day, _) in self.series.items() if day >= low)
        offset, limit = int(q.get("offset", 0)), int(q.get("limit", 10**9))
        page = [{"0020000E": {"vr": "UI", "Value": [u]},
                 "00201209": {"vr": "IS", "Value": [self.series[u][1]]}}
                for u in found[offset:offset + limit]]
        return httpx.Response(200, json=page) if page else httpx.Response(204)


class Catalog:
    def __init__(self):
        self.reads: list[str] = []
        self.failing: set[str] = set()

    async def changed(self, uid: str) -> bool:
        if uid in self.failing:
            raise httpx.ReadError("the archive broke off")
        self.reads.append(uid)
        return True


def feed(archive: Archive, catalog: Catalog, **kw) -> QidoFeed:
    client = httpx.AsyncClient(transport=httpx.MockTransport(archive.answer))
    return QidoFeed(archive=client, dicomweb_url="http://archive/dicom-web", store=None,
                    catalog_sync=catalog, **kw)


def steps(f: QidoFeed, n: int = 1) -> list[int]:
    async def go():
        return [await f.step() for _ in range(n)]
    return asyncio.run(go())


def test_new_then_grown_then_settled():
    archive, catalog = Archive(), Catalog()
    archive.add("1.1", 3)
    f = feed(archive, catalog)
    assert steps(f) == [0] and catalog.reads == []  # the first look notes what is there
    archive.add("1.2", 1)
    assert steps(f) == [1] and catalog.reads == ["1.2"]
    archive.series["1.2"][1] = 4  # more instances arrive
    assert steps(f) == [0]        # not yet settled
    assert steps(f, 2) == [1, 0]  # settled: read once, then nothing
    assert catalog.reads == ["1.2", "1.2"]
    archive.series["1.1"][1] = 5
    assert steps(f, 3) == [0, 1, 0] and catalog.reads[-1] == "1.1"


def test_only_recent_studies_are_polled_and_every_page_is_read():
    archive, catalog = Archive(), Catalog()
    f = feed(archive, catalog, window_days=3)
    steps(f)
    archive.add("2.old", days_ago=10)
    for i in range(PAGE + 5):  # more than one page
        archive.add(f"2.{i:04d}")
    assert steps(f) == [PAGE + 5]
    assert "2.old" not in catalog.reads  # left to the full crawl
    low = (TODAY - dt.timedelta(days=3)).strftime("%Y%m%d")
    assert archive.queries[-1]["StudyDate"] == f"{low}-"
    assert {q["offset"] for q in archive.queries[-2:]} == {"0", str(PAGE)}
    assert archive.queries[-1]["includefield"] == "00201209"


def test_a_failed_read_is_tried_again():
    archive, catalog = Archive(), Catalog()
    f = feed(archive, catalog)
    steps(f)
    archive.add("3.1")
    catalog.failing.add("3.1")
    assert steps(f) == [0]
    catalog.failing.clear()
    assert steps(f) == [1] and catalog.reads == ["3.1"]


def test_settings_and_the_base():
    from traitlets.config import Config

    cfg = Config({"ArchiveFeed": {"full_sync_hours": 6.0}, "QidoFeed": {"interval": 60.0}})
    f = QidoFeed(config=cfg, archive=None, dicomweb_url="http://a/rs/", store=None)
    assert (f.interval, f.full_sync_hours, f.window_days, f.dicomweb) == (60.0, 6.0, 7,
                                                                          "http://a/rs")
    assert f.orthanc is None
    assert isinstance(f, ArchiveFeed) and f.name == "qido"


def test_the_orthanc_feed_needs_the_embedded_archive():
    from imaginghub.hub.errors import ConfigError
    from imaginghub.hub.services.data.sync import OrthancFeed

    with pytest.raises(ConfigError, match=r"c.DataService.feed = 'qido'"):
        OrthancFeed(archive=None, dicomweb_url="https://pacs.example.org/rs", store=None)
