"""``imaginghub federation demo``: a coordinator and three sites on loopback,
each site a workspace of its own (its own archive, hub, data and job
services, the demo data), running both shipped federated workflows.

:class:`Federation` wires running workspaces into a federation: the
coordinator (its CA, SuperLink and Fleet proxy), and at each site the
cohorts, the admin's approvals of the demo's two studies, the audit and the
agent, registered with the coordinator. :func:`run_studies` runs the
studies and prints the rounds, the aggregates and what left each site.
:func:`main` starts the workspaces (``imaginghub up --demo``, at once), does
both, and stops everything it started, whatever happened.

Each site holds its own part of the demo set (:func:`site_series`) and
maps the studies' cohort aliases to its own cohorts, so their contributions
differ:

============  ===============================  ======================================
site          ``ct`` (federated-stats)         ``head`` (federated-train)
============  ===============================  ======================================
hospital-a    four oncology series             the axial head phantom
hospital-b    three of them                    the oblique head phantom
hospital-c    two of them                      both
============  ===============================  ======================================
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ...errors import ImagingHubError

CT = ["ct-head-reversed", "ct-slice", "ct-small", "sc-jpeg-baseline"]  # oncology's
HEADS = ["mr-head", "mr-head-oblique"]  # neuro's, with reference SEGs
SITES = {  # site: (its ct series, its head series)
    "hospital-a": (CT, HEADS[:1]),
    "hospital-b": (CT[:3], HEADS[1:]),
    "hospital-c": (CT[:2], HEADS),
}
COORDINATOR = "demo-consortium"
# quick enough for a demo on two cores; the workflow's defaults train longer
TRAINING = {"spacing_mm": 4.0, "grid_size": 48, "patch_size": 32, "epochs": 10,
            "patches_per_series": 4, "batch_size": 4, "seed": 0}


def site_series(name: str) -> list[str]:
    """The demo series a site holds: its cohorts' and their reference SEGs
    (each site its own part of the demo set)."""
    ct, heads = SITES[name]
    return [*ct, *heads, *(f"{h}-seg" for h in heads)]


@dataclass
class DemoStudy:
    study: str
    workflow: str
    alias: str
    project: str
    user: str  # the demo user who saves the site's cohort (a member of project)
    rounds: int
    parameters: dict = field(default_factory=dict)


STUDIES = [
    DemoStudy("stats", "federated-stats", "ct", "oncology", "alice", 1),
    DemoStudy("unet", "federated-train", "head", "neuro", "bob", 2, TRAINING),
]


class Federation:
    """A coordinator in ``root`` and running workspaces (``sites``: {name:
    Home}) as its sites. ``relay`` (for tests: a recording proxy) takes the
    coordinator and answers the address and CA certificate the sites
    connect to; ``approvals`` adds a site's own approvals ({site: [Study]})."""

    def __init__(self, root: Path, sites: dict, *, relay: Callable | None = None,
                 approvals: dict | None = None, studies=STUDIES, log=print):
        self.root, self.sites, self.relay = Path(root), dict(sites), relay
        self.approvals, self.studies, self.log = approvals or {}, list(studies), log
        self.coordinator = None
        self.agents: dict = {}
        self.audits: dict = {}
        self.rounds: dict = {}  # site: its SiteRound
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Federation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from ...state import free_port
        from .coordinator import Coordinator

        self.coordinator = Coordinator(self.root / "coordinator", COORDINATOR,
                                       link_port=free_port(), fleet_port=free_port())
        self.coordinator.start()
        self._stack.callback(self.coordinator.stop)
        address, ca = f"127.0.0.1:{self.coordinator.fleet_port}", \
            self.coordinator.pki / "ca.crt"
        if self.relay is not None:
            address, ca = self.relay(self.coordinator)
        with ThreadPoolExecutor(len(self.sites)) as pool:  # the sites' cohorts, at once
            policies = dict(zip(self.sites, pool.map(self._policy, self.sites,
                                                     self.sites.values())))
        for name, home in self.sites.items():
            self._start_site(name, home, policies[name], address, ca)
            self.log(f"  {name}: cohorts saved, studies approved, agent connected")

    def _policy(self, name: str, home):
        """The site's cohorts saved and the demo's studies approved on them."""
        from .policy import Policy, Study

        jobs = _jobs(home)
        policy = Policy()
        for study in self.studies:
            cohort = _save_cohort(home, study, SITES[name], f"fed-{study.study}-{name}")
            policy.approve(Study(COORDINATOR, study.study,
                                 notebooks=[jobs.workflow(study.workflow)["sha256"]],
                                 cohorts={study.alias: f"{study.project}/{cohort}"},
                                 parameters={k: {"values": [v]}
                                             for k, v in study.parameters.items()},
                                 auto=True))
        for extra in self.approvals.get(name, []):
            policy.approve(extra)
        return policy

    def _start_site(self, name: str, home, policy, address: str, ca: Path) -> None:
        from ...hubapi import HubAPI
        from ...state import free_port
        from .agent import SiteAgent, site_round_handler
        from .audit import Audit
        from .bridge import bridge_hash
        from .site import SiteRound

        jobs = _jobs(home)
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        audit = Audit(f"sqlite:///{folder / 'audit.sqlite'}")
        site = SiteRound(policy, audit, jobs, HubAPI(home), timeout=600)
        agent = SiteAgent(folder, name, superlink=address, ca=ca, runtime_port=free_port(),
                          pinned=bridge_hash(), handle=site_round_handler(site))
        self.coordinator.register(name, agent.init())
        agent.start()
        self._stack.callback(agent.stop)
        self.agents[name], self.audits[name], self.rounds[name] = agent, audit, site

    def stop(self) -> None:
        self._stack.close()


def _jobs(home):
    from ....kernels.jobs import Jobs

    return Jobs(home.read_run()["jobs_url"], home.secret("admin_service_token"))


def _save_cohort(home, study: DemoStudy, keys: tuple[list, list], name: str) -> str:
    """The site's cohort for ``study``, saved by its demo user: its
    reference (``name@version``)."""
    from ....kernels.catalog import Catalog
    from ....kernels.errors import Refused
    from ... import demo
    from ...hubapi import HubAPI

    series = keys[0] if study.alias == "ct" else keys[1]
    api = HubAPI(home)
    api.ensure_user(study.user, admin=False)
    token = api.new_token(study.user, note="federation demo")
    run = home.read_run()
    catalog = Catalog(run["gateway_url"].rsplit("/dicom-web", 1)[0] + "/api", token)
    deadline = time.monotonic() + 120
    while True:  # the catalog indexes the demo data as it arrives
        try:
            return catalog.new_cohort(name, study.project, series=[
                demo.series(k).series_uid for k in series]).save(note="federation demo").ref
        except Refused:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def run_studies(fed: Federation, out=sys.stdout, timeout: float = 900) -> dict:
    """Both studies, one after the other; the rounds, the aggregates and
    what left each site printed. Returns {study: its record}."""
    from ..jobs.workflows import project_workflows
    from .commands import show_record
    from .coordinator import StudySpec

    records = {}
    for i, s in enumerate(fed.studies, start=1):
        print(f"\nstudy {s.study}: {s.workflow}, {s.rounds} round(s), cohort alias "
              f"{s.alias!r} at every site", file=out, flush=True)
        started = time.monotonic()
        fed.coordinator.submit(StudySpec(
            s.study, s.workflow, project_workflows() / f"{s.workflow}.ipynb", s.alias,
            dict(s.parameters), rounds=s.rounds, min_sites=len(fed.sites),
            round_timeout=600))
        records[s.study] = rec = _wait(fed, s.study, timeout, out)
        show_record(rec, out)
        if s.workflow == "federated-stats":
            print("  (a count under the workflow's minimum cell of 5 at a site leaves it as 0: "
                  "with the demo's few series per site, that is every modality and "
                  "manufacturer)", file=out)
        if rec.get("model"):
            print(f"  model: {rec['model']} (the study's provenance in its model.json; the "
                  "workflow segment applies it to a series)", file=out)
        print(f"  {time.monotonic() - started:.0f} s", file=out, flush=True)
    print("\nwhat left each site (its audit: one row per output)", file=out)
    for name, audit in fed.audits.items():
        rows = audit.rows(COORDINATOR)
        total = sum(r["bytes"] for r in rows)
        print(f"  {name}: {len(rows)} outputs, {total} bytes", file=out)
        for r in rows:
            print(f"    {r['study']:<6} round {r['round']}  {r['name']:<14} {r['kind']:<10} "
                  f"{r['bytes']:>8} bytes  sha256 {r['sha256'][:16]}"
                  + (f"  suppressed cells {r['suppressed']}" if r["suppressed"] else ""),
                  file=out)
    print("  nothing else: no notebook, log, series UID or pixel left any site", file=out,
          flush=True)
    return records


def _wait(fed: Federation, study: str, timeout: float, out) -> dict:
    """The study's record once it ended, its rounds said as they finish."""
    deadline, said = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        rec = fed.coordinator.record(study) or {"rounds": []}
        for r in rec["rounds"][said:]:
            print(f"  ... round {r['round']} of {study} {r['status']} ({r['seconds']} s)",
                  file=out, flush=True)
        said = len(rec["rounds"])
        if rec.get("status") in ("finished", "failed"):
            return rec
        time.sleep(1)
    raise ImagingHubError(f"study {study} did not end within {timeout:.0f} s")


# -- the command: three workspaces of its own ------------------------------------------
def _imaginghub() -> str:
    here = Path(sys.executable).with_name("imaginghub")
    return str(here) if here.exists() else (shutil.which("imaginghub") or "imaginghub")


def _start_workspace(home: Path, log: Path, series: list[str]) -> subprocess.Popen:
    from ...state import free_port

    with open(log, "w") as f:
        return subprocess.Popen(
            [_imaginghub(), "--home", str(home), "up", "--demo", "--demo-series",
             ",".join(series), "--port", str(free_port()), "--dicom-port", str(free_port())],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)


def _wait_ready(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Press Ctrl-C to stop." in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise ImagingHubError(f"a demo site's workspace did not start: see {log}")
        time.sleep(0.5)
    raise ImagingHubError(f"a demo site's workspace did not start in {timeout:.0f} s: "
                          f"see {log}")


def _stop_workspaces(procs: list[subprocess.Popen], homes: list) -> None:
    """Ctrl-C to every workspace at once, each waited for; then their Unix
    accounts removed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for home in homes:
        _remove_accounts(home)


def _remove_accounts(home) -> None:
    if home.multi_user and home.state_file.exists():
        accounts = home.accounts()
        for name in accounts.ours():
            accounts.remove(name)


@contextlib.contextmanager
def workspaces(root: Path, names, out=sys.stdout):
    """A running workspace per site name with its part of the demo data
    (``imaginghub up --demo --demo-series ...`` in ``root/<its last
    letter>/``, started at once); each stopped, its Unix
    accounts removed, at the end."""
    from ... import config
    from ...state import Home

    homes, procs, logs = {}, {}, {}
    with contextlib.ExitStack() as es:
        started, made = [], []
        es.callback(_stop_workspaces, started, made)
        for name in names:
            base = root / name[-1]  # short: kernels' socket paths live below it
            (base / "homes").mkdir(parents=True, mode=0o755)
            home = Home(base / "home")
            home.path.mkdir()
            config.write_settings(home.config_file, {"Site": {
                "homes_dir": str(base / "homes"),
                "account_prefix": f"fd{secrets.token_hex(2)}-"}})
            homes[name], logs[name] = home, base / "up.log"
            made.append(home)
            procs[name] = _start_workspace(home.path, logs[name], site_series(name))
            started.append(procs[name])
        with ThreadPoolExecutor(len(procs)) as pool:
            for name, f in {n: pool.submit(_wait_ready, procs[n], logs[n])
                            for n in procs}.items():
                f.result()
                print(f"  {name}: workspace running ({homes[name].read_run()['url']})",
                      file=out, flush=True)
        yield homes
        print("\nstopping the sites' workspaces ...", file=out, flush=True)


def _log_to(path: Path) -> None:
    """The services' and libraries' log lines go to ``path``, not to the
    terminal, which shows the demo's own progress only."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) \
                and not isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)


def main(folder: str | None = None, keep: bool = False, out=sys.stdout) -> int:
    """Start everything, run both studies, stop everything."""
    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="ihfed-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o711)  # the sites' accounts pass through to their homes
    started = time.monotonic()
    _log_to(root / "demo.log")
    print(f"federation demo in {root}: a coordinator ({COORDINATOR}) and three sites on "
          "loopback, each its own workspace with the demo data", file=out, flush=True)
    try:
        with workspaces(root, list(SITES), out) as homes:
            print("coordinator and sites ...", file=out, flush=True)
            with Federation(root / "federation", homes,
                            log=lambda s: print(s, file=out, flush=True)) as fed:
                records = run_studies(fed, out)
        ok = all(r.get("status") == "finished" for r in records.values())
        print(f"\neverything the demo started is stopped ({time.monotonic() - started:.0f} s "
              f"in all); {'both studies finished' if ok else 'a study failed'}", file=out)
        return 0 if ok else 1
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept: {root} (records in federation/coordinator/studies/)", file=out)
