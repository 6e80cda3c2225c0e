"""A federated study over real Flower: a coordinator (SuperLink on loopback,
the Fleet-only proxy) and three sites' agents (SuperNodes with TLS and
registered node keys, imaginghub's bridge), with a recording proxy of the
test's between the sites and the coordinator: it terminates TLS with a
certificate of the test's own CA, so it sees every byte the sites send in
plaintext.

The sites' rounds are real: the policy, the study's own job on the real job
service (papermill), the egress gate and the audit. The three sites share
the test session's one stack (its hub, archive and job service), each with
its own node key, policy and audit; sites with archives of their own are in
test_sites.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import ssl
import subprocess
import sys
import threading
import time

import httpx
import pytest
from tests_support import WORKFLOWS, Recorder

from imaginghub.hub import demo
from imaginghub.hub.errors import StackError
from imaginghub.hub.hubapi import HubAPI
from imaginghub.hub.services.federation.agent import SiteAgent, site_round_handler
from imaginghub.hub.services.federation.audit import Audit
from imaginghub.hub.services.federation.bridge import APP_DIR, bridge_hash
from imaginghub.hub.services.federation.coordinator import Coordinator, StudySpec
from imaginghub.hub.services.federation.policy import Policy, Study
from imaginghub.hub.services.federation.site import SiteRound
from imaginghub.hub.services.jobs.workflows import load
from imaginghub.hub.state import free_port
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.jobs import Jobs

pytestmark = pytest.mark.stack

KEYS = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]  # oncology's
STATS = WORKFLOWS / "federated-stats.ipynb"


@pytest.fixture(scope="module")
def federation(stack, tmp_path_factory):
    """The coordinator, the recorder, and sites a and b (which approve the
    stats study, minimum cell 1) and c (which has not approved it)."""
    root = tmp_path_factory.mktemp("federation")
    coord = Coordinator(root / "coordinator", "consortium", link_port=free_port(),
                        fleet_port=free_port())
    coord.start()
    recorder = Recorder(root / "test-ca", f"https://127.0.0.1:{coord.fleet_port}",
                        coord.pki / "ca.crt")
    alice = stack.token("alice")
    api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
    cohort = Catalog(api, alice).new_cohort(
        "fed-transport", "oncology", series=[demo.series(k).series_uid for k in KEYS]).save()
    sha = load(STATS).sha256
    sites, agents, hooks = {}, [], {}

    def hooked(name, handle):
        def run(req):
            if name in hooks:
                hooks[name](req)
            return handle(req)
        return run

    try:
        for name in ("a", "b", "c"):
            policy = Policy()
            if name != "c":
                policy.approve(Study("consortium", "stats", notebooks=[sha],
                                     cohorts={"onc": f"oncology/{cohort.ref}"}, min_cell=1,
                                     auto=True))
            audit = Audit(f"sqlite:///{root / f'audit-{name}.sqlite'}")
            jobs = Jobs(stack.run["jobs_url"], stack.home.secret("admin_service_token"))
            site = SiteRound(policy, audit, jobs, HubAPI(stack.home), timeout=240)
            agent = SiteAgent(root / f"site-{name}", name,
                              superlink=f"127.0.0.1:{recorder.port}", ca=recorder.ca,
                              runtime_port=free_port(), pinned=bridge_hash(),
                              handle=hooked(name, site_round_handler(site)))
            coord.register(name, agent.init())
            agent.start()
            agents.append(agent)
            sites[name] = {"audit": audit, "policy": policy, "agent": agent}
        yield {"coord": coord, "recorder": recorder, "sites": sites, "root": root,
               "cohort": cohort, "hooks": hooks}
    finally:
        for agent in agents:
            agent.stop()
        recorder.stop()
        coord.stop()


def _run(coord, spec) -> dict:
    coord.submit(spec)
    return coord.wait(spec.study, 300)


def test_a_study_of_statistics_leaves_the_sites_as_declared_and_is_aggregated(federation):
    coord, recorder, sites = federation["coord"], federation["recorder"], federation["sites"]
    rec = _run(coord, StudySpec("stats", "federated-stats", STATS, "onc", rounds=1,
                                min_sites=2, round_timeout=240))
    assert rec["status"] == "finished", rec
    assert rec["bridge_sha256"] == bridge_hash()
    (one,) = rec["rounds"]
    assert {n: s["status"] for n, s in one["sites"].items()} == {
        "a": "released", "b": "released", "c": "pending"}
    assert one["sites"]["c"]["reason"] == "this site has not approved the study yet"
    # the aggregate: both sites' counts summed (each ran the same cohort)
    agg = rec["aggregate"]
    assert agg["num_series"] == 2 * len(KEYS)
    # three CT series at each site: under the workflow's minimum cell of 5
    # there, so each site sent 0, although six would pass it at the coordinator
    assert sum(demo.series(k).modality == "CT" for k in KEYS) == 3
    assert agg["modalities"]["CT"] == 0
    # what the coordinator received is what each site's audit says left it
    for name in ("a", "b"):
        rows = sites[name]["audit"].rows("consortium", "stats")
        assert {r["name"]: (r["sha256"], r["bytes"]) for r in rows} == {
            k: (v["sha256"], v["bytes"]) for k, v in one["sites"][name]["received"].items()}
        prov = one["sites"][name]["provenance"]
        assert prov["series_count"] == len(KEYS) and len(prov["series_hash"]) == 64
        assert "imaginghub" in prov["packages"]
    assert sites["c"]["audit"].rows() == []
    # nothing of the sites' data was in what they sent: no UID, no patient
    sent = recorder.sent_bytes()
    assert {p for p, _ in recorder.sent} <= {
        f"/v1/fleet/{n}" for n in ("register-node", "activate-node", "deactivate-node",
                                   "pull-messages", "push-messages", "get-run", "get-fab",
                                   "push-object", "pull-object", "send-node-heartbeat",
                                   "confirm-message-received", "unregister-node")}
    for k in KEYS:
        assert demo.series(k).series_uid.encode() not in sent
        assert demo.series(k).study_uid.encode() not in sent
    assert b"Demo^" not in sent and b"DEMO-" not in sent
    assert federation["cohort"].ref.encode() not in sent


def test_a_changed_notebook_is_refused_by_every_site(federation, tmp_path):
    coord = federation["coord"]
    nb = json.loads(STATS.read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "metadata": {},
                        "outputs": [], "source": ["print('one more cell')"]})
    changed = tmp_path / "federated-stats.ipynb"
    changed.write_text(json.dumps(nb))
    rec = _run(coord, StudySpec("stats", "federated-stats", changed, "onc", rounds=1,
                                min_sites=1, round_timeout=120))
    assert rec["status"] == "failed"
    (one,) = rec["rounds"]
    for name in ("a", "b"):
        assert one["sites"][name]["status"] == "refused"
        assert "notebook" in one["sites"][name]["reason"]
        assert not one["sites"][name]["received"]
    assert "0 of the study's minimum 1 sites" in rec["reason"]


def test_a_site_runs_no_app_but_the_bridge_it_pinned(federation, tmp_path):
    """A run made from another app (here the bridge with one word changed,
    so another FAB hash) gets an error from every site, and no site started
    a job for it."""
    coord, sites = federation["coord"], federation["sites"]
    app = tmp_path / "app"
    shutil.copytree(APP_DIR, app)
    text = (app / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(text.replace("study bridge", "study bridge!"))
    before = {n: len(s["audit"].rows()) for n, s in sites.items()}
    study = "stats-other-app"
    folder = coord.study_dir(study)
    spec = StudySpec(study, "federated-stats", STATS, "onc", min_sites=1, round_timeout=60)
    coord.submit(spec)  # writes the run's configuration; then the same run from the copy
    coord.wait(study, 300)
    coord.flwr("run", str(app), "coordinator", "--run-config", str(folder / "run-config.toml"))
    deadline = time.monotonic() + 120
    rec = None
    while time.monotonic() < deadline:
        rec = coord.record(study)
        if rec and rec["bridge_sha256"] != bridge_hash() and rec["status"] != "running":
            break
        time.sleep(1)
    assert rec["bridge_sha256"] == hashlib.sha256(
        __import__("flwr.cli.build", fromlist=["x"]).build_fab_from_disk(app)).hexdigest()
    assert rec["status"] == "failed"
    (one,) = rec["rounds"]
    answers = list(one["sites"].values())
    assert len(answers) == 3
    assert all(s["status"] == "failed" and "not pinned" in s["reason"] for s in answers)
    assert {n: len(s["audit"].rows()) for n, s in sites.items()} == before


def test_the_sites_reach_the_fleet_api_only(federation):
    coord = federation["coord"]
    ca = ssl.create_default_context(cafile=str(coord.pki / "ca.crt"))
    base = f"https://127.0.0.1:{coord.fleet_port}"
    for method, path in (("POST", "/v1/control/list-nodes"), ("POST", "/v1/control/start-run"),
                         ("POST", "/v1/runtime/pull-messages"), ("GET", "/v1/fleet/get-run"),
                         ("POST", "/v1/fleet/../control/list-nodes"), ("GET", "/docs")):
        r = httpx.request(method, base + path, verify=ca, content=b"")
        assert r.status_code == 404, (method, path, r.status_code)
    # the SuperLink's own port answers the Control API to anyone who reaches it:
    # it listens on loopback only (the site's port guard closes it to other accounts)
    r = httpx.post(f"https://127.0.0.1:{coord.link_port}/v1/control/list-nodes",
                   verify=ca, content=b"", headers={"content-type": "application/protobuf"})
    assert r.status_code != 404
    # another local account cannot reach it at all (nftables, as the archive's
    # ports; CI runs the tests as root), while the sites' port is open to it
    probe = ("import socket, sys\nfor port in sys.argv[1:]:\n    s = socket.socket()\n"
             "    try:\n        s.connect(('127.0.0.1', int(port))); print(port, 'open')\n"
             "    except OSError as e:\n        print(port, type(e).__name__)\n")
    out = subprocess.run(["runuser", "-u", "nobody", "--", sys.executable, "-c", probe,
                          str(coord.link_port), str(coord.fleet_port)],
                         capture_output=True, text=True, timeout=60).stdout.split("\n")
    assert out[:2] == [f"{coord.link_port} ConnectionRefusedError",
                       f"{coord.fleet_port} open"], out
    # and without the federation's CA, a site does not connect at all
    with pytest.raises(httpx.ConnectError):
        httpx.post(base + "/v1/fleet/get-run", content=b"")


def test_an_unregistered_site_is_refused(federation):
    coord, recorder, root = federation["coord"], federation["recorder"], federation["root"]
    stranger = SiteAgent(root / "site-stranger", "stranger",
                         superlink=f"127.0.0.1:{recorder.port}", ca=recorder.ca,
                         runtime_port=free_port(), pinned=bridge_hash(),
                         handle=lambda req: pytest.fail("an unregistered site got a round"))
    stranger.init()
    try:
        try:
            stranger.start()
        except StackError:  # it may be gone before its runtime API is up
            pass
        deadline = time.monotonic() + 30
        while stranger.node.alive() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not stranger.node.alive()
        assert "Failed to initialize the connection" in stranger.node.tail(40) or \
            "412" in stranger.node.tail(40)
    finally:
        stranger.stop()
    online = {n["node-id"] for n in coord.nodes() if n["status"] == "online"}
    assert sorted(coord.sites()[n] for n in online) == ["a", "b", "c"]


def test_a_site_that_goes_down_in_a_round_and_comes_back(federation):
    """Site b goes down while its round runs: the round completes with site
    a when its time is up (the study's minimum is one site: b's answer is
    lost with its SuperNode), b is back for the next round and contributes
    to it. With b down and a minimum of two sites, the round
    fails and says why."""
    coord, sites, hooks = federation["coord"], federation["sites"], federation["hooks"]
    b = sites["b"]["agent"]
    went_down = threading.Event()
    for name in ("a", "b"):
        approved = sites[name]["policy"].studies[("consortium", "stats")]
        for study in ("stats-fault", "stats-two"):
            sites[name]["policy"].approve(dataclasses.replace(approved, study=study))

    back = threading.Event()

    def activations() -> int:
        return b.node.log_path.read_text(errors="replace").count("SuperNode ID:")

    def b_goes_down(req):  # b's round 1 waits while the test stops and restarts b
        if req["study"] == "stats-fault" and req["round_number"] == 1:
            went_down.set()
            back.wait(90)

    def round_one_waits_for_b(req):  # so that b is back before round 2 begins
        if req["study"] == "stats-fault" and req["round_number"] == 1:
            back.wait(90)
    hooks["b"], hooks["a"] = b_goes_down, round_one_waits_for_b
    try:
        coord.submit(StudySpec("stats-fault", "federated-stats", STATS, "onc", rounds=2,
                               min_sites=1, round_timeout=25))
        assert went_down.wait(120)
        before = activations()
        # from this thread: a child's PDEATHSIG follows the thread that started it
        b.stop()  # SIGTERM: the SuperNode leaves at once
        b.start()  # and rejoins with the same key (the same node)
        deadline = time.monotonic() + 60
        while activations() == before and time.monotonic() < deadline:
            time.sleep(0.2)
        back.set()
        rec = coord.wait("stats-fault", 300)
    finally:
        back.set()
        hooks.pop("b"), hooks.pop("a")
    assert went_down.is_set()
    one, two = rec["rounds"]
    # lost with its SuperNode: unanswered, or answered by the SuperLink for it
    assert one["sites"]["b"]["status"] == "failed" and not one["sites"]["b"]["received"]
    assert one["sites"]["b"]["reason"] in (
        "no answer within the round's time limit",
        "the site could not answer (Error: Node Unavailable — The destination node failed "
        "to report a heartbeat within 2 × its expected interval.)")
    assert one["sites"]["a"]["status"] == "released" and one["status"] == "aggregated"
    assert one["aggregate"]["num_series"] == len(KEYS)
    assert two["sites"]["b"]["status"] == "released", two["sites"]["b"]
    # b's audit holds what left it: round 2, not the lost round 1 (its job ran,
    # its answer never reached the coordinator)
    assert {r["round"] for r in sites["b"]["audit"].rows("consortium", "stats-fault")} == {2}
    assert {r["round"] for r in sites["a"]["audit"].rows("consortium", "stats-fault")} == {1, 2}
    assert two["aggregate"]["num_series"] == 2 * len(KEYS)
    assert rec["status"] == "finished"

    b.stop()
    try:
        rec = _run(coord, StudySpec("stats-two", "federated-stats", STATS, "onc", rounds=1,
                                    min_sites=2, round_timeout=20))
    finally:
        b.start()
    assert rec["status"] == "failed"
    assert rec["reason"] == "round 1: 1 of the study's minimum 2 sites released their results"
    assert "b" not in rec["rounds"][0]["sites"]
