"""The embedded stack that ``imaginghub up`` runs: the archive (Orthanc with
DICOMweb), the job starter and JupyterHub (with its proxy, its services and
the users' servers), as managed child processes of one foreground command.

Run as root it is a multi-user site: the services and the archive run as
the service account, which alone owns the state directory; each hub user's
server, kernels, terminals, jobs and Dask workers run as their own Unix
account (:mod:`.accounts`); the archive's ports are closed to everyone else
(:mod:`.portguard`). Run as anyone else it is single-user: everything runs
as that account, and projects are a convenience, not a security boundary.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
from traitlets import Integer
from traitlets.config import Configurable

from . import config as site_config
from . import hubconfig, orthanc, portguard
from .errors import ConfigError, StackError
from .process import Managed, kill_tree
from .state import (MULTI_USER, SINGLE_USER, Home, free_port, make_dir, migrate_root_home,
                    port_in_use, write_private)
from .users import Registry

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000
# Restarts of a crashed archive allowed within a minute before `up` gives up.
MAX_RESTARTS_PER_MINUTE = 3


class Stack(Configurable):
    """The embedded stack that ``imaginghub up`` starts, watches and stops on
    one state directory: the archive, the job starter, the hub with its proxy
    and services."""

    port = Integer(DEFAULT_PORT, help="""
        The hub's public port, on 127.0.0.1 (users, and tools such as
        dicomweb-client or 3D Slicer, reach everything through it). 'imaginghub
        up --port N' overrides it for one start.""").tag(config=True)

    def __init__(self, home: Home, *, port: int | None = None, dicom_port: int | None = None,
                 demo: bool = False, demo_series: list[str] | None = None, out=None):
        self.home = home
        self.out = out or sys.stdout
        moved = migrate_root_home() if home.path == Home().path else None
        if moved:
            self.say(moved)
            self.home = Home(home.path)
        self._migrate()
        super().__init__(config=self.home.config())
        from .services.data.config import DataService

        # The site's own archive (c.DataService.archive_url): no Orthanc here.
        self.external = bool(DataService(config=self.home.config()).archive_url)
        self.endpoint = None  # the archive the data service talks to
        self.orthanc_settings = None
        self.demo = demo
        self.demo_series = demo_series  # None: the whole demo set
        self._port_arg = port
        self._dicom_port_arg = dicom_port
        self.archive: Managed | None = None
        self.hub: Managed | None = None
        self.starter: Managed | None = None
        self.multi_user = os.geteuid() == 0
        self.service = None  # the service account (multi-user mode)
        self._guarded = False
        self._stop = threading.Event()
        self._restarts: list[float] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    # -- settings -----------------------------------------------------------
    def _migrate(self) -> None:
        """An older state directory's settings.json, split once (see
        :func:`.config.migrate`)."""
        moved = site_config.migrate(self.home)
        if moved:
            self.say(moved)

    def _settings(self) -> dict:
        """This start's ports and the archive's settings; the ports the
        machine chose are kept in state.json."""
        archive = orthanc.Archive(config=self.home.config())
        state = self.home.load_state()
        s = {"port": self._port_arg or self.port,
             "dicom_port": self._dicom_port_arg or archive.dicom_port,
             "aet": archive.aet,
             "modalities": self.home.load_modalities(),
             "orthanc_http_port": state.get("orthanc_http_port")}
        if not self.external and (not s["orthanc_http_port"]
                                  or port_in_use(s["orthanc_http_port"])):
            s["orthanc_http_port"] = free_port()
        return s

    def _check_plugins_and_folders(self) -> None:
        """The job service's plugins and folders, named when they are missing."""
        from .services.jobs.config import JobService
        from .services.jobs.runner import runner_class

        from .services.data.config import DataService
        from .services.data.feeds import feed_class

        jobs = JobService(config=self.home.config())
        data = DataService(config=self.home.config())
        try:
            runner_class(jobs.runner)
            feed_class(data.feed_name())
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.external and data.feed_name() == "orthanc":
            raise ConfigError(
                "c.DataService.feed = 'orthanc' reads the embedded Orthanc's change feed, and "
                "c.DataService.archive_url names another archive: use 'qido' (the default "
                f"with archive_url) in {self.home.config_file}")
        for folder in jobs.workflow_dirs:
            if not Path(folder).is_dir():
                raise ConfigError(
                    f"c.JobService.workflow_dirs names {folder}, which is not a folder: create "
                    f"it, or remove it from {self.home.config_file}")

    def _check_ports(self, s: dict) -> None:
        if port_in_use(s["port"]):
            raise StackError(
                f"port {s['port']} on 127.0.0.1 is in use by another program: stop it or "
                f"start the workspace on another port with 'imaginghub up --port N'"
            )
        if not self.external and port_in_use(s["dicom_port"], "0.0.0.0"):
            raise StackError(
                f"the DICOM port {s['dicom_port']} is in use by another program: stop it or "
                f"choose another with 'imaginghub up --dicom-port N'"
            )

    # -- start ----------------------------------------------------------------
    def start(self) -> dict:
        """Start everything and return what run.json records."""
        home = self.home
        running = home.read_run()
        if running:
            raise StackError(
                f"the workspace in {home.path} is running already (pid {running['pid']}, "
                f"{running['url']}); stop it first"
            )
        if not self.external:
            orthanc.find_orthanc()  # a clear error before anything starts
        hubconfig.find_proxy()
        if self.multi_user:
            if not self.external:  # the embedded archive's ports get closed
                portguard.check_available()
            from .accounts import ensure_service_account

            self.service = ensure_service_account()
        else:
            self.say("single-user mode: every hub user runs as this account "
                     f"({_me()}), so projects are a convenience here, not a security "
                     "boundary; run 'imaginghub up' as root for a multi-user site")
        home.create()
        written = site_config.write_default(home)
        if written:
            log.info("wrote the site's configuration file %s (every setting commented out)",
                     written)
        if self.multi_user:
            site_config.share_with_services(home, self.service.gid)
        self._check_plugins_and_folders()
        first_run = not home.users_file.exists()
        s = self._settings()
        s["mode"] = MULTI_USER if self.multi_user else SINGLE_USER
        self._check_ports(s)
        home.save_state({**home.load_state(), "mode": s["mode"],
                         "orthanc_http_port": s["orthanc_http_port"]})
        home.site_id()
        if self.multi_user:
            self._prepare_site()

        archive_password = home.secret("archive_password")
        self.endpoint = self._archive_endpoint()
        home.secret("jupyterhub_cookie_secret")
        home.secret("proxy_auth_token")
        home.secret("admin_service_token")

        registry = Registry(home.users_file)
        admin_password = None
        if first_run:
            _, admin_password = registry.add("admin", admin=True)
        demo_logins = self._demo_users(registry) if self.demo else {}
        if self.multi_user:
            self._reconcile_accounts(registry)

        from ..kernels import kernelspec

        kernelspec.install(hubconfig.data_dir(home))

        if not self.external:
            self.orthanc_settings = orthanc.OrthancSettings(
                http_port=s["orthanc_http_port"], dicom_port=s["dicom_port"],
                password=archive_password, aet=s["aet"], modalities=s["modalities"],
            )
            self.archive = orthanc.managed(self.orthanc_settings, home.orthanc_dir,
                                           home.path / "logs" / "orthanc.log",
                                           account=self.service)
        if self.multi_user:
            home.claim(self.service.uid, self.service.gid, skip=[home.orthanc_dir / "db"])
        try:
            if self.multi_user and not self.external:
                gone = portguard.remove_stale()
                if gone:
                    log.info("removed firewall tables of workspaces that no longer run: %s",
                             ", ".join(gone))
                portguard.install(home.site_id(), str(home.path),
                                  [s["orthanc_http_port"], s["dicom_port"]],
                                  [0, self.service.uid])
                self._guarded = True
            if self.archive is not None:
                self._start_archive()
            if self.demo:
                self._load_demo_data()
            self._start_starter()
            hub_settings = hubconfig.HubSettings(
                port=s["port"], hub_port=free_port(), proxy_api_port=free_port(),
                data_port=free_port(), jobs_port=free_port(), viewer_port=free_port(),
            )
            hub_config = hubconfig.write_config(home, hub_settings)
            if self.multi_user:  # what up wrote (demo projects, configs) is the services'
                home.claim(self.service.uid, self.service.gid, skip=[home.orthanc_dir / "db"])
            url = f"http://127.0.0.1:{s['port']}"
            env = dict(os.environ)
            env.pop("JUPYTERHUB_API_TOKEN", None)
            self.hub = Managed(
                "JupyterHub", [hubconfig.venv_bin("jupyterhub"), "-f", str(hub_config)],
                log_path=home.path / "logs" / "jupyterhub.log",
                ready=lambda: httpx.get(f"{url}/hub/api/", timeout=2).status_code == 200,
                env=env, cwd=home.hub_dir,
            )
            self.hub.start()
            self.hub.wait_ready(90)
        except BaseException:
            self.stop()
            raise
        run = {
            "pid": os.getpid(),
            "mode": s["mode"],
            "url": url,
            "hub_api": f"http://127.0.0.1:{hub_settings.hub_port}/hub/api",
            "archive": "external" if self.external else "embedded",
            "archive_url": self.endpoint.orthanc,  # the embedded Orthanc's REST root
            "dicomweb_url": self.endpoint.dicomweb,
            "gateway_url": f"http://127.0.0.1:{hub_settings.data_port}/services/data/dicom-web",
            "jobs_url": f"http://127.0.0.1:{hub_settings.jobs_port}/services/jobs",
            "viewer_url": f"{url}/services/viewer/",
            "dicom_port": s["dicom_port"],
            "pids": self._pids(),
        }
        write_private(home.run_file, json.dumps(run, indent=2) + "\n")
        self._banner(url, admin_password, demo_logins)
        return run

    def _pids(self) -> dict:
        return {"archive": self.archive.pid if self.archive else None, "hub": self.hub.pid,
                "job_starter": self.starter.pid if self.starter else None}

    # -- a multi-user site ------------------------------------------------------
    def _prepare_site(self) -> None:
        """What users' processes need, reachable by their accounts, and the
        spool folders they write in (each run or cluster folder is its user's)."""
        from .accounts import check_reachable
        from .services.jobs.workflows import project_workflows
        from .spawner import tutorials_dir

        home = self.home
        spool = home.spool_dir()
        for d in (spool, home.runs_dir(), home.clusters_dir(), home.runtime_dir()):
            make_dir(d, 0o711)
            st = d.stat()
            if st.st_uid != 0:
                os.chown(d, 0, 0)
            os.chmod(d, 0o711)  # passable, not listable: nobody sees others' folders
        make_dir(home.homes_dir(), 0o755)
        from .accounts import SOCKET_PATH_MAX, _KERNEL_SOCKET

        longest = len(f"{home.runtime_dir()}/{2**32 - 1}{_KERNEL_SOCKET}")
        if longest > SOCKET_PATH_MAX:
            raise StackError(
                f"kernels' sockets under {home.runtime_dir()} would be up to {longest} bytes "
                f"long, over the {SOCKET_PATH_MAX} a Unix socket's path may have: set a "
                "shorter c.Site.spool_dir in imaginghub_config.py")
        need = {
            "Python (run)": sys.executable,
            "the Python environment": sys.prefix,
            "Python's standard library": os.path.dirname(os.__file__),
            "imaginghub's code": Path(__file__).parent.parent,
            "the tutorials": tutorials_dir(),
            "the workflows": project_workflows(),
            "the kernelspec and JupyterLab settings": hubconfig.data_dir(home),
            "the hub's proxy (run)": hubconfig.find_proxy(),
            "the spool folder (pass)": spool,
            "the users' homes (pass)": home.homes_dir(),
        }
        from .services.jobs.config import JobService

        for folder in JobService(config=home.config()).workflow_dirs:
            need[f"workflow folder {folder}"] = folder
        check_reachable(need)

    def _reconcile_accounts(self, registry: Registry) -> None:
        """Every registered user has their account; accounts of users removed
        from the registry are locked (their homes stay)."""
        from .accounts import AccountError, locked

        accounts = self.home.accounts()
        users = registry.load()
        for name in sorted(users):
            try:
                accounts.ensure(name)
            except AccountError as e:
                self.say(f"warning: {name} cannot log in: {e}")
        for name, account in accounts.ours().items():
            if name not in users and not locked(account.name):
                accounts.lock(name)
                log.info("locked %s (%s is no longer a user of this hub)", account.name, name)

    def _start_starter(self) -> None:
        """The job starter (jobs run as their users), with nothing secret in its
        environment: a forked job shows its starter's environment in /proc."""
        from .services.jobs.runner import base_environment, starter_socket

        home = self.home
        make_dir(home.jobs_dir)
        if not self.multi_user:
            make_dir(home.runs_dir())
            make_dir(home.runtime_dir())
        sock = starter_socket(home)
        argv = [sys.executable, "-m", "imaginghub.hub.services.jobs.starter",
                "--socket", str(sock), "--runs", str(home.runs_dir()),
                "--runtime", str(home.runtime_dir()), "--home", str(home.path)]
        if self.multi_user:
            argv += ["--multi-user", "--service-uid", str(self.service.uid),
                     "--service-gid", str(self.service.gid)]

        def ready() -> bool:
            import socket

            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            return True

        self.starter = Managed("the job starter", argv,
                               log_path=home.path / "logs" / "job-starter.log", ready=ready,
                               env=base_environment({"PYTHONUNBUFFERED": "1"}),
                               cwd=home.jobs_dir)
        self.starter.start()
        self.starter.wait_ready(60)

    def _demo_users(self, registry: Registry) -> dict:
        """alice (project oncology) and bob (project neuro); their passwords are
        generated once and kept in secrets/demo_logins.json (0600)."""
        path = self.home.secrets_dir / "demo_logins.json"
        logins = json.loads(path.read_text()) if path.exists() else {}
        for name, project in (("alice", "oncology"), ("bob", "neuro")):
            user, password = registry.add(name, projects=[project], exist_ok=True)
            if password:
                logins[name] = password
        write_private(path, json.dumps(logins, indent=2) + "\n")
        return logins

    def _banner(self, url: str, admin_password: str | None, demo_logins: dict) -> None:
        self.say()
        self.say(f"imaginghub is running at {url}")
        if self.multi_user:
            self.say(f"  multi-user: each user runs as their own Unix account (homes in "
                     f"{self.home.homes_dir()}), the services as {self.service.name}"
                     + ("; the archive is the site's own: only the data service holds its "
                        "credentials" if self.external else
                        "; the archive's ports are closed to users"))
        self.say(f"  state directory: {self.home.path}")
        if self.external:
            self.say(f"  archive: the site's own at {self.endpoint.dicomweb}")
        from .services.federation.commands import roles

        for line in roles(self.home):
            self.say(f"  federation: {line}")
        if admin_password:
            self.say(f"  admin login: admin / {admin_password}")
            self.say("  (shown once; 'imaginghub users passwd admin' sets a new one)")
        for name, password in sorted(demo_logins.items()):
            self.say(f"  demo login: {name} / {password}")
        self.say("Press Ctrl-C to stop.")

    # -- the archive ------------------------------------------------------------
    def _archive_endpoint(self):
        """The archive the data service will talk to; the site's own is
        checked now (its password file, that it answers QIDO-RS with those
        credentials), so that a mistake stops ``up`` with what to fix."""
        from .services.data.config import DataService, archive_endpoint

        endpoint = archive_endpoint(self.home)
        if not self.external:
            return endpoint
        conf = DataService(config=self.home.config())
        if self.multi_user and conf.archive_password_file:
            _check_readable_by(Path(conf.archive_password_file), self.service)
        endpoint.probe()
        return endpoint

    def _start_archive(self) -> None:
        self.archive.start()
        self.archive.wait_ready(60)

    def _load_demo_data(self) -> None:
        """The demo data set, when the archive has no study yet."""
        from . import demo

        e = self.endpoint
        with httpx.Client(auth=e.auth, timeout=30, verify=e.tls()) as c:
            r = c.get(f"{e.dicomweb}/studies", params={"limit": 1},
                      headers={"Accept": "application/dicom+json"})
        if r.status_code == 200 and r.content and r.json():
            log.info("the archive holds studies already: no demo data loaded")
        else:
            demo.load(e.dicomweb, e.auth, out=self.out, verify=e.tls(), keys=self.demo_series)
        demo.assign_projects(self.store())

    def store(self):
        """The data service's database (the service itself runs under the hub)."""
        from .services.data.__main__ import db_url
        from .services.data.db import Store

        (self.home.path / "data").mkdir(exist_ok=True)
        return Store(db_url(self.home))

    # -- run ------------------------------------------------------------------
    def watch(self, interval: float = 1.0) -> int:
        """Watch the children until asked to stop; restart a crashed archive.
        Returns the exit status for the command."""
        while not self._stop.wait(interval):
            if not self.hub.alive():
                self.say(f"JupyterHub stopped unexpectedly (exit code {self.hub.proc.returncode}); "
                         f"stopping the workspace. Last log lines:\n{self.hub.tail()}")
                return 1
            if self.archive is not None and not self.archive.alive():
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < 60] + [now]
                code = self.archive.proc.returncode
                if len(self._restarts) > MAX_RESTARTS_PER_MINUTE:
                    self.say(f"the archive (Orthanc) keeps stopping (exit code {code}); "
                             f"stopping the workspace. Last log lines:\n{self.archive.tail()}")
                    return 1
                self.say(f"the archive (Orthanc) stopped unexpectedly (exit code {code}); "
                         "restarting it")
                try:
                    self._start_archive()
                except StackError as e:
                    self.say(str(e))
                    return 1
                self._update_run_pids()
                self.say("the archive is back")
            if self.starter is not None and not self.starter.alive():
                # running jobs go on (sessions of their own); the job service
                # reconnects, and queued jobs wait until the starter is back
                self.say(f"the job starter stopped (exit code {self.starter.proc.returncode});"
                         " restarting it")
                try:
                    self.starter.start()
                    self.starter.wait_ready(60)
                except StackError as e:
                    self.say(str(e))
                    return 1
                self._update_run_pids()
        return 0

    def _update_run_pids(self) -> None:
        try:
            run = json.loads(self.home.run_file.read_text())
        except (OSError, json.JSONDecodeError):
            return
        run["pids"] = self._pids()
        write_private(self.home.run_file, json.dumps(run, indent=2) + "\n")

    def request_stop(self, *_):
        self._stop.set()

    def stop(self) -> None:
        """Stop the hub (which stops the users' servers and its proxy), then the
        archive, then anything they left behind."""
        import psutil

        try:
            leftovers = [p.pid for p in psutil.Process().children(recursive=True)]
        except psutil.Error:
            leftovers = []
        if self.hub is not None:
            self.hub.stop(timeout=20)
        if self.starter is not None:
            self.starter.stop(timeout=10)
        if self.archive is not None:
            self.archive.stop(timeout=20)
        kill_tree(leftovers)
        # Jobs run in sessions of their own, so that a restarted job service
        # adopts them; they end with the workspace (and are marked interrupted
        # at the next start).
        kill_tree(_processes_in(self.home.runs_dir()))
        if self._guarded:
            portguard.remove(self.home.site_id())
            self._guarded = False
        try:
            run = json.loads(self.home.run_file.read_text())
            if run.get("pid") == os.getpid():
                self.home.run_file.unlink()
        except (OSError, json.JSONDecodeError):
            pass


def _check_readable_by(path: Path, account) -> None:
    """The service ``account`` can read ``path`` (by owner or group)."""
    st = path.stat()
    if not ((st.st_uid == account.uid and st.st_mode & 0o400)
            or (st.st_gid in account.groups() and st.st_mode & 0o040)):
        raise ConfigError(
            f"{path} (c.DataService.archive_password_file) cannot be read by the service "
            f"account {account.name}, as which the data service runs: run "
            f"'chgrp {account.name} {path}; chmod 640 {path}'")


def _me() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _processes_in(folder) -> list[int]:
    """Pids of processes whose working directory is inside ``folder``."""
    import psutil

    prefix = str(folder) + os.sep
    found = []
    for p in psutil.process_iter(["cwd"]):
        if (p.info["cwd"] or "").startswith(prefix) and p.pid != os.getpid():
            found.append(p.pid)
    return found


def run_foreground(stack: Stack) -> int:
    """``imaginghub up``: start, watch until Ctrl-C or SIGTERM, stop.

    A signal during start-up interrupts it (what was started is stopped);
    afterwards it asks the watch loop to stop everything in order."""
    def interrupt(*_):
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    stack.start()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stack.request_stop)
    status = 0
    try:
        status = stack.watch()
    finally:
        stack.say("stopping the workspace ...")
        stack.stop()
        stack.say("stopped.")
    return status
