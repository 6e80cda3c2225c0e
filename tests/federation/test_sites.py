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
import dataclasses
import hashlib
import io
import json
import secrets
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_WORKFLOWS, new_home, running_stacks
from tests_support import Recorder, axial_ct_series, wait_for

from imaginghub.hub import demo
from imaginghub.hub.services.federation import demo as demo_federation
from imaginghub.hub.services.federation.coordinator import StudySpec
from imaginghub.hub.services.federation.policy import Study
from imaginghub.hub.services.jobs.workflows import load
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


QUICK = {**demo_federation.TRAINING, "grid_size": 32, "patch_size": 16, "epochs": 2,
         "patches_per_series": 2, "batch_size": 2}  # the demo's training, smaller
STUDIES = [dataclasses.replace(s, parameters=QUICK) if s.parameters else s
           for s in demo_federation.STUDIES]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    """The demo's federation (federation/demo.py) over three workspaces of
    the test's, with a recording proxy between the sites and the
    coordinator, and each site's canary series in a cohort of its own that
    it approves for the leaky study."""
    root = tmp_path_factory.mktemp("sites")
    names = list(demo_federation.SITES)
    homes = [new_home(f"fed-{name[-1]}", {"JobService": {"workflow_dirs": [str(TEST_WORKFLOWS)]}})
             for name in names]
    sha = load(LEAKY).sha256
    with contextlib.ExitStack() as es:
        # the demo series the sites and the leaky study need (not the large ct-head)
        needed = sorted({k for n in names for k in demo_federation.site_series(n)} | set(KEYS))
        stacks = dict(zip(names, es.enter_context(running_stacks(
            homes, "--demo", "--demo-series", ",".join(needed)))))
        out, approvals = {}, {}
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
            approvals[name] = [Study(demo_federation.COORDINATOR, "leaky", notebooks=[sha],
                                     cohorts={"onc": f"oncology/{cohort.ref}"}, min_cell=1,
                                     auto=True)]
            out[name] = {"stack": s, "canary": canary, "series": uids, "pixels": pixels,
                         "jobs": Jobs(s.run["jobs_url"], s.home.secret("admin_service_token"))}
        recorder = None

        def relay(coord):
            nonlocal recorder
            recorder = Recorder(root / "test-ca", f"https://127.0.0.1:{coord.fleet_port}",
                                coord.pki / "ca.crt")
            es.callback(recorder.stop)
            return f"127.0.0.1:{recorder.port}", recorder.ca

        fed = es.enter_context(demo_federation.Federation(
            root / "federation", {n: s.home for n, s in stacks.items()}, relay=relay,
            approvals=approvals, studies=STUDIES, log=lambda _: None))
        for name in names:
            out[name]["audit"] = fed.audits[name]
        yield {"coord": fed.coordinator, "recorder": recorder, "sites": out, "fed": fed}


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
        got = one["sites"][name]
        # only the declared keys left, and they are what the site's audit says
        assert set(got["received"]) == {"num_series", "modalities"}, got
        rows = site["audit"].rows(demo_federation.COORDINATOR, "leaky")
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
        for row in site["audit"].rows(demo_federation.COORDINATOR, "leaky"):
            data = (received / name / row["name"]).read_bytes()
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


def test_the_demo_studies_at_three_sites(sites):
    """What ``imaginghub federation demo`` runs, on the same federation:
    federated statistics and two rounds of FedAvg training over the three
    workspaces, each site with cohorts of its own; printed: the rounds, the
    aggregates, what left each site."""
    from imaginghub.kernels import models

    fed = sites["fed"]
    out = io.StringIO()
    records = demo_federation.run_studies(fed, out, timeout=600)
    text = out.getvalue()
    stats, unet = records["stats"], records["unet"]
    assert stats["status"] == "finished" and unet["status"] == "finished", text
    # statistics: every site's cohort counted; CT cells under the workflow's minimum
    # of 5 at each site were sent as 0 (4 + 3 + 2 series, at most 3 CT at one site)
    ct, heads = zip(*demo_federation.SITES.values())
    assert stats["aggregate"]["num_series"] == sum(len(k) for k in ct)
    assert stats["aggregate"]["modalities"]["CT"] == 0
    # training: both rounds over all three sites, weighted by 1 + 1 + 2 series
    assert [r["aggregate"]["num_examples"] for r in unet["rounds"]] == \
        [sum(len(k) for k in heads)] * 2
    model = models.load_model(unet["model"])
    assert sorted(model.info["federation"]["rounds"][0]["sites"]) == sorted(fed.sites)
    # printed: each round, each site's outputs, the aggregates, the audit per site
    assert text.count("  round 1: aggregated") == 2 and "  round 2: aggregated" in text
    for name in fed.sites:
        rows = fed.audits[name].rows(demo_federation.COORDINATOR)
        studies = {r["study"] for r in rows}
        assert {"stats", "unet"} <= studies
        assert f"  {name}: {len(rows)} outputs, {sum(r['bytes'] for r in rows)} bytes" in text
    assert f"model: {unet['model']}" in text
    assert "aggregate: " in text and '"num_series": 9' in text


def test_federated_training_is_the_weighted_average_and_reruns_bitwise(sites):
    """The demo's training study (the test before ran it): each round's
    global weights are the average of what the coordinator received,
    weighted by the sites' series counts, recomputed here; each site's
    round 2 started from round 1's average (its job's input); the study's
    model holds the last average; a rerun from the record gives the same
    weights, byte for byte."""
    from safetensors.numpy import load as load_tensors

    from imaginghub.kernels import models

    coord, fed = sites["coord"], sites["fed"]
    rec = coord.record("unet")
    assert rec and rec["status"] == "finished", rec
    folder = coord.study_dir("unet")

    def tensors(path):
        return load_tensors(path.read_bytes())

    start = tensors(folder / "global" / "round-0.safetensors")
    names = sorted(fed.sites)
    for r in rec["rounds"]:
        received = folder / "received" / f"round-{r['round']}"
        got = {s: tensors(received / s / "weights") for s in names}
        counts = {s: json.loads((received / s / "num_examples").read_text()) for s in names}
        assert counts == {s: len(demo_federation.SITES[s][1]) for s in names}
        averaged = tensors(folder / "global" / f"round-{r['round']}.safetensors")
        assert set(averaged) == set(start)
        for key, value in averaged.items():
            total = np.zeros(value.shape, np.float64)
            for s in names:
                total = total + got[s][key].astype(np.float64) * counts[s]
            np.testing.assert_array_equal(value, (total / sum(counts.values()))
                                          .astype(np.float32))
        # the sites trained: what they sent differs from what they were given
        given = start if r["round"] == 1 else tensors(folder / "global" / "round-1.safetensors")
        assert all(any(not np.array_equal(got[s][k], given[k]) for k in given) for s in names)
    for name in names:
        (row,) = [r for r in fed.audits[name].rows(demo_federation.COORDINATOR, "unet")
                  if r["round"] == 2 and r["name"] == "weights"]
        job = sites["sites"][name]["jobs"].get(row["job"])
        assert job.inputs["global.safetensors"] == \
            rec["rounds"][0]["aggregate"]["weights"]["sha256"]
    model = models.load_model(rec["model"])
    final = tensors(folder / "global" / "round-2.safetensors")
    state = model.network.state_dict()
    assert all(np.array_equal(state[k].numpy(), final[k]) for k in final)
    assert model.info["federation"]["bridge_sha256"] == rec["bridge_sha256"]
    assert model.labels == {1: "brain", 2: "ventricles", 3: "lesion"}
    out = coord.rerun("unet")
    again = coord.wait("unet", 600, rerun=out["rerun"])
    assert again["status"] == "finished" and coord.same_aggregate(rec, again), again
    assert again["notebook_sha256"] == rec["notebook_sha256"]
    for r, first in zip(again["rounds"], rec["rounds"]):  # every site's bytes, every round
        for name in names:
            assert r["sites"][name]["received"] == first["sites"][name]["received"]
            kept = Path(out["folder"]) / "received" / f"round-{r['round']}" / name
            assert sorted(p.name for p in kept.iterdir()) == ["num_examples", "weights"]
