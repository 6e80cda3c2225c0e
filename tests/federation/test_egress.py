"""The egress gate (hub/services/federation/egress.py) on real files a round
could write: what a declared output may be, what a leaky notebook tries to
get out past it (extra keys, undeclared categories, a safetensors header's
metadata, a pickle, tensors the model does not have, a link to a secret),
small cells suppressed by the gate itself, and the bytes that leave encoded
anew (their hashes are what the site's audit records)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load, save

from imaginghub.hub.services.federation.egress import (EgressError, parse_share,
                                                       parse_shares, release)

CANARY = "CANARY-7f3a9c-DOE^JOHN"
MODEL = {"conv.weight": ("float32", (4, 1, 3, 3)), "conv.bias": ("float32", (4,))}


@pytest.fixture
def work(tmp_path):
    (tmp_path / "federated").mkdir()
    return tmp_path


def write(work, name: str, value) -> None:
    (work / "federated" / name).write_text(json.dumps(value))


def weights(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(d) for k, (d, s) in MODEL.items()}


SHARES = parse_shares({
    "num_examples": "int",
    "loss": {"type": "float", "min": 0},
    "modalities": {"type": "counts", "categories": ["CT", "MR", "US"], "min_cell": 5},
    "hist": "counts(min_cell=5, bins=4)",
    "weights": {"type": "state_dict", "max_bytes": 10_000},
})


def good_round(work):
    write(work, "num_examples.json", 12)
    write(work, "loss.json", 0.25)
    write(work, "modalities.json", {"CT": 9, "MR": 3})
    write(work, "hist.json", [0, 7, 2, 11])
    (work / "federated" / "weights.safetensors").write_bytes(save(weights()))


def test_declared_outputs_leave_checked_and_encoded_anew(work):
    good_round(work)
    out = release(work, SHARES, reference=MODEL)
    assert list(out) == list(SHARES)
    assert json.loads(out["num_examples"].data) == 12
    assert json.loads(out["loss"].data) == 0.25
    # small cells: sent as 0, and said; the declared categories all present
    assert json.loads(out["modalities"].data) == {"CT": 9, "MR": 0, "US": 0}
    assert out["modalities"].suppressed == ["MR"]
    assert json.loads(out["hist"].data) == [0, 7, 0, 11] and out["hist"].suppressed == [2]
    sent = load(out["weights"].data)
    for k, a in weights().items():
        assert np.array_equal(sent[k], a)
    for r in out.values():  # what the audit records is what leaves
        assert r.sha256 == hashlib.sha256(r.data).hexdigest() and r.size == len(r.data)
        assert r.audit()["sha256"] == r.sha256


def test_the_site_minimum_cell_size_wins_over_the_workflows(work):
    good_round(work)
    out = release(work, SHARES, site_min_cell=10, reference=MODEL)
    assert json.loads(out["modalities"].data) == {"CT": 0, "MR": 0, "US": 0}
    assert json.loads(out["hist"].data) == [0, 0, 0, 11]


def test_a_leaky_round_gets_nothing_out(work):
    """What a notebook could try; each refuses the output (and with it the
    round: nothing leaves), and no refusal repeats what it refused."""
    good_round(work)
    # files nobody declared are never read
    write(work, "extra.json", {"patient": CANARY})
    (work / "federated" / "notes.txt").write_text(CANARY)
    out = release(work, SHARES, reference=MODEL)
    assert not any(CANARY.encode() in r.data for r in out.values())

    attempts = {
        "an undeclared category": ("modalities.json", {"CT": 9, CANARY: 40}),
        "a string for a number": ("num_examples.json", CANARY),
        "a float for an int": ("num_examples.json", 12.5),
        "a count below zero": ("hist.json", [0, -1, 5, 5]),
        "a longer histogram": ("hist.json", [1, 2, 3, 4, 5]),
        "an out-of-bounds loss": ("loss.json", -1.0),
        "an infinite loss": ("loss.json", float("inf")),
    }
    for what, (file, value) in attempts.items():
        saved = (work / "federated" / file).read_bytes()
        write(work, file, value)
        with pytest.raises(EgressError) as e:
            release(work, SHARES, reference=MODEL)
        assert CANARY not in str(e.value), what
        (work / "federated" / file).write_bytes(saved)


def test_weights_leave_without_the_files_own_bytes(work):
    good_round(work)
    # safetensors' header metadata is free text: it is dropped
    (work / "federated" / "weights.safetensors").write_bytes(
        save(weights(), metadata={"note": CANARY}))
    out = release(work, SHARES, reference=MODEL)
    assert CANARY.encode() not in out["weights"].data
    assert json.loads(out["num_examples"].data) == 12

    def refused(tensors, match, **kw):
        (work / "federated" / "weights.safetensors").write_bytes(save(tensors, **kw))
        with pytest.raises(EgressError, match=match) as e:
            release(work, SHARES, reference=MODEL)
        assert CANARY not in str(e.value)

    w = weights()
    refused({**w, CANARY.replace("^", "_"): np.zeros(3, np.float32)}, "does not have")
    refused({"conv.weight": w["conv.weight"]}, "lacks 1")
    refused({**w, "conv.bias": w["conv.bias"].astype(np.float64)}, "is float64, not float32")
    refused({**w, "conv.bias": np.zeros(5, np.float32)}, r"shape \(5,\)")
    refused({**w, "conv.bias": np.array([1, np.nan, 0, 0], np.float32)}, "not finite")
    refused({**w, "conv.bias": np.frombuffer(b"CANARY-7", np.uint8).copy()[:4]}, "is uint8")


def test_npz_without_pickles_and_nothing_else(work):
    good_round(work)
    os.unlink(work / "federated" / "weights.safetensors")
    np.savez(work / "federated" / "weights.npz", **weights())
    out = release(work, SHARES, reference=MODEL)
    assert set(load(out["weights"].data)) == set(MODEL)
    # an object array is a pickle: numpy refuses to load it, the gate says so
    np.savez(work / "federated" / "weights.npz", **{**weights(),
                                                    "conv.bias": np.array([{"x": 1}] * 4)})
    with pytest.raises(EgressError, match="not a readable npz file"):
        release(work, SHARES, reference=MODEL)
    # a pickle named .npz is no zip
    import pickle

    (work / "federated" / "weights.npz").write_bytes(pickle.dumps(weights()))
    with pytest.raises(EgressError, match="not a readable npz file"):
        release(work, SHARES, reference=MODEL)


def test_missing_links_and_oversized_outputs_are_refused(work, tmp_path_factory):
    good_round(work)
    secret = tmp_path_factory.mktemp("site") / "secret.json"
    secret.write_text("12")
    os.unlink(work / "federated" / "num_examples.json")
    with pytest.raises(EgressError, match="wrote no output num_examples"):
        release(work, SHARES, reference=MODEL)
    os.symlink(secret, work / "federated" / "num_examples.json")  # a link is never followed
    with pytest.raises(EgressError, match="wrote no output num_examples"):
        release(work, SHARES, reference=MODEL)
    os.unlink(work / "federated" / "num_examples.json")
    write(work, "num_examples.json", 12)
    big = {k: np.zeros((400, 1, 3, 3), np.float32) for k in ("conv.weight",)}
    shares = parse_shares({"weights": {"type": "state_dict", "max_bytes": 10_000,
                                       "tensors": {"conv.weight": [400, 1, 3, 3]}}})
    (work / "federated" / "weights.safetensors").write_bytes(save(big))
    with pytest.raises(EgressError, match="over its limit of 10000 bytes"):
        release(work, shares)
    # without a reference or declared tensors, weights do not leave
    with pytest.raises(EgressError, match="names and shapes"):
        release(work, parse_shares({"weights": "state_dict"}))


@pytest.mark.parametrize("name, declared, said", [
    ("w", "pickle", "the type is one of"),
    ("1x", "int", "share name"),
    ("hist", "counts(min_cell=5)", "either categories"),
    ("hist", {"type": "counts", "bins": 3, "categories": ["a"]}, "exactly one"),
    ("hist", {"type": "counts", "categories": ["a", "a"]}, "different names"),
    ("hist", {"type": "counts", "bins": 3, "min_cell": 0}, "at least 1"),
    ("n", {"type": "int", "max_bytes": 3}, "has no setting max_bytes"),
    ("w", {"type": "state_dict", "tensors": {"a": [3, -1]}}, "shape"),
])
def test_declarations_are_checked(name, declared, said):
    with pytest.raises(EgressError, match=said):
        parse_share(name, declared)
    assert parse_share("hist", "counts(min_cell=5, bins=20)").bins == 20


def test_the_audit_holds_exactly_what_left(work, tmp_path_factory):
    from imaginghub.hub.services.federation.audit import Audit

    good_round(work)
    out = release(work, SHARES, reference=MODEL)
    audit = Audit(f"sqlite:///{tmp_path_factory.mktemp('audit') / 'federation.sqlite'}")
    audit.record("consortium", "lung-2027", 1, "0000000000000f01", out.values())
    rows = audit.rows("consortium", "lung-2027")
    assert [(r["name"], r["sha256"], r["bytes"]) for r in rows] == [
        (r.name, hashlib.sha256(r.data).hexdigest(), len(r.data)) for r in out.values()]
    assert {r["name"]: r["suppressed"] for r in rows}["hist"] == 1
    assert audit.rows("consortium", "another-study") == []
