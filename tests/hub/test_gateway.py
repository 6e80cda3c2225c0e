"""The data service's gateway over real services (archive, hub, data service):
each caller sees exactly the series of their projects, and anything else
reads as if it did not exist."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from conftest import AUTH_CACHE

from imaginghub.hub import demo
from imaginghub.hub.services.data.__main__ import db_url
from imaginghub.hub.services.data.db import Store

ONCOLOGY = {s.series_uid for s in demo.SERIES if s.project == "oncology"}
NEURO = {s.series_uid for s in demo.SERIES if s.project == "neuro"}
MR = demo.series("mr-head")  # also in project "mixed": part of a study in two projects
CT = demo.series("ct-head")



@pytest.fixture(scope="module")
def stack(data_stack):
    """Every test here runs on SQLite and on PostgreSQL (see conftest)."""
    return data_stack

@pytest.fixture(scope="module")
def gw(stack):
    stack.cli("users", "add", "dana", "--project", "oncology", "--project", "neuro")
    stack.cli("users", "add", "erin", "--project", "mixed")
    Store(db_url(stack.home)).assign([(MR.study_uid, MR.series_uid)], "mixed", by="test")
    tokens = {u: stack.token(u) for u in ("alice", "bob", "dana", "erin", "admin")}
    return Gateway(stack.run["gateway_url"], tokens)


class Gateway:
    def __init__(self, url, tokens):
        self.url = url
        self.tokens = tokens

    def get(self, user, path, token=None, headers=None, **kw) -> httpx.Response:
        h = dict(headers or {})
        if user or token:
            h["Authorization"] = f"token {token or self.tokens[user]}"
        return httpx.get(self.url + path, headers=h, timeout=60, **kw)

    def series(self, user, query="", **kw) -> set[str]:
        r = self.get(user, "/series" + query, **kw)
        assert r.status_code == 200, r.text
        return {rec["0020000E"]["Value"][0] for rec in r.json()}


def test_qido_series_shows_exactly_the_callers_projects(gw):
    assert gw.series("alice") == ONCOLOGY
    assert gw.series("bob") == NEURO
    assert gw.series("dana") == ONCOLOGY | NEURO
    assert gw.series("erin") == {MR.series_uid}
    # an admin sees only their own projects unless they ask for everything
    assert gw.series("admin") == set()
    # ... and then sees the whole archive, unassigned series included
    everything = gw.series("admin", headers={"X-Imaginghub-Scope": "all"})
    assert everything >= ONCOLOGY | NEURO
    assert gw.series("alice", headers={"X-Imaginghub-Scope": "all"}) == ONCOLOGY


@pytest.mark.parametrize("query", [
    "?PatientName=*", "?includefield=all", "?Modality=MR", "?PatientName=Demo%5EHead",
    f"?SeriesInstanceUID={CT.series_uid},{MR.series_uid}",
])
def test_qido_filters_never_widen_the_view(gw, query):
    assert gw.series("alice", query) <= ONCOLOGY
    assert gw.series("bob", query) <= NEURO
    if "Head" in query or "MR" in query:
        assert gw.series("alice", query) == set()


def test_uid_list_mixing_allowed_and_forbidden(gw):
    assert gw.series("alice", f"?SeriesInstanceUID={CT.series_uid},{MR.series_uid}") == {
        CT.series_uid}


def test_paging_after_filtering(gw):
    first = gw.get("alice", "/series?limit=4&offset=0").json()
    rest = gw.get("alice", "/series?limit=100&offset=4").json()
    assert len(first) == 4 and len(first) + len(rest) == len(ONCOLOGY)
    assert gw.get("alice", f"/series?offset={len(ONCOLOGY)}").json() == []
    assert gw.get("alice", "/series?offset=1000").json() == []


def test_qido_studies_and_instances(gw):
    studies = {r["0020000D"]["Value"][0]: r for r in gw.get("erin", "/studies").json()}
    assert set(studies) == {MR.study_uid}
    # the study holds series erin may not see: no counts that would reveal them
    assert "00201206" not in studies[MR.study_uid]
    full = {r["0020000D"]["Value"][0]: r for r in gw.get("bob", "/studies").json()}
    assert full[MR.study_uid]["00201206"]["Value"][0] == len(NEURO)

    inst = gw.get("erin", f"/studies/{MR.study_uid}/instances").json()
    assert {r["0020000E"]["Value"][0] for r in inst} == {MR.series_uid}
    assert len(inst) == demo.GRIDS["mr-head"].slices
    assert gw.get("alice", f"/studies/{MR.study_uid}/series").json() == []
    assert gw.get("alice", f"/studies/{MR.study_uid}/series/{MR.series_uid}/instances").json() == []


def _wado_paths(s, sop):
    base = f"/studies/{s.study_uid}/series/{s.series_uid}"
    return {
        "series": (base, {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
        "metadata": (base + "/metadata", {"Accept": "application/dicom+json"}),
        "instance": (f"{base}/instances/{sop}", {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}),
        "frames": (f"{base}/instances/{sop}/frames/1",
                   {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}),
        "rendered": (f"{base}/instances/{sop}/rendered", {"Accept": "image/png"}),
    }


@pytest.mark.parametrize("kind", ["series", "metadata", "instance", "frames", "rendered"])
def test_wado_allowed_forbidden_and_unknown(gw, kind):
    sop = demo.uid("instance", "mr-head/0")
    path, headers = _wado_paths(MR, sop)[kind]
    ok = gw.get("bob", path, headers=headers)
    assert ok.status_code == 200 and len(ok.content) > 100
    forbidden = gw.get("alice", path, headers=headers)
    unknown_path = path.replace(MR.series_uid, MR.series_uid + "9")
    unknown = gw.get("bob", unknown_path, headers=headers)
    assert forbidden.status_code == unknown.status_code == 404
    assert forbidden.content == unknown.content
    assert dict(_comparable(forbidden.headers)) == dict(_comparable(unknown.headers))
    assert MR.series_uid not in forbidden.text


def _comparable(headers):
    return [(k, v) for k, v in headers.items() if k.lower() not in ("date",)]


def test_study_level_retrieve_returns_only_visible_series(gw):
    meta = gw.get("erin", f"/studies/{MR.study_uid}/metadata",
                  headers={"Accept": "application/dicom+json"})
    assert meta.status_code == 200
    assert {r["0020000E"]["Value"][0] for r in meta.json()} == {MR.series_uid}
    r = gw.get("erin", f"/studies/{MR.study_uid}",
               headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200
    from imaginghub.kernels.multipart import boundary_of, iter_parts

    parts = list(iter_parts([r.content], boundary_of(r.headers["content-type"])))
    assert len(parts) == demo.GRIDS["mr-head"].slices
    assert gw.get("alice", f"/studies/{MR.study_uid}").status_code == 404


def _parts(r: httpx.Response) -> list[bytes]:
    from imaginghub.kernels.multipart import boundary_of, iter_parts

    return [body for _, body in iter_parts([r.content], boundary_of(r.headers["content-type"]))]


def test_series_answer_equals_the_archives_own(gw, stack):
    """Whole series are sent from the embedded archive's files, or relayed
    from any other archive: the same instances, byte for byte, as the
    archive's DICOMweb answer, and additions and deletions show at once
    (nothing stale from the file-name cache)."""
    from pydicom.uid import generate_uid
    from tests_support import ct_file

    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    archive = stack.archive()
    direct = httpx.get(f"{archive.dicomweb_url}/studies/{MR.study_uid}/series/{MR.series_uid}",
                       auth=archive.auth, headers=accept, timeout=60)
    through = gw.get("bob", f"/studies/{MR.study_uid}/series/{MR.series_uid}", headers=accept)
    assert through.status_code == 200
    if stack.run["archive"] == "embedded":  # the files' sizes are known before they are sent
        assert int(through.headers["content-length"]) == len(through.content)
    assert sorted(_parts(through)) == sorted(_parts(direct))
    # a series of alice's that changes between two answers
    study, series = generate_uid(), generate_uid()
    path = f"/studies/{study}/series/{series}"
    files = [ct_file(series, study, value=i) for i in range(3)]
    with stack.archive().rest() as c:
        for f in files[:2]:
            assert c.post("/instances", content=f).status_code == 200
        Store(db_url(stack.home)).assign([(study, series)], "oncology", by="test")
        assert sorted(_parts(gw.get("alice", path, headers=accept))) == sorted(files[:2])
        assert c.post("/instances", content=files[2]).status_code == 200
        assert sorted(_parts(gw.get("alice", path, headers=accept))) == sorted(files)
        first = c.post("/tools/lookup", content=demo_sop(files[0])).json()[0]["ID"]
        assert c.delete(f"/instances/{first}").status_code == 200
        assert sorted(_parts(gw.get("alice", path, headers=accept))) == sorted(files[1:])


def demo_sop(file: bytes) -> str:
    from io import BytesIO

    from pydicom import dcmread

    return dcmread(BytesIO(file)).SOPInstanceUID


@pytest.mark.parametrize("token", [None, "forged-token-0123456789abcdef", "token-with space"])
def test_requests_without_a_valid_token_are_refused(gw, token):
    r = gw.get(None, "/series", token=token)
    assert r.status_code == 401
    assert "Demo" not in r.text


def test_revoked_token_is_refused(gw, stack):
    token = stack.cli("token", "alice", "--note", "to be revoked").stdout.strip()
    assert gw.get(None, "/series", token=token).status_code == 200
    api = httpx.Client(base_url=f"{stack.url}/hub/api",
                       headers={"Authorization": f"token {token}"}, timeout=30)
    tokens = api.get("/users/alice/tokens").json()["api_tokens"]
    for t in tokens:
        if t["note"] == "to be revoked":
            api.delete(f"/users/alice/tokens/{t['id']}")
    time.sleep(AUTH_CACHE + 1)  # the gateway trusts a checked token for a while
    assert gw.get(None, "/series", token=token).status_code == 401


@pytest.fixture(scope="module")
def gw_main(main_stack):
    """The gateway of the session's stack only: for what does not depend on
    the service's database."""
    return Gateway(main_stack.run["gateway_url"], {"alice": main_stack.token("alice")})


def test_many_series_downloads_at_once(gw_main):
    """Series answers are relayed by threads: more transfers in flight than a
    default thread pool holds must all start (none queued behind the others)."""
    gw = gw_main
    n = 8  # more than the default thread pool holds on two cores (6)
    path, headers = _wado_paths(CT, demo.uid("instance", "ct-head/0"))["series"]
    started = threading.Barrier(n, timeout=60)
    sizes = []

    def download():
        with httpx.stream("GET", gw.url + path, timeout=120,
                          headers={**headers, "Authorization": f"token {gw.tokens['alice']}"}) as r:
            assert r.status_code == 200
            started.wait()  # every download has its answer before any is read
            sizes.append(sum(len(c) for c in r.iter_raw(1 << 20)))

    threads = [threading.Thread(target=download) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(sizes) == n and len(set(sizes)) == 1 and sizes[0] > 150e6


@pytest.mark.parametrize("path", [
    "/studies/../series", "/studies/%2E%2E/series", f"/studies/{MR.study_uid}%2Fseries",
    "//series", f"/studies/{MR.study_uid}/series/{MR.series_uid}/../../../series",
    "/studies/1.2.3;rm/series",
])
def test_path_tricks_find_nothing(gw, path):
    r = gw.get("alice", path)
    assert r.status_code == 404 or (r.status_code == 200 and {
        rec["0020000E"]["Value"][0] for rec in r.json()} <= gw.series("alice"))
    assert not NEURO & gw.series("alice")


def test_every_request_is_audited_without_secrets(gw, stack):
    gw.get("alice", f"/studies/{CT.study_uid}/series/{CT.series_uid}/metadata")
    gw.get("alice", f"/studies/{MR.study_uid}/series/{MR.series_uid}/metadata")
    entries = Store(db_url(stack.home)).audit_entries(500)
    mine = [e for e in entries if e.user == "alice" and e.action == "wado-series-metadata"]
    assert {e.status for e in mine} >= {200, 404}
    assert any(MR.series_uid in e.uids and e.status == 404 for e in mine)
    log = (stack.home.path / "logs" / "jupyterhub.log").read_text()
    assert "audit user=alice action=wado-series-metadata" in log
    for token in gw.tokens.values():
        assert token not in log
    assert "Demo^" not in log and "Demo%5E" not in log
    assert stack.home.secret("archive_password") not in log
