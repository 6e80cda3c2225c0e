"""The shipped federated workflow federated-stats, run at one site as a
round would run it (papermill, the imaging kernel, alice's token against the
demo stack), then through the egress gate: the counts against the demo's
own definitions and an independent load, the declared cells only, and small
cells suppressed by the gate."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from tests_support import WORKFLOWS, kernels_as, run_workflow as run

from imaginghub.hub import demo
from imaginghub.hub.services.federation.egress import parse_shares, release
from imaginghub.hub.services.jobs.workflows import check_federated, load
from imaginghub.kernels.dicomweb import PACS

KEYS = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]  # oncology's


@pytest.fixture(scope="module")
def stats_round(stack, tmp_path_factory):
    """federated-stats over the series as alice, as a round's job runs it:
    (its work folder, the shares its metadata declares, alice's token)."""
    where = tmp_path_factory.mktemp("fedstats")
    with kernels_as(stack, "alice") as token:
        run("federated-stats.ipynb", where, series=[demo.series(k).series_uid for k in KEYS])
    wf = load(WORKFLOWS / "federated-stats.ipynb")
    return where, parse_shares(wf.federated["shares"]), token


def test_the_workflow_declares_what_may_leave():
    wf = load(WORKFLOWS / "federated-stats.ipynb")
    assert (wf.federated["role"], wf.federated["aggregator"]) == ("query", "counts")
    shares = parse_shares(wf.federated["shares"])
    assert {n: s.kind for n, s in shares.items()} == {
        "num_series": "int", "modalities": "counts", "manufacturers": "counts",
        "mean_hu": "counts"}
    assert all(s.min_cell == 5 for s in shares.values() if s.kind == "counts")
    with pytest.raises(ValueError, match="role and aggregator"):
        check_federated({"role": "train", "aggregator": "counts", "shares": {"n": "int"}}, "x")
    with pytest.raises(ValueError, match="the type is one of"):
        check_federated({"role": "query", "aggregator": "counts",
                         "shares": {"rows": "dataframe"}}, "x")


def test_the_training_workflow_declares_its_model_and_what_may_leave():
    """federated-train names the model the coordinator starts from and
    shares its weights and sample count only; a training block without a
    model, with a model of another module, or with more shares is refused."""
    wf = load(WORKFLOWS / "federated-train.ipynb")
    assert (wf.federated["role"], wf.federated["aggregator"]) == ("train", "fedavg")
    assert wf.federated["model"]["class"] == "monai.networks.nets.UNet"
    assert wf.federated["model"]["args"]["out_channels"] == 4  # background and three labels
    assert {n: s.kind for n, s in parse_shares(wf.federated["shares"]).items()} == {
        "weights": "state_dict", "num_examples": "int"}
    block = dict(wf.federated)
    for changed, said in [
            ({"model": None}, "names its model"),
            ({"model": {"class": "torch.nn.Linear", "args": {}}}, "names its model"),
            ({"shares": {**block["shares"], "loss": "float"}}, "and nothing else"),
            ({"shares": {"weights": "state_dict", "n": "int"}}, "and nothing else")]:
        with pytest.raises(ValueError, match=said):
            check_federated({**block, **changed}, "x")
    with pytest.raises(ValueError, match="no setting model"):
        check_federated({"role": "query", "aggregator": "counts", "model": block["model"],
                         "shares": {"n": "int"}}, "x")


def test_the_training_workflow_runs_only_as_a_round(stack, tmp_path):
    """Run alone, without a round's weights in inputs/, it says what it
    needs and writes nothing to share."""
    import papermill

    with kernels_as(stack, "bob"):
        with pytest.raises(papermill.PapermillExecutionError) as e:
            run("federated-train.ipynb", tmp_path,
                series=[demo.series("mr-head").series_uid])
    assert e.value.ename == "FileNotFoundError" and "inputs/global.safetensors" in e.value.evalue
    assert not (tmp_path / "federated").exists()


def test_a_round_of_statistics_leaves_only_its_counts(stack, stats_round):
    where, shares, alice = stats_round
    # with a minimum cell of 1, the values as counted, against independent answers
    one = {n: dataclasses.replace(s, min_cell=1) for n, s in shares.items()}
    out = {n: json.loads(r.data) for n, r in release(where, one).items()}
    assert out["num_series"] == len(KEYS)
    expected = {}
    for k in KEYS:
        expected[demo.series(k).modality] = expected.get(demo.series(k).modality, 0) + 1
    assert {m: n for m, n in out["modalities"].items() if n} == expected
    assert sum(out["manufacturers"].values()) == len(KEYS)
    pacs = PACS(stack.run["gateway_url"], token=alice)
    edges = np.linspace(-1024, 1024, 17)
    bins = [0] * 16
    for k in KEYS:
        if demo.series(k).modality == "CT":
            try:
                mean = float(np.mean(pacs.load_series(demo.series(k).series_uid,
                                                      progress=False).array))
            except Exception:
                continue
            bins[min(max(int(np.searchsorted(edges, mean, side="right")) - 1, 0), 15)] += 1
    assert out["mean_hu"] == bins and sum(bins) >= 2
    # as declared (a minimum cell of 5): four series make no cell that may leave
    gated = release(where, shares)
    assert json.loads(gated["num_series"].data) == len(KEYS)
    for name in ("modalities", "manufacturers", "mean_hu"):
        value = json.loads(gated[name].data)
        assert not any(value.values() if isinstance(value, dict) else value)
        assert gated[name].suppressed
    # what leaves names nothing of the site's: no UID, no patient
    sent = b"".join(r.data for r in gated.values())
    for k in KEYS:
        assert demo.series(k).series_uid.encode() not in sent
    assert b"Demo^" not in sent and b"DEMO-" not in sent


def test_a_site_runs_an_approved_round_as_the_studys_own_user(stack, tmp_path):
    """The site's side of a round on the real job service: pending until
    the site approves the study, refused for another notebook before any
    job runs, then run as fed-<study> (a member of the mapped cohort's
    project only), gated, and audited with the hashes of what left."""
    from imaginghub.hub.hubapi import HubAPI
    from imaginghub.hub.services.federation.audit import Audit
    from imaginghub.hub.services.federation.policy import Policy, Study
    from imaginghub.hub.services.federation.site import RoundRequest, SiteRound, study_user
    from imaginghub.kernels.catalog import Catalog
    from imaginghub.kernels.jobs import Jobs

    alice = stack.token("alice")
    api = stack.run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api"
    cohort = Catalog(api, alice).new_cohort(
        "fed-round", "oncology", series=[demo.series(k).series_uid for k in KEYS]).save()
    wf = load(WORKFLOWS / "federated-stats.ipynb")
    policy = Policy()
    audit = Audit(f"sqlite:///{tmp_path / 'federation.sqlite'}")
    jobs = Jobs(stack.run["jobs_url"], stack.home.secret("admin_service_token"))
    site = SiteRound(policy, audit, jobs, HubAPI(stack.home), timeout=240)
    req = RoundRequest("consortium", "stats1", "federated-stats", wf.sha256, {}, "onc", 1)

    before = len(jobs.list(limit=500))
    assert site.run(req).for_coordinator() == {
        "status": "pending", "reason": "this site has not approved the study yet"}
    policy.approve(Study("consortium", "stats1", notebooks=["0" * 64],
                         cohorts={"onc": f"oncology/{cohort.ref}"}, auto=True))
    refused = site.run(req)
    assert refused.status == "refused" and "notebook" in refused.reason
    assert len(jobs.list(limit=500)) == before  # nothing ran

    policy.approve(Study("consortium", "stats1", notebooks=[wf.sha256],
                         cohorts={"onc": f"oncology/{cohort.ref}"}, min_cell=1, auto=True))
    done = site.run(req)
    assert done.status == "released", done.reason
    job = jobs.get(done.job_id)
    user = study_user("consortium", "stats1")
    assert user.startswith("fed-stats1-") and user != study_user("other", "stats1")
    assert job.user == user and job.cohort["ref"] == cohort.ref
    groups = HubAPI(stack.home).request("GET", f"/users/{user}").json()["groups"]
    assert groups == ["project-oncology"]
    assert json.loads(done.released["num_series"].data) == len(KEYS)
    # three CT series: under the workflow's minimum cell of 5, which the site's
    # smaller minimum does not lower: sent as 0
    assert json.loads(done.released["modalities"].data)["CT"] == 0
    assert "CT" in done.released["modalities"].suppressed
    # what the audit holds is what left
    rows = audit.rows("consortium", "stats1")
    assert {r["name"]: r["sha256"] for r in rows} == {
        n: r.sha256 for n, r in done.released.items()}
    assert all(r["job"] == done.job_id and r["round"] == 1 for r in rows)
