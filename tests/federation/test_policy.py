"""A site's federation policy (hub/services/federation/policy.py): what is
not approved waits as pending, a changed notebook or a parameter outside the
site's bounds is refused with a reason that names only the rule, rounds wait
for the admin unless the study runs at once, and the policy file is root's,
written whole."""

from __future__ import annotations

import json
import os

import pytest

from imaginghub.hub.errors import ConfigError
from imaginghub.hub.services.federation.policy import (APPROVED, PENDING, REFUSED, Policy,
                                                       Study, load)

NB = "a" * 64
OTHER = "b" * 64


def study(**kw) -> Study:
    base = dict(coordinator="consortium", study="lung-2027", notebooks=[NB],
                cohorts={"lung-ct": "oncology/lung-ct@3"},
                parameters={"epochs": {"min": 1, "max": 5}, "model": {"values": ["unet"]}},
                min_cell=10)
    return Study(**{**base, **kw})


def ask(policy, **kw):
    base = dict(notebook_sha256=NB, parameters={"epochs": 2}, cohort_alias="lung-ct",
                round_number=1)
    return policy.decide("consortium", "lung-2027", **{**base, **kw})


def test_what_is_not_approved_waits_and_what_is_runs():
    policy = Policy()
    assert ask(policy).status == PENDING
    policy.approve(study())
    d = ask(policy)
    assert (d.status, d.reason) == (PENDING, "round 1 waits for this site's approval")
    policy.approve_round("consortium", "lung-2027", 1)
    d = ask(policy)
    assert (d.status, d.cohort, d.min_cell) == (APPROVED, "oncology/lung-ct@3", 10)
    assert d.for_coordinator() == {"status": APPROVED, "reason": ""}  # not the local cohort
    assert ask(policy, round_number=2).status == PENDING
    policy.approve(study(auto=True))
    assert ask(policy, round_number=7).status == APPROVED
    # another coordinator's study of the same name is another study
    assert policy.decide("elsewhere", "lung-2027", notebook_sha256=NB, parameters={},
                         cohort_alias="lung-ct", round_number=1).status == PENDING


@pytest.mark.parametrize("asked, said", [
    ({"notebook_sha256": OTHER}, "has not approved this notebook"),
    ({"cohort_alias": "brain-mr"}, "no cohort for the alias 'brain-mr'"),
    ({"parameters": {"epochs": 9}}, "outside this site's bounds [1, 5]"),
    ({"parameters": {"epochs": "2; rm -rf /"}}, "must be a number"),
    ({"parameters": {"model": "resnet"}}, "not one of the values"),
    ({"parameters": {"learning_rate": 0.1}}, "does not let the coordinator set"),
])
def test_refusals_say_which_rule(asked, said):
    policy = Policy([study(auto=True)])
    d = ask(policy, **asked)
    assert d.status == REFUSED and said in d.reason
    assert d.cohort == "" and "oncology" not in d.reason


@pytest.mark.parametrize("bad, said", [
    ({"notebooks": ["not-a-hash"]}, "SHA-256"),
    ({"cohorts": {"lung-ct": "lung-ct"}}, "project/name@version"),
    ({"parameters": {"epochs": {"min": "one"}}}, "takes"),
    ({"parameters": {"epochs": {"values": [1], "max": 3}}}, "takes"),
    ({"min_cell": 0}, "min_cell"),
    ({"study": "../x"}, "its id"),
])
def test_a_wrong_approval_is_named(bad, said):
    with pytest.raises(ConfigError, match=said):
        Policy().approve(study(**bad))


def test_the_policy_file(tmp_path):
    path = tmp_path / "federation-policy.json"
    assert load(path).studies == {}  # none: nothing approved
    policy = Policy([study()])
    policy.approve_round("consortium", "lung-2027", 1)
    policy.save(path)
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"
    again = load(path)
    assert ask(again).status == APPROVED
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match="written by root alone"):
        load(path)
    os.chmod(path, 0o640)
    path.write_text(json.dumps({"studies": [{"coordinator": "c", "study": "s",
                                             "notebooks": ["x"]}]}))
    with pytest.raises(ConfigError, match="SHA-256"):
        load(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a federation policy"):
        load(path)


def test_pending_requests_are_kept_until_the_policy_decides_them(tmp_path):
    """A request that waits is kept with its starting weights (for a
    preview); once decided (run or refused), it and its weights go."""
    from imaginghub.hub.services.federation.site import (RoundRequest, drop_pending,
                                                         keep_pending, pending_request,
                                                         read_pending)

    path = tmp_path / "pending.json"
    one = RoundRequest("consortium", "lung-2027", "federated-train", NB, {}, "lung-ct", 1)
    two = RoundRequest("consortium", "lung-2027", "federated-train", NB, {}, "lung-ct", 2)
    keep_pending(path, one, b"weights of round 1")
    keep_pending(path, two)
    assert set(read_pending(path)) == {"consortium/lung-2027/1", "consortium/lung-2027/2"}
    req, weights = pending_request(path, "consortium/lung-2027/1")
    assert req == one and weights == b"weights of round 1"
    drop_pending(path, one)
    drop_pending(path, one)  # once more: nothing to do
    assert set(read_pending(path)) == {"consortium/lung-2027/2"}
    assert list((tmp_path / "pending-weights").iterdir()) == []
    assert pending_request(path, "consortium/lung-2027/1") is None
