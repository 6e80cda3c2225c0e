"""The catalog through the real data service: IDC's million series as a
metadata-only collection, facet counts against a brute-force count of the
same data, project scoping, tags, and clear errors for bad queries."""

from __future__ import annotations

import duckdb
import idc_index_data
import pytest

from imaginghub.kernels.catalog import Catalog

PARQUET = idc_index_data.IDC_INDEX_PARQUET_FILEPATH


@pytest.fixture(scope="module")
def idc(stack, idc_import):
    """The IDC index imported into project ``idcdemo``; ``ivy`` is in it."""
    assert "imported 1044191 series" in idc_import, idc_import
    stack.cli("users", "add", "ivy", "--project", "idcdemo")
    return {u: Catalog(stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api",
                       stack.token(u)) for u in ("ivy", "alice")}


def brute(sql: str) -> list:
    """``sql`` on IDC's parquet file itself (``FROM T``), independently of the catalog."""
    return duckdb.connect().execute(
        sql.replace("FROM T", f"FROM read_parquet('{PARQUET}')")).fetchall()


def test_facets_equal_a_brute_force_count(idc):
    answer = idc["ivy"].query(filters={"modality": ["CT", "MR"], "body_part": ["CHEST"]},
                              facets=["modality", "body_part", "manufacturer"], limit=5)
    expect_total = brute("SELECT count(*) FROM T WHERE Modality IN ('CT', 'MR') "
                         "AND BodyPartExamined = 'CHEST'")[0][0]
    assert answer["total"] == expect_total > 0
    # a facet leaves its own filter out: modality counts over CHEST alone
    modality = dict(map(tuple, answer["facets"]["modality"]))
    for value, n in brute("SELECT Modality, count(*) FROM T WHERE BodyPartExamined = 'CHEST' "
                          "GROUP BY Modality"):
        assert modality[value or "(missing)"] == n
    body = dict(map(tuple, answer["facets"]["body_part"]))
    missing = brute("SELECT count(*) FROM T WHERE Modality IN ('CT', 'MR') AND "
                    "(BodyPartExamined IS NULL OR BodyPartExamined = '')")[0][0]
    assert body["(missing)"] == missing
    assert len(answer["rows"]) == 5
    assert all(r["modality"] in ("CT", "MR") and r["body_part"] == "CHEST"
               for r in answer["rows"])


def test_ranges_text_and_paging(idc):
    c = idc["ivy"]
    df = c.search(modality="MR", study_date=("2000-01-01", "2005-12-31"), text="T1", limit=20,
                  sort="study_date")
    expect = brute("SELECT count(*) FROM T WHERE Modality = 'MR' AND "
                   "try_cast(StudyDate AS DATE) BETWEEN DATE '2000-01-01' AND DATE '2005-12-31' "
                   "AND (contains(lower(SeriesDescription), 't1') OR "
                   "contains(lower(StudyDescription), 't1'))")[0][0]
    assert df.attrs["total"] == expect > 20
    assert list(df["study_date"]) == sorted(df["study_date"])
    nxt = c.search(modality="MR", study_date=("2000-01-01", "2005-12-31"), text="T1", limit=20,
                   offset=20, sort="study_date")
    assert not set(df["series_uid"]) & set(nxt["series_uid"])
    beyond = c.search(modality="MR", text="T1", offset=10**7)
    assert beyond.empty and beyond.attrs["total"] > 0


def test_other_projects_see_nothing_of_it(idc):
    assert idc["alice"].count(collection="nlst") == 0
    facets = idc["alice"].facets(["collection"])
    assert "nlst" not in facets["collection"].index
    assert idc["ivy"].count(collection="nlst") > 100_000


def test_tags_are_shared_in_the_project(idc, stack):
    rows = idc["ivy"].search(collection="nlst", limit=3)
    uids = list(rows["series_uid"])
    assert idc["ivy"].tag(uids, "reviewed", project="idcdemo") == 3
    stack.cli("users", "add", "ike", "--project", "idcdemo")
    ike = Catalog(idc["ivy"].api, stack.token("ike"))
    assert sorted(ike.search(tags="reviewed")["series_uid"]) == sorted(uids)
    from imaginghub.hub import demo
    from imaginghub.kernels.errors import Forbidden, NotFound

    with pytest.raises(Forbidden):
        idc["alice"].tag(uids, "mine", project="idcdemo")
    with pytest.raises(NotFound):  # a series outside the project, even among good ones
        idc["ivy"].tag(uids + [demo.series("ct-head").series_uid], "x", project="idcdemo")
    assert ike.search(tags="x").empty


@pytest.mark.parametrize("body, says", [
    ({"filters": {"colour": ["red"]}}, "unknown field"),
    ({"ranges": {"study_date": ["2020-13-45", None]}}, "malformed date"),
    ({"limit": 100000}, "pages hold"),
    ({"ranges": {"modality": [1, 2]}}, "is text"),
    ({"attributes": {"NotAKeyword": "x"}}, "not a DICOM keyword"),
    ({"select": "*"}, "unknown query keys"),
])
def test_bad_queries_say_what_is_wrong(idc, body, says):
    with pytest.raises(ValueError, match=says):
        idc["ivy"].query(**body)


def test_cohorts_are_versioned_shared_and_scoped(idc, stack):
    import hashlib

    from imaginghub.kernels.errors import Forbidden, NotFound

    ivy = idc["ivy"]
    first = ivy.new_cohort("tcga-ct", "idcdemo", collection=["tcga_read", "tcga_sarc"],
                           modality="CT").save(note="first look")
    expect = sorted(u for (u,) in brute(
        "SELECT SeriesInstanceUID FROM T WHERE collection_id IN ('tcga_read', 'tcga_sarc') "
        "AND Modality = 'CT'"))
    assert first.version == 1 and first.series == expect and len(first) == 20
    assert first.info["series_hash"] == hashlib.sha256("\n".join(expect).encode()).hexdigest()
    assert first.info["saved_by"] == "ivy"
    # a narrower second version; the first stays as it was
    second = ivy.new_cohort("tcga-ct", "idcdemo", series=expect[:5]).save()
    assert second.version == 2 and second.series == expect[:5]
    assert ivy.cohort("tcga-ct@1").series == expect
    assert ivy.cohort("tcga-ct").version == 2
    frame = ivy.cohort("tcga-ct@1").to_dataframe()
    assert sorted(frame["series_uid"]) == expect and set(frame["modality"]) == {"CT"}
    # members of the project see it; others do not, and cannot save into it
    stack.cli("users", "add", "ina", "--project", "idcdemo")
    ina = Catalog(ivy.api, stack.token("ina"))
    listed = ina.cohorts()
    assert list(listed[listed["name"] == "tcga-ct"]["version"]) == [2, 1]
    alice = idc["alice"]
    assert "tcga-ct" not in set(alice.cohorts()["name"])
    with pytest.raises(NotFound):
        alice.cohort("tcga-ct", project="idcdemo")
    with pytest.raises(Forbidden):
        alice.new_cohort("mine", "idcdemo", series=expect[:1]).save()


def test_a_cohort_takes_only_series_of_its_project(idc):
    from imaginghub.hub import demo

    foreign = demo.series("ct-head").series_uid  # oncology's, not in the catalog's idcdemo
    some = list(idc["ivy"].search(collection="tcga_read", limit=2)["series_uid"])
    with pytest.raises(ValueError, match="not in project idcdemo"):
        idc["ivy"].new_cohort("mixed", "idcdemo", series=some + [foreign]).save()
    with pytest.raises(ValueError, match="cohort name"):
        idc["ivy"].new_cohort("Bad Name", "idcdemo", series=some).save()
    with pytest.raises(ValueError, match="empty"):
        idc["ivy"].new_cohort("nothing", "idcdemo", collection="no-such-collection").save()


@pytest.mark.parametrize("key", ["ct-head", "mr-enhanced-j2k", "nm-jpeg-lossless",
                                 "sc-jpeg-baseline", "us-cine"])
def test_thumbnails_are_made_once_and_scoped(stack, key):
    import io

    import httpx
    import numpy as np
    from PIL import Image

    from imaginghub.hub import demo

    s = demo.series(key)
    owner, other = ("alice", "bob") if s.project == "oncology" else ("bob", "alice")
    api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"

    def get(user):
        return httpx.get(f"{api}/thumbnails/{s.series_uid}", timeout=60,
                         headers={"Authorization": f"token {stack.token(user)}"})

    r = get(owner)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    image = np.asarray(Image.open(io.BytesIO(r.content)))
    assert max(image.shape[:2]) <= 128 and image.std() > 5  # a picture, not a blank
    if s.modality in ("US", "OT"):  # colour in colour (YBR converted), not grey
        assert image.ndim == 3 and np.abs(image[..., 0].astype(int) - image[..., 2]).max() > 30
    if s.key == "us-cine":  # the middle of the 30 frames, as the viewer shows it
        from imaginghub.kernels.images import instance_from_bytes

        middle = instance_from_bytes(demo.to_bytes(next(demo.instances(s)))).display(15)
        expected = Image.fromarray(middle, "RGB")
        expected.thumbnail((128, 128))
        assert np.abs(image.astype(int) - np.asarray(expected)).max() <= 1
    kept = stack.home.path / "data" / "thumbnails" / f"{s.series_uid}.png"
    assert kept.read_bytes() == r.content and kept.stat().st_mode & 0o077 == 0
    assert get(owner).content == r.content
    denied = get(other)
    assert denied.status_code == 404 and s.series_uid not in denied.text
