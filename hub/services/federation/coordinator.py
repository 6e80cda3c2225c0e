"""A coordinator: Flower's SuperLink on loopback, the Fleet-only proxy the
sites connect to, site registrations and study runs.

Everything lives below one folder of the federation service's (``home``):

- ``pki/``: the federation's CA and the coordinator's server certificate
  (made once; ``ca.crt`` is what sites are given);
- ``flwr/``: Flower's own home (``config.toml`` naming this SuperLink) and
  the SuperLink's database;
- ``studies/<study>/``: each study's notebook copy, run configuration and
  record (``study.json``, written by the bridge's ServerApp every round).

Runs are submitted with Flower's own CLI on the SuperLink's loopback port,
as the federation service: researchers submit through the hub's API, where
they log in, and never reach the Control API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from ...process import Managed
from ...state import write_private
from .bridge import APP_DIR
from .policy import IDENT
from .pki import make_ca, make_server_cert

CONNECTION = "coordinator"


def flower_env(flwr_home: Path | None = None) -> dict:
    """The environment Flower's programs run in: no telemetry, no update
    checks (sites are often offline), the venv's programs first (the
    SuperLink starts ``flower-superexec`` by name)."""
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"})
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def _port_open(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class StudySpec:
    """A study, as the coordinator submits it: logic as data."""

    study: str
    workflow: str
    notebook: Path  # the coordinator's copy of the workflow notebook
    cohort_alias: str
    parameters: dict = field(default_factory=dict)
    rounds: int = 1
    min_sites: int = 1
    round_timeout: float = 600.0

    def check(self) -> None:
        for v, what in ((self.study, "the study's id"), (self.cohort_alias, "the cohort alias")):
            if not IDENT.match(v or ""):
                raise ConfigError(f"{what} is 1-64 letters, digits, '.', '_', '-' "
                                  f"(not {v!r:.70})")
        if not isinstance(self.rounds, int) or not 1 <= self.rounds <= 100:
            raise ConfigError("rounds is a whole number from 1 to 100")
        if not isinstance(self.min_sites, int) or self.min_sites < 1:
            raise ConfigError("min_sites is a whole number of at least 1")
        if not Path(self.notebook).is_file():
            raise ConfigError(f"no workflow notebook at {self.notebook}")


class Coordinator:
    def __init__(self, home: Path, name: str, *, link_port: int, fleet_port: int,
                 fleet_host: str = "127.0.0.1", server_names: list[str] | None = None):
        if not IDENT.match(name):
            raise ConfigError(f"the coordinator's name {name!r:.70} is 1-64 letters, digits, "
                              "'.', '_', '-'")
        self.home, self.name = Path(home), name
        self.link_port, self.fleet_port, self.fleet_host = link_port, fleet_port, fleet_host
        self.pki = self.home / "pki"
        self.flwr_home = self.home / "flwr"
        self.server_names = server_names or ["localhost", "127.0.0.1"]
        self.procs: list[Managed] = []

    # -- set-up ------------------------------------------------------------------------
    def init(self) -> None:
        """The CA, the server certificate and Flower's home, made once."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not (self.pki / "ca.crt").exists():
            make_ca(self.pki, f"imaginghub federation {self.name}")
        if not (self.pki / "server.crt").exists():
            make_server_cert(self.pki, self.server_names)
        self.flwr_home.mkdir(exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.link_port}"\n'
            f'root-certificates = "{self.pki / "ca.crt"}"\n')

    def start(self) -> None:
        """The SuperLink (loopback) and the Fleet proxy (``fleet_host``)."""
        self.init()
        logs = self.home / "logs"
        logs.mkdir(exist_ok=True)
        link = Managed("superlink", [
            str(Path(sys.executable).parent / "flower-superlink"),
            "--host", "127.0.0.1", "--port", str(self.link_port),
            "--ssl-ca-certfile", str(self.pki / "ca.crt"),
            "--ssl-certfile", str(self.pki / "server.crt"),
            "--ssl-keyfile", str(self.pki / "server.key"),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation",
            "--database", str(self.flwr_home / "superlink.db")],
            log_path=logs / "superlink.log", env=flower_env(self.flwr_home),
            ready=lambda: _port_open("127.0.0.1", self.link_port), cwd=self.home)
        proxy = Managed("fleet-proxy", [
            sys.executable, "-m", "imaginghub.hub.services.federation.fleetproxy",
            "--upstream", f"https://127.0.0.1:{self.link_port}",
            "--ca", str(self.pki / "ca.crt"), "--cert", str(self.pki / "server.crt"),
            "--key", str(self.pki / "server.key"),
            "--host", self.fleet_host, "--port", str(self.fleet_port)],
            log_path=logs / "fleet-proxy.log", env=flower_env(),
            ready=lambda: _port_open(self.fleet_host, self.fleet_port))
        self.guard()
        for p in (link, proxy):
            p.start()
            self.procs.append(p)
        for p in (link, proxy):
            p.wait_ready(60)

    @property
    def guard_table(self) -> str:
        import hashlib

        return "imaginghubfed_" + hashlib.sha256(str(self.home).encode()).hexdigest()[:12]

    def guard(self) -> bool:
        """As root: the SuperLink's port closed to every local account but
        the one the coordinator runs as (its Control API has no login), as
        the archive's ports are. Elsewhere: False (the port is the
        account's own loopback port, and the README says so)."""
        from ... import portguard

        if os.geteuid() != 0:
            return False
        portguard.check_available()
        portguard.install("", str(self.home), [self.link_port], [os.geteuid()],
                          name=self.guard_table)
        self._guarded = True
        return True

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()
        if getattr(self, "_guarded", False):
            from ... import portguard

            portguard.remove_table(self.guard_table)
            self._guarded = False

    # -- Flower's CLI, on loopback -------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120) -> dict:
        r = subprocess.run([str(Path(sys.executable).parent / "flwr"), *args,
                            "--format", "json"], capture_output=True, text=True,
                           env=flower_env(self.flwr_home), timeout=timeout, cwd=self.home)
        try:
            out = json.loads(r.stdout)
        except ValueError:
            out = {"success": False, "error-message": (r.stdout + r.stderr).strip()[-500:]}
        if r.returncode != 0 or not out.get("success", True):
            raise ConfigError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''}: "
                              f"{out.get('error-message', 'failed')}")
        return out

    def register(self, site: str, public_key: Path) -> str:
        """Register a site's node key (its OpenSSH public key) by name: its
        node id. Flower keeps no names, so the coordinator keeps them
        (``sites.json``): a round's answers are named by the node that
        sent them, never by what a node says it is."""
        if not IDENT.match(site):
            raise ConfigError(f"a site's name {site!r:.70} is 1-64 letters, digits, '.', "
                              "'_', '-'")
        sites = self.sites()
        if site in sites.values():
            raise ConfigError(f"site {site} is registered already: unregister it first")
        out = self.flwr("supernode", "register", str(public_key), CONNECTION, "--name", site)
        node = str(out["node-id"])
        sites[node] = site
        write_private(self.sites_file, json.dumps(sites, indent=1, sort_keys=True) + "\n",
                      mode=0o644)
        return node

    def register_key(self, site: str, public_key: str) -> str:
        """:meth:`register` with the key's text (as an admin sends it over
        HTTP): one OpenSSH public key line."""
        key = public_key.strip()
        if "\n" in key or not key.startswith("ecdsa-sha2-") or len(key) > 1024:
            raise ConfigError("a site's node key is the one line of its node.pub (an OpenSSH "
                              "ecdsa-sha2-... public key), as 'site init' printed it")
        with tempfile.TemporaryDirectory(prefix="imaginghub-node-") as folder:
            path = Path(folder) / "node.pub"
            path.write_text(key + "\n")
            return self.register(site, path)

    def unregister(self, site: str) -> str:
        """Withdraw a site's node key: the node can no longer connect; the
        studies' records keep its name. Its node id."""
        nodes = {name: node for node, name in self.sites().items()}
        if site not in nodes:
            raise ConfigError(f"no site {site} is registered here")
        self.flwr("supernode", "unregister", nodes[site], CONNECTION)
        sites = {n: name for n, name in self.sites().items() if name != site}
        write_private(self.sites_file, json.dumps(sites, indent=1, sort_keys=True) + "\n",
                      mode=0o644)
        return nodes[site]

    def status(self) -> list[dict]:
        """Each registered site: its name, node and status as the SuperLink
        sees it (online, offline, ...)."""
        seen = {str(n["node-id"]): n.get("status", "unknown") for n in self.nodes()}
        return [{"site": name, "node": node, "status": seen.get(node, "unknown")}
                for node, name in sorted(self.sites().items(), key=lambda kv: kv[1])]

    @property
    def sites_file(self) -> Path:
        return self.home / "sites.json"

    def sites(self) -> dict[str, str]:
        """The registered sites: {node id: site name}."""
        try:
            return json.loads(self.sites_file.read_text())
        except FileNotFoundError:
            return {}

    def nodes(self) -> list[dict]:
        return self.flwr("supernode", "list", CONNECTION).get("nodes", [])

    # -- studies ---------------------------------------------------------------------
    def study_dir(self, study: str) -> Path:
        return self.home / "studies" / study

    def submit(self, spec: StudySpec) -> dict:
        """Start a study's run; its record is ``study.json`` in its folder."""
        import hashlib

        import tomli_w

        spec.check()
        folder = self.study_dir(spec.study)
        folder.mkdir(parents=True, exist_ok=True)
        notebook = folder / "workflow.ipynb"
        shutil.copyfile(spec.notebook, notebook)
        (folder / "study.json").unlink(missing_ok=True)
        config = {"coordinator": self.name, "study": spec.study, "workflow": spec.workflow,
                  "notebook": str(notebook),
                  "notebook-sha256": hashlib.sha256(notebook.read_bytes()).hexdigest(),
                  "parameters": json.dumps(spec.parameters, sort_keys=True),
                  "cohort-alias": spec.cohort_alias, "rounds": spec.rounds,
                  "min-sites": spec.min_sites, "round-timeout": float(spec.round_timeout),
                  "out": str(folder), "sites": str(self.sites_file)}
        (folder / "run-config.toml").write_text(tomli_w.dumps(config))
        out = self.flwr("run", str(APP_DIR), CONNECTION, "--run-config",
                        str(folder / "run-config.toml"))
        return {"run_id": out.get("run-id"), "folder": str(folder),
                "notebook_sha256": config["notebook-sha256"]}

    def rerun(self, study: str) -> dict:
        """The study again, from its record: the same notebook copy (its
        SHA-256 checked), parameters, alias and rounds, written to
        ``reruns/N/`` of its folder. Sites see the same study and rounds."""
        import hashlib
        import tomllib

        import tomli_w

        folder = self.study_dir(study)
        rec = self.record(study)
        if rec is None:
            raise ConfigError(f"no study {study} at this coordinator")
        config = tomllib.loads((folder / "run-config.toml").read_text())
        if hashlib.sha256((folder / "workflow.ipynb").read_bytes()).hexdigest() != \
                rec["notebook_sha256"]:
            raise ConfigError(f"study {study}'s notebook copy is not the one its record names")
        reruns = folder / "reruns"
        reruns.mkdir(exist_ok=True)
        number = 1 + max((int(p.name) for p in reruns.iterdir() if p.name.isdigit()),
                         default=0)
        out = reruns / str(number)
        out.mkdir()
        config["out"] = str(out)
        (out / "run-config.toml").write_text(tomli_w.dumps(config))
        ran = self.flwr("run", str(APP_DIR), CONNECTION, "--run-config",
                        str(out / "run-config.toml"))
        return {"run_id": ran.get("run-id"), "rerun": number, "folder": str(out)}

    def record(self, study: str, rerun: int | None = None) -> dict | None:
        path = self.study_dir(study) / "study.json"
        if rerun is not None:
            path = self.study_dir(study) / "reruns" / str(rerun) / "study.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def wait(self, study: str, timeout: float, rerun: int | None = None) -> dict:
        """The study's record (or a rerun's) once it has finished or failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rec = self.record(study, rerun)
            if rec and rec.get("status") in ("finished", "failed"):
                return rec
            time.sleep(1)
        raise TimeoutError(f"study {study} did not end within {timeout:.0f} s "
                           f"(its record: {self.record(study, rerun)})")

    @staticmethod
    def same_aggregate(first: dict, second: dict) -> bool:
        """Whether two records' aggregates are the same, byte for byte in
        their canonical JSON."""
        def canon(rec):
            return json.dumps(rec.get("aggregate"), sort_keys=True, separators=(",", ":"))
        return "aggregate" in first and canon(first) == canon(second)
