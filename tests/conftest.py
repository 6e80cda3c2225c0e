"""Session fixtures: a real Orthanc on free ports, and the real stack
(`imaginghub up --demo`) on a temporary home.

The tests run as root (CI does), so every stack is a multi-user site: real
Unix accounts for its users, the service account, the archive's ports
closed by nftables. Stacks live under one folder that accounts can pass
(pytest's own temporary folders are private to root), each with an account
prefix of its own (two stacks run at once, both with alice and bob); their
accounts and firewall tables are removed when they stop, and whatever a
killed run left is removed when the next session starts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from imaginghub.hub import orthanc as orthanc_mod
from imaginghub.hub.state import Home, free_port
from imaginghub.kernels.dicomweb import PACS

REPO = Path(__file__).resolve().parents[1]
IMAGINGHUB = str(Path(sys.executable).parent / "imaginghub")
# The tests' workflows, copied where the job service's account can read them.
TEST_WORKFLOWS = Path("/tmp/iht") / "workflows"
MULTI_USER = os.geteuid() == 0
TEST_PREFIX = "iht"  # every test stack's accounts start with it: iht + a letter + "-"
_prefixes = iter("abcdefghijklmnopqrstuvwxyz")
# The session's stacks trust a checked token this long (the default is 10 s):
# tests of revoked tokens wait for it to pass.
AUTH_CACHE = 2


def site_root() -> Path:
    """The folder of this session's stacks: passable by accounts (0711), and
    short (kernels' socket paths must stay under 107 bytes)."""
    root = Path("/tmp/iht")
    root.mkdir(mode=0o711, exist_ok=True)
    os.chmod(root, 0o711)
    return root


def remove_leftovers(folders: bool = True) -> None:
    """Accounts and firewall tables of test stacks that a killed run left
    (and, with ``folders``, the folders of an earlier session's stacks)."""
    import pwd

    from imaginghub.hub import portguard
    from imaginghub.hub.accounts import kill_processes_of

    import shutil

    root = Path("/tmp/iht")
    live = set()  # the sites of stacks that run (another pytest session's): kept
    for old in root.glob("*-*"):
        home = Home(old / "home")
        if home.read_run() is not None:
            live.add(home.load_state().get("site_id"))
        elif folders and old.is_dir():  # an earlier session's stack
            shutil.rmtree(old, ignore_errors=True)
    if not MULTI_USER:
        return
    portguard.remove_stale()
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(TEST_PREFIX) and entry.pw_gecos.startswith(
                "imaginghub site ") and entry.pw_gecos.split()[2] not in live:
            kill_processes_of(entry.pw_uid)
            subprocess.run(["userdel", "--remove", "--force", entry.pw_name],
                           capture_output=True)


def new_home(name: str, config: dict[str, dict] | None = None, extra: str = "") -> Path:
    """A fresh state directory for a stack, with its own account prefix and
    homes folder, and ``config`` (``{"Class": {"setting": value}}``) and
    ``extra`` lines in its imaginghub_config.py."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix=f"{name[:6]}-", dir=site_root()))
    os.chmod(base, 0o711)
    home = base / "home"
    home.mkdir()
    sections = {"Site": {"homes_dir": str(base / "homes"),
                         "account_prefix": f"{TEST_PREFIX}{next(_prefixes)}-"}}
    for cls, values in (config or {}).items():
        sections.setdefault(cls, {}).update(values)
    write_config(home, sections, extra)
    (base / "homes").mkdir(mode=0o755)
    shutil.copytree(REPO / "tests" / "jobs" / "workflows", TEST_WORKFLOWS, dirs_exist_ok=True)
    return home


def private_folder(name: str) -> Path:
    """A folder of this session's stacks for what is not a state directory
    (accounts may pass it, as they may the site's /etc)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f"{name[:6]}-", dir=site_root()))
    os.chmod(folder, 0o711)
    return folder


def write_config(home: Path, sections: dict[str, dict], extra: str = "") -> None:
    """The site's imaginghub_config.py: ``sections`` and any ``extra`` lines."""
    from imaginghub.hub import config

    config.write_settings(Home(home).config_file, sections, extra)


def remove_site(home: Path) -> None:
    """The accounts of a stopped stack, and its folders."""
    import shutil

    h = Home(home)
    if MULTI_USER and h.state_file.exists():
        accounts = h.accounts()
        for name in accounts.ours():
            accounts.remove(name)
    shutil.rmtree(h.spool_dir(), ignore_errors=True)


# Fixtures that start real services: a test that uses one (directly or
# through another fixture) is marked ``stack``; ``make test-fast`` runs the rest.
SERVICE_FIXTURES = {"archive", "main_stack", "data_stack", "postgres", "browser", "kube",
                    "any_archive_stack"}


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """A real Kubernetes API server (see kube_support.py)."""
    from kube_support import start_kube

    yield from start_kube(tmp_path_factory)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.stack)


def pytest_collection_finish(session):
    """The wheel test's venv is made while the other tests run (see
    test_wheel_install.py), when that test is selected."""
    for item in session.items:
        if item.name == "test_a_wheel_in_a_clean_venv_runs_the_workspace":
            site_root()
            item.module.start_preparing()
            return


@pytest.fixture(scope="session", autouse=True)
def _clean_machine():
    remove_leftovers()
    site_root()
    yield
    remove_leftovers(folders=False)  # kept for a look after a failure


class Archive:
    def __init__(self, settings: orthanc_mod.OrthancSettings):
        self.settings = settings
        self.url = settings.url
        self.dicomweb_url = settings.dicomweb_url
        self.auth = (orthanc_mod.ARCHIVE_USER, settings.password)

    def pacs(self, **kw) -> PACS:
        return PACS(self.dicomweb_url, username=self.auth[0], password=self.auth[1], **kw)

    def rest(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=30)


@pytest.fixture(scope="session")
def archive(tmp_path_factory):
    """A real Orthanc with the DICOMweb plugin, configured as `up` does it."""
    d = tmp_path_factory.mktemp("orthanc")
    settings = orthanc_mod.OrthancSettings(
        http_port=free_port(), dicom_port=free_port(), password="test-archive-password",
    )
    a = Archive(settings)
    proc = orthanc_mod.managed(settings, d, d / "orthanc.log")
    proc.start()
    try:
        proc.wait_ready(60)
        yield a
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def any_archive_stack(tmp_path_factory):
    """The stack with an archive of the site's own (c.DataService.archive_url):
    a real Orthanc that ``up`` did not start, reached as any DICOMweb archive
    (QIDO-RS feed, no file access, credentials from a password file)."""
    from imaginghub.hub.accounts import ensure_service_account

    if MULTI_USER:
        ensure_service_account()  # the password file's group
    archive, orthanc_proc = start_orthanc(tmp_path_factory.mktemp("site-archive"),
                                          "the-sites-own-archive-password")
    try:
        home = new_home("anyarc", {**any_archive_config(private_folder("anysec"), archive),
                                   "HubService": {"auth_cache_seconds": AUTH_CACHE}})
        with running_stack(home, "--demo", archive=archive) as s:
            s.archive_process = orthanc_proc  # the tests may stop and start it
            yield s
    finally:
        orthanc_proc.stop()


def as_account(account: str | None) -> list[str]:
    """The start of a command line that runs as ``account`` (None: as we are)."""
    if account is None:
        return []
    import pwd

    entry = pwd.getpwnam(account)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
            "--", "env", f"HOME={entry.pw_dir}", f"USER={account}", f"LOGNAME={account}"]


class RunningStack:
    def __init__(self, home: Path, proc: subprocess.Popen, output: Path,
                 account: str | None = None, archive: Archive | None = None):
        self.home = Home(home)
        self.proc = proc
        self.output = output
        self.account = account  # the stack runs as this account (None: as the tests)
        self._archive = archive  # the site's own archive (c.DataService.archive_url)
        self.run = json.loads((home / "run.json").read_text())
        self.url = self.run["url"]

    def cli(self, *args, check=True) -> subprocess.CompletedProcess:
        r = subprocess.run([*as_account(self.account), IMAGINGHUB, "--home",
                            str(self.home.path), *args],
                           capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"imaginghub {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return r

    def token(self, user: str) -> str:
        return self.cli("token", user).stdout.strip()

    def user_home(self, user: str) -> Path:
        """Where ``user``'s server, kernels and jobs have their home."""
        if self.home.multi_user:
            return Path(self.home.accounts().ensure(user).home)
        return self.home.users_dir / user

    def give(self, user: str, path: Path) -> Path:
        """Make a file the test wrote in ``user``'s home theirs."""
        if self.home.multi_user:
            a = self.home.accounts().ensure(user)
            os.chown(path, a.uid, a.gid)
        return path

    def archive(self) -> Archive:
        """The archive, for what the tests do behind the gateway's back."""
        if self._archive is not None:
            return self._archive
        return Archive(orthanc_mod.OrthancSettings(
            http_port=int(self.run["archive_url"].rsplit(":", 1)[1]),
            dicom_port=self.run["dicom_port"],
            password=self.home.secret("archive_password"),
        ))


def start_orthanc(folder: Path, password: str) -> tuple[Archive, object]:
    """A real Orthanc of its own (as ``up`` configures one), started and
    ready: (the archive, its process)."""
    settings = orthanc_mod.OrthancSettings(http_port=free_port(), dicom_port=free_port(),
                                           password=password)
    proc = orthanc_mod.managed(settings, folder, folder / "orthanc.log")
    proc.start()
    try:
        proc.wait_ready(60)
    except BaseException:
        proc.stop()
        raise
    return Archive(settings), proc


def any_archive_config(base: Path, archive: Archive) -> dict:
    """The settings of a site whose archive is ``archive`` reached as any
    DICOMweb archive, its password in a file only the service account may
    read (root:imaginghub 0640, as a site admin writes it)."""
    secret = base / "archive-password"
    secret.write_text(archive.auth[1] + "\n")
    os.chmod(secret, 0o640)
    if MULTI_USER:
        import grp

        os.chown(secret, 0, grp.getgrnam("imaginghub").gr_gid)
    return {"DataService": {"archive_url": archive.dicomweb_url,
                            "archive_username": archive.auth[0],
                            "archive_password_file": str(secret)},
            "QidoFeed": {"interval": 1.0}}


def start_stack(home: Path, *extra, port: int | None = None, timeout: float = 180,
                account: str | None = None):
    """Start `imaginghub up` as a child (as ``account``, if given); return
    (proc, output path) once ready (or once it exited)."""
    port = port or free_port()
    output = home.parent / f"{home.name}-up-{int(time.time() * 1000)}.log"
    out = open(output, "w")
    proc = subprocess.Popen(
        [*as_account(account), IMAGINGHUB, "--home", str(home), "up", "--port", str(port),
         "--dicom-port", str(free_port()), *extra],
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None or "Press Ctrl-C to stop." in output.read_text():
            return proc, output
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"imaginghub up did not start in {timeout} s:\n{output.read_text()}")


@contextlib.contextmanager
def running_stack(home: Path, *extra, archive: Archive | None = None):
    """`imaginghub up` on ``home`` while the block runs; then Ctrl-C, which
    must end it cleanly, leaving no process behind; then the site's accounts
    go."""
    proc, output = start_stack(home, *extra)
    if proc.poll() is not None:
        remove_site(home)
        raise AssertionError(f"imaginghub up failed:\n{output.read_text()}")
    try:
        yield RunningStack(home, proc, output, archive=archive)
    finally:
        code = stop_stack(proc)
        leftovers = processes_using(home)
        remove_site(home)
        assert code == 0, output.read_text()
        assert not leftovers, f"processes left behind after Ctrl-C: {leftovers}"


@contextlib.contextmanager
def running_stacks(homes: list[Path], *extra):
    """Several ``imaginghub up`` at once (their starts overlap, which is
    quicker than one after the other on two cores); stopped and checked as
    :func:`running_stack` does."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(homes)) as pool:
        started = list(pool.map(lambda h: start_stack(h, *extra), homes))
    try:
        for home, (proc, output) in zip(homes, started):
            if proc.poll() is not None:
                raise AssertionError(f"imaginghub up failed:\n{output.read_text()}")
        yield [RunningStack(home, proc, output) for home, (proc, output) in zip(homes, started)]
    finally:
        problems = []
        for proc, _ in started:  # all stop at once, then each is waited for
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for home, (proc, output) in zip(homes, started):
            code = stop_stack(proc, signalled=True)
            leftovers = processes_using(home)
            remove_site(home)
            if code != 0 or leftovers:
                problems.append(f"{home}: exit {code}, left behind {leftovers}")
        assert not problems, problems


def stop_stack(proc: subprocess.Popen, timeout: float = 60, signalled: bool = False) -> int:
    """Ctrl-C (unless ``signalled`` already) and the exit code."""
    if proc.poll() is None:
        if not signalled:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    return proc.returncode


def processes_using(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path`` (orphans)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            env = p.info["environ"] or {}
        except (psutil.Error, TypeError):
            continue
        if p.pid == os.getpid():
            continue
        if str(path) in cmd or str(path) in env.get("JUPYTERHUB_SERVICE_PREFIX", "") \
                or str(path) in env.get("HOME", ""):
            found.append(f"{p.pid}: {cmd}")
    return found


@pytest.fixture(scope="session")
def stack(main_stack):
    """The real embedded stack with demo data, started once per session."""
    return main_stack


@pytest.fixture(scope="session")
def idc_import(main_stack) -> str:
    """IDC's index of about a million series imported into project
    ``idcdemo`` of the main stack, once per session (about 14 s); what the
    command printed."""
    return main_stack.cli("catalog", "import-idc", "--project", "idcdemo").stdout


@pytest.fixture(scope="session")
def main_stack():
    # the job service also offers the tests' workflows (tests/jobs/workflows)
    home = new_home("stack", {"JobService": {"workflow_dirs": [str(TEST_WORKFLOWS)]},
                              "HubService": {"auth_cache_seconds": AUTH_CACHE}},
                    # another program's class, passed to the hub (test_config.py)
                    'c.Spawner.environment.update({"IMAGINGHUB_TEST_SITE": '
                    '"from-the-site-config"})\n')
    # also a federation's coordinator and a site (of its own coordinator, until
    # test_cli.py points it at another): their APIs are hub services
    # (tests/federation/test_api.py, test_cli.py)
    from imaginghub.hub.services.federation.commands import init_coordinator, init_site

    port = free_port()
    coord = init_coordinator(Home(home), "session-hub", fleet_port=port)
    init_site(Home(home), "session-site", coordinator=f"127.0.0.1:{port}",
              ca=coord.pki / "ca.crt")
    with running_stack(home, "--demo") as s:
        yield s


class Postgres:
    """A throwaway PostgreSQL server from Debian's packages, on loopback."""

    def __init__(self, root: Path):
        import glob
        import shutil

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed: 'make test' installs the "
                               "Debian package postgresql")
        self.bin = Path(bins[-1]).parent
        self.data = root / "pgdata"
        self.sock = root / "pgsock"
        self.port = free_port()
        self.as_postgres = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres",
                                "--init-groups", "--"]
            root.chmod(0o755)
        self.data.mkdir()
        self.sock.mkdir()
        if self.as_postgres:
            shutil.chown(self.data, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")
        self._run(self.bin / "initdb", "-D", self.data, "-A", "trust", "-U", "imaginghub",
                  "--no-sync")
        self._run(self.bin / "pg_ctl", "-D", self.data, "-w", "-l", self.sock / "pg.log", "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.sock} -F", "start")

    def _run(self, *args):
        r = subprocess.run([*self.as_postgres, *map(str, args)], capture_output=True,
                           text=True, timeout=120, cwd="/")
        if r.returncode:
            raise RuntimeError(f"{args[0]} failed: {r.stdout}{r.stderr}")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=imaginghub dbname=postgres",
                             autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://imaginghub@127.0.0.1:{self.port}/{name}"

    def stop(self):
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "stop")


@pytest.fixture(scope="session")
def postgres():
    import shutil
    import tempfile

    # its own folder under /tmp: pytest's temp folders are closed to the
    # postgres user that the server runs as
    root = Path(tempfile.mkdtemp(prefix="imaginghub-pg-"))
    pg = Postgres(root)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", params=["sqlite", "postgresql", "any-archive"])
def data_stack(request, tmp_path_factory):
    """The stack with the data service's database on SQLite (the session's
    stack), on a real PostgreSQL (a second stack), and with an archive of
    the site's own reached as any DICOMweb archive (a third)."""
    if request.param in ("sqlite", "any-archive"):
        yield request.getfixturevalue(
            "main_stack" if request.param == "sqlite" else "any_archive_stack")
        return
    pg = request.getfixturevalue("postgres")
    home = new_home("pgstack", {"DataService": {"db_url": pg.create_database("imaginghub_data")},
                                "HubService": {"auth_cache_seconds": AUTH_CACHE}})
    with running_stack(home, "--demo") as s:
        assert not (home / "data" / "data.sqlite").exists()  # the mapping lives in PostgreSQL
        yield s


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium from Debian's package (see tests/browser_support.py)."""
    from browser_support import launch
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()
