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
