"""The coordinator's side of a round (hub/services/federation/aggregate.py):
FedAvg checked against an independent weighted mean, the same bytes
whatever order the sites answered in, what arrived checked again without
pickles, and counts summed by declared category or bin."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
from safetensors.numpy import save

from imaginghub.hub.services.federation.aggregate import (AggregationError, decode_state_dict,
                                                          fedavg, sum_counts)
from imaginghub.hub.services.federation.egress import parse_share

MODEL = {"w": ("float32", (3, 2)), "b": ("float32", (2,))}
WEIGHTS = parse_share("weights", {"type": "state_dict", "max_bytes": 4096})


def state(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(d) for k, (d, s) in MODEL.items()}


def test_fedavg_is_the_weighted_mean_and_the_same_bytes_in_any_order():
    sites = {"site-a": (10, state(1)), "site-b": (30, state(2)), "site-c": (0, state(3))}
    avg = fedavg(sites)
    for k in MODEL:  # against numpy's own weighted mean of the sites with samples
        expected = np.average(np.stack([sites["site-a"][1][k], sites["site-b"][1][k]]),
                              axis=0, weights=[10, 30])
        np.testing.assert_allclose(avg[k], expected, rtol=1e-6)
        assert avg[k].dtype == np.float32
    digest = hashlib.sha256(save(avg)).hexdigest()
    for order in itertools.permutations(sites):
        again = fedavg({s: sites[s] for s in order})
        assert hashlib.sha256(save(again)).hexdigest() == digest


def test_what_cannot_be_averaged_is_said():
    with pytest.raises(AggregationError, match="no site contributed"):
        fedavg({})
    with pytest.raises(AggregationError, match="no site had a sample"):
        fedavg({"a": (0, state(1))})
    with pytest.raises(AggregationError, match="site b: the sample count"):
        fedavg({"a": (1, state(1)), "b": (-3, state(2))})
    odd = {**state(2), "b": np.zeros(3, np.float32)}
    with pytest.raises(AggregationError, match="site b's weights do not match site a's"):
        fedavg({"a": (1, state(1)), "b": (1, odd)})


def test_what_arrives_is_checked_again():
    good = decode_state_dict("site-a", save(state(1)), WEIGHTS, MODEL)
    assert set(good) == set(MODEL)
    with pytest.raises(AggregationError, match="site-b: .*not safetensors"):
        decode_state_dict("site-b", b"\x80\x04pickle", WEIGHTS, MODEL)
    extra = save({**state(1), "x": np.zeros(1, np.float32)})
    with pytest.raises(AggregationError, match="site-c: .*does not have"):
        decode_state_dict("site-c", extra, WEIGHTS, MODEL)
    with pytest.raises(AggregationError, match="over 4096 bytes"):
        decode_state_dict("site-d", b"x" * 5000, WEIGHTS, MODEL)


def test_counts_summed_by_category_and_by_bin():
    modalities = parse_share("modalities", {"type": "counts", "categories": ["CT", "MR"],
                                            "min_cell": 5})
    assert sum_counts({"b": {"CT": 7}, "a": {"CT": 5, "MR": 9}}, modalities) == {
        "CT": 12, "MR": 9}
    hist = parse_share("hist", "counts(min_cell=5, bins=3)")
    assert sum_counts({"a": [5, 0, 6], "b": [0, 8, 5]}, hist) == [5, 8, 11]
    with pytest.raises(AggregationError, match="site b: modalities is not counts by"):
        sum_counts({"a": {"CT": 5}, "b": {"PET": 5}}, modalities)
    with pytest.raises(AggregationError, match="site a: hist is not 3 counts"):
        sum_counts({"a": [1, 2]}, hist)
    with pytest.raises(AggregationError, match="not a whole number"):
        sum_counts({"a": [1.5, 0, 0]}, hist)
