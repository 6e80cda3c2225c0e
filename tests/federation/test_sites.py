"""Three sites with data of their own, and a deliberately leaky notebook.

Sites a, b and c are workspaces of their own (their own archive, hub, data
and job services, demo data), started at once; the session's workspace is
left alone (its tests count its series). Each site's
archive also holds a canary series: random pixels, and a unique canary
string as its patient's name, ID and study description. A recording proxy
of the test's (TLS with a certificate of the test's own CA) sits between
the sites and the coordinator and keeps every byte the sites send.

The study runs ``federated-leaky`` (tests/jobs/workflows), which reads
every series' patient name and pixels and tries to get them out: in its
log, in files next to its declared outputs, in undeclared outputs, and in
the layout of its declared outputs. Only the declared, checked and
re-encoded counts may leave."""

from __future__ import annotations

import contextlib
import hashlib
import secrets

import numpy as np
import pytest
from conftest import TEST_WORKFLOWS, new_home, running_stacks
from tests_support import Recorder, axial_ct_series, wait_for

from imaginghub.hub import demo
from imaginghub.hub.hubapi import HubAPI
from imaginghub.hub.services.federation.agent import SiteAgent, site_round_handler
from imaginghub.hub.services.federation.audit import Audit
from imaginghub.hub.services.federation.bridge import bridge_hash
from imaginghub.hub.services.federation.coordinator import Coordinator, StudySpec
from imaginghub.hub.services.federation.policy import Policy, Study
from imaginghub.hub.services.federation.site import SiteRound
from imaginghub.hub.services.jobs.workflows import load
from imaginghub.hub.state import free_port
from imaginghub.kernels.catalog import Catalog
from imaginghub.kernels.dicomweb import PACS
from imaginghub.kernels.errors import Refused
from imaginghub.kernels.jobs import Jobs

pytestmark = pytest.mark.stack

LEAKY = TEST_WORKFLOWS / "federated-leaky.ipynb"
KEYS = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]  # oncology's


def _canary_series(site: str):
    """A CT series of random pixels whose patient is a canary."""
    canary = f"CANARY{site.upper()}{secrets.token_hex(6)}"
    rng = np.random.default_rng()
    frames = [rng.integers(-1000, 1000, (32, 32), dtype=np.int16) for _ in range(6)]
    _, series, _, datasets = axial_ct_series(
        6, 32, 32, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0), thickness=2.0,
        pixels=lambda k: frames[k], PatientName=f"{canary}^Canary", PatientID=canary,
        StudyDescription=canary, PatientBirthDate="", PatientSex="", StudyDate="20240101",
        StudyTime="1200", StudyID="1", AccessionNumber="", ReferringPhysicianName="",
        SeriesNumber=9)
    return canary, series, b"".join(f.tobytes() for f in frames), datasets


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("sites")
    homes = [new_home(f"fed-{name}", {"JobService": {"workflow_dirs": [str(TEST_WORKFLOWS)]}})
             for name in "abc"]
    with contextlib.ExitStack() as es:
        stacks = dict(zip("abc", es.enter_context(running_stacks(homes, "--demo"))))
        coord = Coordinator(root / "coordinator", "consortium", link_port=free_port(),
                            fleet_port=free_port())
        coord.start()
        es.callback(coord.stop)
        recorder = Recorder(root / "test-ca", f"https://127.0.0.1:{coord.fleet_port}",
                            coord.pki / "ca.crt")
        es.callback(recorder.stop)
        sha = load(LEAKY).sha256
        out = {}
        for name, s in stacks.items():
            alice = s.token("alice")
            canary, series, pixels, datasets = _canary_series(name)
            PACS(s.run["gateway_url"], token=alice).store_instances(datasets,
                                                                    project="oncology")
            api = s.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
            uids = [demo.series(k).series_uid for k in KEYS] + [series]
            catalog = Catalog(api, alice)

            def saved():  # once the catalog has indexed the canary series
                try:
                    return catalog.new_cohort(f"fed-sites-{name}", "oncology",
                                              series=uids).save()
                except Refused:
                    return None
            cohort = wait_for(saved, 60, f"site {name}'s catalog to know the canary series")
            policy = Policy([Study("consortium", "leaky", notebooks=[sha],
                                   cohorts={"onc": f"oncology/{cohort.ref}"}, min_cell=1,
                                   auto=True)])
            audit = Audit(f"sqlite:///{root / f'audit-{name}.sqlite'}")
            site = SiteRound(policy, audit,
                             Jobs(s.run["jobs_url"], s.home.secret("admin_service_token")),
                             HubAPI(s.home), timeout=300)
            agent = SiteAgent(root / f"site-{name}", f"hospital-{name}",
                              superlink=f"127.0.0.1:{recorder.port}", ca=recorder.ca,
                              runtime_port=free_port(), pinned=bridge_hash(),
                              handle=site_round_handler(site))
            coord.register(f"hospital-{name}", agent.init())
            agent.start()
            es.callback(agent.stop)
            out[name] = {"stack": s, "canary": canary, "series": uids, "pixels": pixels,
                         "audit": audit, "jobs": site.jobs}
        yield {"coord": coord, "recorder": recorder, "sites": out}


def _windows(data: bytes, n: int = 64) -> set[bytes]:
    return {data[i:i + n] for i in range(len(data) - n + 1)}


def test_only_the_declared_counts_leave_sites_of_their_own(sites):
    coord, recorder = sites["coord"], sites["recorder"]
    coord.submit(StudySpec("leaky", "federated-leaky", LEAKY, "onc", rounds=1, min_sites=3,
                           round_timeout=300))
    rec = coord.wait("leaky", 400)
    assert rec["status"] == "finished", rec
    (one,) = rec["rounds"]
    assert set(one["sites"]) == {"hospital-a", "hospital-b", "hospital-c"}
    for name, site in sites["sites"].items():
        got = one["sites"][f"hospital-{name}"]
        # only the declared keys left, and they are what the site's audit says
        assert set(got["received"]) == {"num_series", "modalities"}, got
        rows = site["audit"].rows("consortium", "leaky")
        assert {r["name"]: (r["sha256"], r["bytes"]) for r in rows} == {
            k: (v["sha256"], v["bytes"]) for k, v in got["received"].items()}
        # the notebook did try: its log at the site has the canary, its folder the files
        job = site["jobs"].get(rows[0]["job"])
        assert job.status == "succeeded"
        names = {a["path"] for a in job.artifacts()}
        assert {"federated/leak.json", "federated/pixels.npz", "notes.txt"} <= names
        assert site["canary"] in job.logs()
    # the aggregate: five series at each site, four of them CT
    assert rec["aggregate"]["num_series"] == 15
    assert rec["aggregate"]["modalities"] == {"CT": 12, "other": 3}

    sent = recorder.sent_bytes()
    assert sent, "the recorder saw nothing"
    # what the recorder captured is what each site's audit says left it: the
    # coordinator keeps every output as received, and those bytes are in the capture
    received = coord.study_dir("leaky") / "received" / "round-1"
    for name, site in sites["sites"].items():
        for row in site["audit"].rows("consortium", "leaky"):
            data = (received / f"hospital-{name}" / row["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
            assert data in sent
    windows = _windows(sent)
    for name, site in sites["sites"].items():
        assert site["canary"].encode() not in sent, name
        for uid in site["series"]:
            assert uid.encode() not in sent, (name, uid)
        # no 64-byte run of the site's canary pixels anywhere in what it sent
        pixels = site["pixels"]
        assert not any(pixels[i:i + 64] in windows for i in range(len(pixels) - 63)), name
