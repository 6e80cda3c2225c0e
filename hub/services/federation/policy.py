"""A site's federation policy: what its admin lets run, decided for every
round a coordinator asks for, before anything runs.

The admin approves a study of one coordinator, and for it:

- the workflow notebooks it may run, by SHA-256 (a changed notebook is
  another notebook: refused);
- which local cohort version each of the study's cohort aliases means;
- bounds for each parameter the coordinator may set (``{"min", "max"}`` or
  ``{"values": [...]}``): a parameter the policy does not name is refused,
  so a coordinator cannot change what the approved notebook does beyond
  what the admin allowed;
- the site's minimum cell size (the egress gate applies the larger of it
  and the workflow's);
- whether rounds run at once or each waits for the admin's approval.

:meth:`Policy.decide` answers ``approved`` (with the local cohort and the
minimum cell size), ``pending`` (not approved yet: the coordinator sees
only that) or ``refused`` with a reason for the coordinator; a reason names
the policy's rule, never anything of the site's data.

The policy is one JSON file of root's (``federation-policy.json`` in the
site's state directory), written atomically; :func:`load` refuses a file
another account may write.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...errors import ConfigError

APPROVED, PENDING, REFUSED = "approved", "pending", "refused"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COHORT = re.compile(r"^[^/\s]{1,64}/[^@\s]{1,128}@[0-9]+$")  # project/name@version


@dataclass
class Study:
    """The site's approval of one study of one coordinator."""

    coordinator: str
    study: str
    notebooks: list[str] = field(default_factory=list)  # approved SHA-256s
    cohorts: dict[str, str] = field(default_factory=dict)  # alias: "project/name@version"
    parameters: dict[str, dict] = field(default_factory=dict)  # name: {min, max} | {values}
    min_cell: int = 5
    auto: bool = False  # rounds run at once; else each waits for approve_round
    approved_rounds: list[int] = field(default_factory=list)

    def check(self) -> None:
        """A ConfigError naming what is wrong with this approval."""
        where = f"study {self.coordinator}/{self.study}"
        for v, what in ((self.coordinator, "the coordinator's name"), (self.study, "its id")):
            if not isinstance(v, str) or not IDENT.match(v):
                raise ConfigError(f"{where}: {what} is 1-64 letters, digits, '.', '_', '-'")
        for h in self.notebooks:
            if not isinstance(h, str) or not SHA256.match(h):
                raise ConfigError(f"{where}: a notebook is approved by its SHA-256 (64 "
                                  f"lower-case hexadecimal digits), not {h!r:.80}")
        for alias, cohort in self.cohorts.items():
            if not IDENT.match(str(alias)) or not isinstance(cohort, str) \
                    or not COHORT.match(cohort):
                raise ConfigError(f"{where}: cohort alias {alias!r:.64} must name a cohort "
                                  "version as project/name@version")
        for name, rule in self.parameters.items():
            if not isinstance(rule, dict) or not rule or set(rule) - {"min", "max", "values"} \
                    or ("values" in rule and set(rule) != {"values"}) \
                    or ("values" in rule and not isinstance(rule["values"], list)) \
                    or any(k in rule and not _number(rule[k]) for k in ("min", "max")):
                raise ConfigError(f"{where}: parameter {name!r:.64} takes {{\"min\": a, "
                                  "\"max\": b}} (numbers) or {\"values\": [...]}")
        if isinstance(self.min_cell, bool) or not isinstance(self.min_cell, int) \
                or self.min_cell < 1:
            raise ConfigError(f"{where}: min_cell is a whole number of at least 1")


@dataclass
class Decision:
    status: str  # approved, pending, refused
    reason: str = ""
    cohort: str = ""  # the local cohort version (approved only)
    min_cell: int = 0

    def for_coordinator(self) -> dict:
        """What the coordinator may know: the status and the reason."""
        return {"status": self.status, "reason": self.reason}


def _number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


class Policy:
    """The site's approvals, by (coordinator, study)."""

    def __init__(self, studies: list[Study] | None = None):
        self.studies = {(s.coordinator, s.study): s for s in studies or []}

    def decide(self, coordinator: str, study: str, *, notebook_sha256: str,
               parameters: dict, cohort_alias: str, round_number: int) -> Decision:
        s = self.studies.get((coordinator, study))
        if s is None:
            return Decision(PENDING, "this site has not approved the study yet")
        if notebook_sha256 not in s.notebooks:
            return Decision(REFUSED, "this site has not approved this notebook (its SHA-256) "
                                     "for the study")
        if cohort_alias not in s.cohorts:
            return Decision(REFUSED, f"this site has no cohort for the alias "
                                     f"{str(cohort_alias)[:64]!r}")
        for name, value in parameters.items():
            reason = _parameter_refused(name, value, s.parameters.get(name))
            if reason:
                return Decision(REFUSED, reason)
        if not s.auto and round_number not in s.approved_rounds:
            return Decision(PENDING, f"round {round_number} waits for this site's approval")
        return Decision(APPROVED, cohort=s.cohorts[cohort_alias], min_cell=s.min_cell)

    # -- the admin's changes -------------------------------------------------------
    def approve(self, study: Study) -> None:
        study.check()
        self.studies[(study.coordinator, study.study)] = study

    def approve_round(self, coordinator: str, study: str, round_number: int) -> None:
        s = self.studies.get((coordinator, study))
        if s is None:
            raise ConfigError(f"no approved study {coordinator}/{study}: approve it first")
        if round_number not in s.approved_rounds:
            s.approved_rounds.append(round_number)

    def revoke(self, coordinator: str, study: str) -> None:
        self.studies.pop((coordinator, study), None)

    # -- the file -------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the policy atomically, 0640 (a reader's half-written file
        is never seen)."""
        data = json.dumps({"studies": [asdict(s) for s in self.studies.values()]}, indent=1,
                          sort_keys=True)
        fd, tmp = tempfile.mkstemp(prefix=".policy-", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o640)
                f.write(data + "\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def _parameter_refused(name: str, value, rule: dict | None) -> str:
    shown = str(name)[:64]
    if rule is None:
        return f"this site does not let the coordinator set the parameter {shown!r}"
    if "values" in rule:
        if value not in rule["values"]:
            return f"parameter {shown!r} is not one of the values this site allows"
        return ""
    if not _number(value):
        return f"parameter {shown!r} must be a number within this site's bounds"
    if "min" in rule and value < rule["min"] or "max" in rule and value > rule["max"]:
        return (f"parameter {shown!r} is outside this site's bounds "
                f"[{rule.get('min', '-inf')}, {rule.get('max', 'inf')}]")
    return ""


def load(path: Path) -> Policy:
    """The policy in ``path`` (none: an empty one, which approves nothing);
    a ConfigError for a file another account may write, or a wrong one."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return Policy()
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a plain file")
    if st.st_mode & 0o022 or (os.geteuid() == 0 and st.st_uid != 0):
        raise ConfigError(f"{path}: the federation policy must be root's and written by "
                          f"root alone (now uid {st.st_uid}, mode {st.st_mode & 0o777:o}): "
                          f"run 'chown root {path}; chmod 640 {path}'")
    try:
        raw = json.loads(path.read_text())
        studies = [Study(**s) for s in raw.get("studies", [])]
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{path} is not a federation policy ({e})") from None
    policy = Policy()
    for s in studies:
        policy.approve(s)
    return policy
