"""A site's side of one federated round: decided by the site's policy, run
as an ordinary job of the study's own hub user, released through the egress
gate, recorded in the site's audit.

- The round runs as ``fed-<study>-<hash>`` (:func:`study_user`), a hub user
  of the coordinator's study that is a member of one
  project only: the one holding the cohort version the site's admin mapped
  to the study's cohort alias. So the job's token reads that project and
  nothing else, whatever the notebook tries.
- Before anything runs, the job service's copy of the workflow must be the
  notebook the site approved (its SHA-256), and so must the notebook the
  job ran (the job's provenance).
- Only the declared outputs are fetched from the job (through the job
  service's API, so it works for any runner), into a private folder, and
  handed to the gate. The executed notebook, the log, the series and their
  pixels stay at the site; a failed round says only that it failed.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ...errors import ConfigError
from ...state import write_private
from ...users import PROJECT_PREFIX, validate_name
from .audit import Audit
from .egress import EgressError, Released, parse_shares, release
from .policy import APPROVED, PENDING, REFUSED, Policy

FAILED = "failed"
RELEASED = "released"
FINISHED = ("succeeded", "failed", "cancelled", "timed_out", "interrupted")


def study_user(coordinator: str, study: str) -> str:
    """The hub user a coordinator's study runs as at this site:
    ``fed-<study>-<6 hex digits>``, at most 24 characters (a Unix account
    with the site's account prefix). The digits are a hash of the
    coordinator's name and the whole study id, so two coordinators' studies
    of one id (or ids that differ in case, or only past the 13 characters
    kept) never share a user, and with it a project."""
    digest = hashlib.sha256(f"{coordinator}/{study}".encode()).hexdigest()[:6]
    try:
        return validate_name(f"fed-{study.lower()[:13]}-{digest}")
    except ConfigError:
        raise ConfigError(f"study {study!r} cannot name a hub user (fed-{study}): use "
                          "letters, digits, '.', '_' and '-'") from None


@dataclass
class RoundRequest:
    """What a coordinator asks of the site for one round (study logic as
    data: a workflow's name, its notebook's hash, parameters, an alias)."""

    coordinator: str
    study: str
    workflow: str
    notebook_sha256: str
    parameters: dict
    cohort_alias: str
    round_number: int


_pending = threading.Lock()  # the agent's rounds are threads; only it writes the file


def keep_pending(path: Path, req: RoundRequest, weights: bytes | None = None) -> None:
    """Keep a request that waits for the site's admin (the latest per
    coordinator, study and round), atomically; a training round's starting
    weights beside it (``pending-weights/SHA256``), for a preview."""
    item = asdict(req)
    if weights is not None:
        item["weights_sha256"] = hashlib.sha256(weights).hexdigest()
        write_private(path.parent / "pending-weights" / item["weights_sha256"], weights)
    with _pending:
        items = read_pending(path)
        items[f"{req.coordinator}/{req.study}/{req.round_number}"] = item
        write_private(path, json.dumps(items, indent=1, sort_keys=True) + "\n")


def drop_pending(path: Path, req: RoundRequest) -> None:
    """A kept request that no longer waits (the policy has decided it),
    and its weights."""
    with _pending:
        items = read_pending(path)
        item = items.pop(f"{req.coordinator}/{req.study}/{req.round_number}", None)
        if item is None:
            return
        write_private(path, json.dumps(items, indent=1, sort_keys=True) + "\n")
    sha = item.get("weights_sha256")
    if sha and not any(i.get("weights_sha256") == sha for i in items.values()):
        (path.parent / "pending-weights" / sha).unlink(missing_ok=True)


def pending_request(path: Path, key: str) -> tuple[RoundRequest, bytes | None] | None:
    """A kept request and its starting weights (None for a query), or None."""
    item = dict(read_pending(path).get(key) or {})
    if not item:
        return None
    sha = item.pop("weights_sha256", None)
    weights = (path.parent / "pending-weights" / sha).read_bytes() if sha else None
    return RoundRequest(**item), weights


def read_pending(path: Path) -> dict[str, dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _training_inputs(req: RoundRequest, federated: dict, weights: bytes | None):
    """A training round's reference ({name: (dtype, shape)}) and the job's
    input files: the starting weights (checked, re-encoded) and
    ``global.json`` (the approved workflow's model, the study and round).
    A ValueError says why the round cannot start."""
    from .aggregate import AggregationError, decode_weights, encode_weights, reference_of
    from .egress import FLOAT_DTYPES

    if weights is None:
        raise ValueError("a training round comes with the weights it starts from")
    try:
        start = decode_weights(weights)
    except AggregationError as e:
        raise ValueError(f"the round's starting weights: {e}") from None
    if not start or any(a.dtype.name not in FLOAT_DTYPES for a in start.values()):
        raise ValueError("the round's starting weights are not floating-point tensors")
    about = {"architecture": federated["model"], "study": req.study,
             "coordinator": req.coordinator, "round": req.round_number}
    return reference_of(start), {"global.safetensors": encode_weights(start),
                                 "global.json": json.dumps(about, sort_keys=True).encode()}


@dataclass
class Outcome:
    status: str  # released, pending, refused, failed
    reason: str = ""
    job_id: str = ""
    released: dict[str, Released] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def for_coordinator(self) -> dict:
        """The status and reason; the outputs travel on their own."""
        return {"status": self.status, "reason": self.reason}


class SiteRound:
    """Runs rounds at this site. ``jobs`` is a jobs client with the admin
    service's token (it submits for the study's user); ``hub`` the hub's API
    as the admin service (``HubAPI``)."""

    def __init__(self, policy: Policy | Callable[[], Policy], audit: Audit, jobs, hub, *,
                 timeout: float = 3600, pending: Path | None = None):
        """``policy``: the site's policy, or a function that reads it anew
        (the admin changes it while the agent runs); ``pending``: a JSON
        file where requests that wait for the admin are kept."""
        self.policy, self.audit, self.jobs, self.hub = policy, audit, jobs, hub
        self.timeout, self.pending = timeout, pending

    def _policy(self) -> Policy:
        return self.policy() if callable(self.policy) else self.policy

    def run(self, req: RoundRequest, *, weights: bytes | None = None,
            preview: Policy | None = None, record: bool = True) -> Outcome:
        """One round. ``weights``: a training round's starting weights
        (safetensors from the coordinator), which the job finds in
        ``inputs/global.safetensors`` (with ``inputs/global.json``: the
        approved workflow's model and the round) and whose names and shapes
        are all its weights may have. With ``preview`` (a policy of the
        admin's, for this look only), the round runs but is not audited and
        nothing is sent: the admin sees what would leave. With
        ``record=False`` the caller audits (:meth:`record`) once the outputs
        have been handed over."""
        decision = (preview or self._policy()).decide(
            req.coordinator, req.study, notebook_sha256=req.notebook_sha256,
            parameters=req.parameters, cohort_alias=req.cohort_alias,
            round_number=req.round_number)
        if self.pending is not None and preview is None:
            if decision.status == PENDING:
                keep_pending(self.pending, req, weights)
            else:  # decided: it waits no longer
                drop_pending(self.pending, req)
        if decision.status != APPROVED:
            return Outcome(decision.status, decision.reason)
        workflow = self.jobs.workflow(req.workflow)
        if workflow.get("sha256") != req.notebook_sha256:
            return Outcome(REFUSED, "this site's copy of the workflow is not the approved "
                                    "notebook")
        if not workflow.get("federated"):
            return Outcome(REFUSED, f"{req.workflow} is not a federated workflow")
        shares = parse_shares(workflow["federated"]["shares"])
        reference, inputs = None, {}
        if workflow["federated"].get("role") == "train":
            try:
                reference, inputs = _training_inputs(req, workflow["federated"], weights)
            except ValueError as e:
                return Outcome(REFUSED, str(e))
        project, _, ref = decision.cohort.partition("/")
        user = self._study_user(req.coordinator, req.study, project)
        job = self.jobs.submit_as(user, req.workflow,
                                  {**req.parameters, "cohort": ref, "project": project},
                                  inputs=inputs)
        deadline = time.monotonic() + self.timeout
        while job.status not in FINISHED:
            if time.monotonic() > deadline:
                job.cancel()
                return Outcome(FAILED, "the round's job ran over the site's time limit",
                               job.id)
            time.sleep(0.5)
            job = job.refresh()
        if job.status != "succeeded":
            return Outcome(FAILED, f"the round's job {job.status} at this site", job.id)
        if job.notebook["sha256"] != req.notebook_sha256:
            return Outcome(REFUSED, "the job did not run the approved notebook", job.id)
        with tempfile.TemporaryDirectory(prefix="imaginghub-round-") as folder:
            work = Path(folder)
            (work / "federated").mkdir()
            have = {a["path"] for a in job.artifacts()}
            for name in shares:
                for ext in ("json", "safetensors", "npz"):
                    path = f"federated/{name}.{ext}"
                    if path in have:
                        (work / path).write_bytes(job.read(path))
            try:
                released = release(work, shares, site_min_cell=decision.min_cell,
                                   reference=reference)
            except EgressError as e:
                return Outcome(FAILED, f"the site's egress gate refused the round: {e}",
                               job.id)
        cohort = job.cohort or {}
        provenance = {"series_hash": cohort.get("series_hash", ""),
                      "series_count": job.series_count, "packages": job.packages}
        outcome = Outcome(RELEASED, job_id=job.id, released=released, provenance=provenance)
        if preview is None and record:
            self.record(req, outcome)
        return outcome

    def record(self, req: RoundRequest, outcome: Outcome) -> None:
        """The audit's rows for what a round released."""
        self.audit.record(req.coordinator, req.study, req.round_number, outcome.job_id,
                          outcome.released.values())

    _users = threading.Lock()  # two rounds at once set up one user once

    def _study_user(self, coordinator: str, study: str, project: str) -> str:
        """The study's hub user, a member of ``project`` only."""
        with self._users:
            return self._set_up_user(study_user(coordinator, study), project)

    def _set_up_user(self, user: str, project: str) -> str:
        self.hub.ensure_user(user, admin=False)
        group = PROJECT_PREFIX + project
        self.hub.add_to_group(group, user)
        groups = self.hub.request("GET", f"/users/{user}").json().get("groups", [])
        for other in groups:
            if other != group:
                self.hub.request("DELETE", f"/groups/{other}/users", json={"users": [user]})
        return user
