"""The coordinator's REST API for researchers, through the real hub.

The session's workspace is also a coordinator (conftest's main_stack runs
``init_coordinator`` before ``up``), so its hub routes
/services/federation/ to the API that ``coordinator start`` serves. Here
the coordinator and its API are started as that command starts them, and
researchers call the API through the hub with their own tokens. No site is
connected: the studies' rounds run over real Flower and fail for want of
sites, which is what their records then say."""

from __future__ import annotations

import time

import httpx
import pytest
from tests_support import hub_config, server_token, wait_for

from imaginghub.hub.hubapi import HubAPI
from imaginghub.hub.services.federation.api import RESEARCHERS, ResearchersAPI
from imaginghub.hub.services.federation.commands import coordinator

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def api(stack):
    coord = coordinator(stack.home)
    coord.start()
    served = ResearchersAPI.for_home(stack.home, coord)
    hub = HubAPI(stack.home)
    try:
        yield {"coord": coord, "served": served, "url": stack.url.rstrip("/")
               + "/services/federation/api/"}
    finally:
        served.stop()
        coord.stop()
        hub.request("DELETE", f"/groups/{RESEARCHERS}/users", json={"users": ["alice"]})


def _client(stack, user: str) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"token {stack.token(user)}"}, timeout=60)


def test_researchers_submit_and_watch_studies_through_the_hub(stack, api):
    alice, bob = _client(stack, "alice"), _client(stack, "bob")
    url = api["url"]
    # not yet a researcher: refused, with the group to ask for
    r = alice.get(url + "studies")
    assert r.status_code == 403 and RESEARCHERS in r.json()["message"]
    assert httpx.get(url + "studies").status_code in (401, 403)  # no token: no answer
    stack.cli("federation", "coordinator", "researchers", "add", "alice")
    deadline = time.monotonic() + 30  # the API's view of the groups is cached briefly
    while alice.get(url + "studies").status_code != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert "studies" in alice.get(url + "studies").json()

    # bad submissions say what is wrong, and take no id
    for body, said in [({"study": "s1", "workflow": "cohort-qc", "cohort_alias": "onc"},
                        "not a federated workflow"),
                       ({"study": "s1", "workflow": "nope", "cohort_alias": "onc"},
                        "no workflow called 'nope'"),
                       ({"study": "s1", "workflow": "federated-stats"}, "cohort_alias"),
                       ({"study": "s1", "workflow": "federated-stats", "cohort_alias": "onc",
                         "parameters": {"colour": 1}}, "has no parameter colour"),
                       ({"study": "s1", "workflow": "federated-stats", "cohort_alias": "onc",
                         "rounds": 0}, "rounds is a whole number"),
                       ({"study": "s1", "workflow": "federated-stats", "cohort_alias": "onc",
                         "sites": ["x"]}, "unknown field")]:
        r = alice.post(url + "studies", json=body)
        assert r.status_code == 400 and said in r.json()["message"], (body, r.text)
    assert alice.get(url + "studies/s1").status_code == 404

    # a study: submitted through the hub, run over Flower, its record watched
    r = alice.post(url + "studies", json={
        "study": "api-stats", "workflow": "federated-stats", "cohort_alias": "onc",
        "rounds": 1, "min_sites": 1, "round_timeout": 3})
    assert r.status_code == 201, r.text
    assert len(r.json()["notebook_sha256"]) == 64
    assert alice.post(url + "studies", json={
        "study": "api-stats", "workflow": "federated-stats",
        "cohort_alias": "onc"}).status_code == 409
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rec = alice.get(url + "studies/api-stats").json()
        if rec.get("status") in ("finished", "failed"):
            break
        time.sleep(1)
    assert rec["status"] == "failed" and rec["by"] == "alice", rec
    assert "0 of the study's minimum 1 sites" in rec["reason"]
    (listed,) = [s for s in alice.get(url + "studies").json()["studies"]
                 if s["study"] == "api-stats"]
    assert (listed["workflow"], listed["status"], listed["by"]) == (
        "federated-stats", "failed", "alice")
    # a rerun from the record, watched the same way
    r = alice.post(url + "studies/api-stats/rerun")
    assert r.status_code == 202 and r.json()["rerun"] == 1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        again = alice.get(url + "studies/api-stats/reruns/1")
        if again.status_code == 200 and again.json().get("status") in ("finished", "failed"):
            break
        time.sleep(1)
    assert again.json()["status"] == "failed"
    assert alice.get(url + "sites").json() == {"sites": []}
    # bob is no researcher: nothing, whatever he asks
    for method, path in (("GET", "studies"), ("GET", "studies/api-stats"),
                         ("POST", "studies/api-stats/rerun")):
        assert bob.request(method, url + path).status_code == 403


def test_a_researchers_server_reaches_the_api_with_its_own_token(stack, api):
    """Users' servers are told where the API is and their tokens may reach
    it: the hub's configuration as the hub loads it, and a token with just
    a server's scopes, used at that address (alice is a researcher since
    the test before)."""
    cfg = hub_config(stack)
    assert "access:services!service=federation" in cfg.Spawner.server_token_scopes
    # the APIs run apart from the hub (and may start after it): its start
    # does not wait for them (JupyterHub waits 30 s for each, by default)
    assert {s["name"]: s["timeout"] for s in cfg.JupyterHub.services
            if s["name"].startswith("federation")} == {"federation": 1, "federation-site": 1}
    # `up` says which roles this workspace has, and what starts them
    banner = stack.output.read_text()
    assert "  federation: coordinator session-hub: 'imaginghub federation coordinator " \
        "start'" in banner
    assert "  federation: site session-site of 127.0.0.1:" in banner
    url = cfg.Spawner.environment["IMAGINGHUB_FEDERATION_URL"]
    token = server_token(stack, "alice")
    r = httpx.get(url + "studies", headers={"Authorization": f"token {token}"}, timeout=30)
    assert r.status_code == 200 and "api-stats" in {s["study"] for s in r.json()["studies"]}


def test_the_admin_registers_and_unregisters_sites_over_http(stack, api, tmp_path):
    """The coordinator's admin registers a site by the node key its admin
    sent, sees it with its node and status, and unregisters it; a
    researcher sees the sites' names and may change nothing."""
    from imaginghub.hub.services.federation.pki import make_node_key

    admin, alice = _client(stack, "admin"), _client(stack, "alice")
    url = api["url"]
    stack.cli("federation", "coordinator", "researchers", "add", "alice")  # as she may be
    wait_for(lambda: alice.get(url + "sites").status_code == 200, 30, "alice a researcher")
    _, pub = make_node_key(tmp_path)
    key = pub.read_text()
    r = alice.post(url + "sites", json={"site": "hospital-x", "public_key": key})
    assert r.status_code == 403 and "admins" in r.json()["message"]
    for body, said in [({"site": "hospital-x", "public_key": "ssh-rsa AAAA"}, "node key"),
                       ({"site": "hospital x", "public_key": key}, "a site's name"),
                       ({"site": "hospital-x"}, '"public_key"')]:
        r = admin.post(url + "sites", json=body)
        assert r.status_code == 400 and said in r.json()["message"], (body, r.text)
    r = admin.post(url + "sites", json={"site": "hospital-x", "public_key": key})
    assert r.status_code == 201, r.text
    node = r.json()["node"]
    assert admin.post(url + "sites", json={"site": "hospital-x",
                                           "public_key": key}).status_code == 409
    listed = admin.get(url + "sites").json()
    assert listed["sites"] == ["hospital-x"]
    # as the SuperLink knows it (registered, never connected)
    (row,) = listed["nodes"]
    assert (row["site"], row["node"], row["status"]) == ("hospital-x", node, "registered")
    assert alice.get(url + "sites").json() == {"sites": ["hospital-x"]}  # names only
    assert "hospital-x" in stack.cli("federation", "coordinator", "sites").stdout

    assert alice.delete(url + "sites/hospital-x").status_code == 403
    assert admin.delete(url + "sites/hospital-x").status_code == 200
    assert admin.delete(url + "sites/hospital-x").status_code == 404
    assert admin.get(url + "sites").json() == {"sites": [], "nodes": []}
    flower = {str(n["node-id"]): n["status"] for n in api["coord"].nodes()}
    assert flower.get(node, "unregistered") == "unregistered"  # its key no longer admitted
