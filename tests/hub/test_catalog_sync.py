"""The catalog kept in step with the archive of the real stack: a full
re-crawl over DICOMweb matches the demo data set; both archive feeds (Orthanc's
change feed, and QIDO-RS polled as for any DICOMweb archive) add a new series
and re-read it once when it has settled, not per instance; project changes
reach the rows; series deleted from the archive, or stored with old study
dates, reach the catalog by the full crawl; no patient name gets in."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import httpx
import pytest
from pydicom.uid import SegmentationStorage, generate_uid
from tests_support import in_memory_ct

from imaginghub.hub import demo
from imaginghub.hub.services.data import catalog_sync
from imaginghub.hub.services.data.__main__ import db_url
from imaginghub.hub.services.data.catalog import Catalog
from imaginghub.hub.services.data.catalog_sync import CatalogSync, series_row
from imaginghub.hub.services.data.db import Store
from imaginghub.hub.services.data.feeds import QidoFeed, feed_class
from imaginghub.hub.services.data.sync import OrthancFeed

DAY = dt.date(2024, 1, 15)  # demo.STUDY_DATE


class Env:
    """A catalog of its own, the stack's archive and project mapping."""

    def __init__(self, stack, tmp):
        self.tmp = tmp
        self.archive = stack.archive()
        self.store = Store(db_url(stack.home))
        self.catalog = Catalog(tmp / "catalog.duckdb")

    def run(self, fn):
        """``await fn(sync, client)`` in an event loop of its own."""
        async def main():
            async with httpx.AsyncClient(auth=self.archive.auth, timeout=30) as client:
                return await fn(CatalogSync(client, self.archive.dicomweb_url, self.catalog, self.store),
                                client)
        return asyncio.run(main())

    def rows(self) -> dict[str, dict]:
        cur = self.catalog.cursor().execute("SELECT * FROM series")
        names = [d[0] for d in cur.description]
        return {r[0]: dict(zip(names, r)) for r in cur.fetchall()}

    def store_series(self, n: int, series_uid=None, study_uid=None,
                     study_date="20230102") -> tuple[str, str]:
        """Store ``n`` instances straight into the archive (in no project)."""
        study_uid, series_uid = study_uid or generate_uid(), series_uid or generate_uid()
        instances = [in_memory_ct(series_uid, study_uid, value=i) for i in range(n)]
        for ds in instances:
            ds.PatientName, ds.PatientBirthDate = "Secret^Person", "19700101"
            ds.PatientAge, ds.StudyDate = "006M", study_date
        self.archive.pacs().store_instances(instances)
        return study_uid, series_uid

    def delete_series(self, series_uid: str) -> None:
        with self.archive.rest() as rest:
            found = rest.post("/tools/lookup", content=series_uid).json()
            assert rest.delete(f"/series/{found[0]['ID']}").status_code == 200


@pytest.fixture(scope="module")
def env(stack, tmp_path_factory):
    e = Env(stack, tmp_path_factory.mktemp("catalog-sync"))
    yield e
    e.catalog.db.close()


def instances_of(s: demo.DemoSeries) -> int:
    return 1 if s.key == "mr-head-enhanced" or s.key not in demo.GRIDS \
        else demo.GRIDS[s.key].slices


def test_full_sync_matches_the_demo_data(env, monkeypatch):
    monkeypatch.setattr(catalog_sync, "PAGE", 4)  # several QIDO-RS pages
    env.catalog.upsert([{"series_uid": "1.2.3.4", "modality": "CT", "projects": ["idc"]}],
                       source="idc")
    calls = []
    counts = env.run(lambda sync, _: sync.full(lambda done, total: calls.append((done, total))))
    with env.archive.rest() as rest:
        in_archive = rest.get("/statistics").json()["CountSeries"]
    assert counts == {"seen": in_archive, "updated": in_archive, "deleted": 0, "failed": 0}
    assert in_archive >= len(demo.SERIES)
    assert [d for d, _ in calls] == list(range(1, in_archive + 1))
    totals = [t for _, t in calls]
    assert totals == sorted(totals) and totals[-1] == in_archive and len(set(totals)) > 4

    rows = env.rows()
    assert rows["1.2.3.4"]["source"] == "idc"  # other collections are left alone
    for s in demo.SERIES:
        r, patient = rows[s.series_uid], demo.PATIENTS[s.patient]
        assert (r["source"], r["study_uid"], r["patient_id"]) == ("archive", s.study_uid,
                                                                  patient.id)
        assert (r["modality"], r["series_description"]) == (s.modality, s.description), s.key
        assert r["instances"] == instances_of(s), s.key
        assert r["project_set"] == s.project, s.key
        assert type(r["study_date"]) is dt.date and r["study_date"] == r["series_date"] == DAY
        assert r["patient_age"] == float(patient.age[:-1]) and r["patient_sex"] == patient.sex
        assert r["study_description"] in ("Demo CT", "Demo head")
        if s.key in demo.GRIDS and s.key != "mr-head-enhanced":  # the built series
            assert (r["manufacturer"], r["model"], r["body_part"]) == (
                "imaginghub demo", "phantom", "HEAD")
            assert r["slice_thickness"] == demo.GRIDS[s.key].slice_spacing
    seg = rows[demo.series("seg-liver").series_uid]
    assert seg["modality"] == "SEG" and seg["manufacturer"] == "QIICR"
    assert json.loads(seg["attributes"])["SOPClassUID"] == SegmentationStorage
    ct = json.loads(rows[demo.series("ct-head").series_uid]["attributes"])
    assert (ct["Rows"], ct["KVP"], ct["ImageType"]) == (512, 120, "ORIGINAL\\PRIMARY\\AXIAL")
    assert "InstanceNumber" not in ct and "SOPInstanceUID" not in ct
    for r in rows.values():  # no names of people, no birth dates
        attributes = json.loads(r["attributes"])
        assert not {"PatientName", "PatientBirthDate", "ReferringPhysicianName"} & set(attributes)
        assert "Demo^" not in json.dumps(r, default=str)


def test_ages_in_years():
    assert catalog_sync._age("045Y") == 45.0 and catalog_sync._age("006M") == 0.5
    assert catalog_sync._age("010W") == pytest.approx(70 / 365.25)
    assert catalog_sync._age("003D") == pytest.approx(3 / 365.25)
    assert catalog_sync._age("") is None and catalog_sync._age("45") is None


def test_series_row_of_one_series(env):
    s = demo.series("ct-small")

    async def read(_, client):
        return (await series_row(client, env.archive.dicomweb_url, s.series_uid),
                await series_row(client, env.archive.dicomweb_url, generate_uid()))

    row, unknown = env.run(read)
    assert unknown is None
    assert (row["series_uid"], row["study_uid"], row["modality"]) == (s.series_uid, s.study_uid,
                                                                     "CT")
    assert (row["manufacturer"], row["model"]) == ("GE MEDICAL SYSTEMS", "RHAPSODE")
    assert row["study_date"] == DAY and row["patient_age"] == 47.0
    assert "projects" not in row and row["instances"] == 1  # the store's, as it is written
    assert row["attributes"]["KVP"] == 120 and row["attributes"]["Rows"] == 128
    assert "PatientName" not in row["attributes"] and "Demo^" not in str(row)


def test_feed_adds_a_new_series_and_rereads_it_once_settled(env):
    reads: dict[str, list[str]] = {"live": [], "late": []}

    def feed(name: str, client) -> OrthancFeed:
        sync = CatalogSync(client, env.archive.dicomweb_url, env.catalog, env.store)
        changed = sync.changed

        async def counted(uid):
            reads[name].append(uid)
            return await changed(uid)

        sync.changed = counted
        return OrthancFeed(archive=client, dicomweb_url=env.archive.dicomweb_url,
                           orthanc_url=env.archive.url,
                           store=Store(f"sqlite:///{env.tmp / name}.sqlite"), catalog_sync=sync)

    async def scenario(_, client):
        live, late = feed("live", client), feed("late", client)
        await live.step()  # both catch up with the archive's history
        await late.step()
        study, series = env.store_series(2)
        await live.step()
        row = env.rows()[series]
        assert (row["modality"], row["instances"], row["project_set"]) == ("CT", 2, None)
        assert reads["live"].count(series) == 1  # NewSeries
        env.store_series(3, series, study)
        await live.step()
        assert reads["live"].count(series) == 1  # not re-read per new instance...
        deadline = time.monotonic() + 15
        while env.rows()[series]["instances"] != 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            await live.step()
        assert env.rows()[series]["instances"] == 5  # ...but once it settled (StableSeries)
        assert reads["live"].count(series) == 2
        # a feed that reads NewSeries and StableSeries in one go reads the series once
        await late.step()
        assert reads["late"].count(series) == 1
        return series

    series = env.run(scenario)
    env.delete_series(series)
    assert env.run(lambda sync, _: sync.deleted([series])) == 1


def test_projects_and_deletions_reach_the_catalog(env):
    study, first = env.store_series(1)
    _, second = env.store_series(1, study_uid=study)

    async def added(sync, _):
        return [await sync.changed(first), await sync.changed(second)]

    assert env.run(added) == [True, True]
    rows = env.rows()
    assert rows[first]["project_set"] is None and rows[second]["study_uid"] == study
    assert rows[first]["patient_age"] == 0.5 and rows[first]["study_date"] == dt.date(2023, 1, 2)
    dump = json.dumps(rows[first], default=str)  # no name, no birth date
    assert "Secret" not in dump and "19700101" not in dump and "Birth" not in dump
    env.store.assign([(study, first), (study, second)], "neuro", by="test")
    try:
        env.store.assign([(study, first)], "oncology", by="test")
        offline = CatalogSync(None, env.archive.dicomweb_url, env.catalog, env.store)  # no archive needed
        assert offline.update_projects([first]) == 1
        assert env.rows()[first]["project_set"] == "neuro,oncology"
        assert env.rows()[second]["project_set"] is None  # not asked for yet
        assert offline.update_projects(study_uids=[study]) == 2
        assert env.rows()[second]["project_set"] == "neuro"
    finally:
        env.store.unassign("neuro", study_uids=[study])
        env.store.unassign("oncology", study_uids=[study])

    # deleted() removes only what the archive no longer has
    assert env.run(lambda sync, _: sync.deleted([first])) == 0
    env.delete_series(first)
    env.delete_series(second)
    assert env.run(lambda sync, _: sync.deleted([first])) == 1
    assert first not in env.rows() and second in env.rows()
    counts = env.run(lambda sync, _: sync.full())
    assert counts["deleted"] == 1 and second not in env.rows()
    assert demo.series("ct-head").series_uid in env.rows()


def test_a_project_given_while_the_series_is_read_reaches_its_row(env):
    """An admin assigns a series while the feed is reading it (a slow
    archive, or a modality's store followed at once by the assignment): the
    row the feed writes afterwards keeps the project (it once wrote the
    projects it had looked up before the read, and the series stayed out
    of its project's catalog until the next full crawl)."""
    study, series = env.store_series(1)
    assigned = []

    async def read_while_assigned(_, client):
        sync = CatalogSync(client, env.archive.dicomweb_url, env.catalog, env.store)

        async def assign_now(response):
            if response.url.path.endswith("/metadata") and not assigned:  # mid-read, as the API would
                env.store.assign([(study, series)], "neuro", by="test")
                assigned.append(sync.update_projects([series]))

        client.event_hooks["response"].append(assign_now)
        return await sync.changed(series)

    try:
        assert env.run(read_while_assigned)
        assert assigned == [0]  # assigned mid-read, before the series had a row
        assert env.rows()[series]["project_set"] == "neuro"
    finally:
        env.store.unassign("neuro", study_uids=[study])


def counting(sync: CatalogSync) -> list[str]:
    """The series ``sync`` re-reads, in order."""
    reads, changed = [], sync.changed

    async def counted(uid):
        reads.append(uid)
        return await changed(uid)

    sync.changed = counted
    return reads


def test_the_qido_feed_follows_any_dicomweb_archive(env):
    """The feed for archives without a change feed, on the real archive read
    as any DICOMweb archive (QIDO-RS only): a new series of a recent study
    is read at the next poll, a grown one once it has settled; one stored
    with an old study date and a deleted one reach the catalog by the crawl."""
    today = dt.date.today().strftime("%Y%m%d")

    async def scenario(sync, client):
        reads = counting(sync)
        feed = QidoFeed(archive=client, dicomweb_url=env.archive.dicomweb_url, store=env.store,
                        catalog_sync=sync)
        await feed.start()  # the first look only notes what is there
        study, series = env.store_series(2, study_date=today)
        _, old = env.store_series(1, study_date="20190304")
        assert await feed.step() == 1 and reads == [series]
        assert env.rows()[series]["instances"] == 2 and old not in env.rows()
        env.store_series(3, series, study, study_date=today)
        assert await feed.step() == 0  # grown, not yet settled
        assert await feed.step() == 1  # the same count twice: read again, once
        assert reads == [series, series] and env.rows()[series]["instances"] == 5
        assert await feed.step() == 0
        await sync.full()  # what the poll cannot see
        assert old in env.rows()
        env.delete_series(old)
        env.delete_series(series)
        counts = await sync.full()
        assert counts["deleted"] >= 2 and not {old, series} & set(env.rows())
        assert await feed.step() == 0  # gone from the window: nothing to read

        # running, the feed notes what is there before the crawl lists it: a
        # series stored in between is either listed by the crawl or new to the feed
        order = []
        noted = feed.start

        async def start():
            await noted()
            order.append("noted")

        async def crawl(every):
            order.append("crawl")
            await asyncio.Event().wait()

        feed.start, sync.periodic = start, crawl
        running = asyncio.create_task(feed.run())
        await asyncio.sleep(1)
        running.cancel()
        assert order == ["noted", "crawl"]

    env.run(scenario)


def test_feeds_are_plugins_found_by_name():
    assert feed_class("orthanc") is OrthancFeed and feed_class("qido") is QidoFeed
    with pytest.raises(ValueError, match=r"no archive feed called 'kafka'.*the installed ones "
                                         r"are orthanc, qido"):
        feed_class("kafka")
