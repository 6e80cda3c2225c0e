"""The state directory of one site: configuration, state, generated secrets, data.

Layout under the home (``--home``, ``$IMAGINGHUB_HOME``, else
``/var/lib/imaginghub`` for root (a multi-user site) and
``~/.local/share/imaginghub`` for anyone else)::

    imaginghub_config.py     the site's configuration (:mod:`.config`), written
                             commented out on the first ``up``, then the admin's
    state.json               what the machine chose: ports, the site's id, its mode
    modalities.json          the archive's DICOM peers (``imaginghub modalities``)
    users.json               the user registry: names, projects, password hashes (0600)
    secrets/                 generated once, 0600: cookie secret, tokens, archive password
    orthanc/orthanc.json     the archive's configuration, written at every ``up`` (0600)
    orthanc/db/              the archive's storage and index
    hub/jupyterhub_config.py the hub's configuration, written at every ``up``
    hub/jupyterhub.sqlite    the hub's database
    users/NAME/              the home of each user's server (single-user mode)
    jobs/                    the job service: its database, kept notebooks (and the
                             runs, in single-user mode)
    run.json                 written by a running ``up``: pids and URLs (0600)

In multi-user mode the whole directory belongs to the service account
(0700) and nothing a user's process needs lives in it: users' homes are in
``homes_dir`` (default ``/home``), and job runs, Dask clusters' folders and
kernels' sockets in the spool directory (``spool_dir``, default
``/var/spool/imaginghub``; see :meth:`Home.spool_dir`).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

from traitlets import Unicode
from traitlets.config import Config, Configurable

from .errors import ConfigError

ENV_HOME = "IMAGINGHUB_HOME"
# A multi-user site's state (root's default), and where job runs and Dask
# clusters' folders go for it.
SYSTEM_HOME = Path("/var/lib/imaginghub")
SYSTEM_SPOOL = Path("/var/spool/imaginghub")
# Where root's state lived before it moved to SYSTEM_HOME.
OLD_ROOT_HOME = Path("/root/.local/share/imaginghub")

MULTI_USER = "multi-user"
SINGLE_USER = "single-user"


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    if os.geteuid() == 0:
        return SYSTEM_HOME
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imaginghub"


def migrate_root_home() -> str | None:
    """Move root's state from its old place (``~/.local/share/imaginghub``,
    private to root) to :data:`SYSTEM_HOME`; a sentence saying so, or None."""
    if os.geteuid() != 0 or os.environ.get(ENV_HOME):
        return None
    if not (OLD_ROOT_HOME / "settings.json").exists() or SYSTEM_HOME.exists():
        return None
    SYSTEM_HOME.parent.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.move(str(OLD_ROOT_HOME), str(SYSTEM_HOME))
    return (f"moved the state directory from {OLD_ROOT_HOME} to {SYSTEM_HOME} (a multi-user "
            "site keeps its state there, owned by the service account)")


def _same_owner(fd: int, path: Path) -> None:
    """Give a new file (``fd``, to become ``path``) the owner of the file it
    replaces, else of its folder: as root (the CLI, ``up``), a file of the
    service account's state stays the service account's."""
    if os.geteuid() != 0:
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        st = path.parent.stat()
    os.fchown(fd, st.st_uid, st.st_gid)


def make_dir(path: Path, mode: int = 0o700) -> Path:
    """``mkdir -p`` whose new folders belong to the owner of the folder above
    (see :func:`_same_owner`) and have ``mode``."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode, exist_ok=True)
        os.chmod(d, mode)
        if os.geteuid() == 0:
            st = d.parent.stat()
            os.chown(d, st.st_uid, st.st_gid)
    return path


def write_private(path: Path, text: str | bytes, *, owner: tuple[int, int] | None = None,
                  mode: int = 0o600) -> None:
    """Write ``text`` (or bytes) to ``path`` readable by the owner only,
    atomically.

    The file is created 0600 before any byte is written, and replaces the old
    one only when complete: a crash never leaves a half-written secret. Its
    owner is that of the file it replaces (or of its folder), or ``owner``
    (uid, gid); ``mode`` is applied once the owner is set.
    """
    make_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        else:
            _same_owner(fd, path)
        if mode != 0o600:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on ``host:port`` or the port cannot be bound."""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket() as s:
        # as the servers bind: a connection of a stopped one in TIME_WAIT is no obstacle
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Site(Configurable):
    """Where a multi-user site keeps its users' accounts and what their
    processes write (the state directory itself is the service account's)."""

    account_prefix = Unicode("", help="""
        Put before each hub user's name to make their Unix account's name
        (alice runs as PREFIX + alice). With a prefix, accounts of the hub
        cannot collide with the machine's own; names stay within 32
        characters.""").tag(config=True)
    homes_dir = Unicode("/home", help="""
        Where the accounts of hub users get their homes (0700, one per
        user).""").tag(config=True)
    spool_dir = Unicode("", help="""
        Job runs, Dask clusters' folders and kernels' sockets of a multi-user
        site: passable by users, each run's or cluster's folder its user's.
        Empty: /var/spool/imaginghub for the system's state directory, else
        the state directory's path + '.spool'. Keep it short: a kernel's
        socket path must stay under 107 bytes.""").tag(config=True)


class Home:
    """Paths, configuration, state and secrets of one state directory."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).expanduser().resolve() if path else default_home().resolve()
        self._config: Config | None = None

    # paths -----------------------------------------------------------------
    @property
    def secrets_dir(self) -> Path:
        return self.path / "secrets"

    @property
    def orthanc_dir(self) -> Path:
        return self.path / "orthanc"

    @property
    def hub_dir(self) -> Path:
        return self.path / "hub"

    @property
    def users_dir(self) -> Path:
        return self.path / "users"

    @property
    def jupyter_data_dir(self) -> Path:
        """Added to the servers' JUPYTER_PATH: holds the imaging kernelspec."""
        return self.path / "share" / "jupyter"

    @property
    def run_file(self) -> Path:
        return self.path / "run.json"

    @property
    def config_file(self) -> Path:
        return self.path / "imaginghub_config.py"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    @property
    def modalities_file(self) -> Path:
        return self.path / "modalities.json"

    @property
    def users_file(self) -> Path:
        return self.path / "users.json"

    @property
    def jobs_dir(self) -> Path:
        return self.path / "jobs"

    def create(self) -> None:
        for d in (self.path, self.secrets_dir, self.orthanc_dir, self.hub_dir, self.users_dir,
                  self.path / "logs"):
            make_dir(d)
        os.chmod(self.path, 0o700)
        os.chmod(self.secrets_dir, 0o700)

    # the site: one mode, its accounts, where users' things live -----------------
    @property
    def mode(self) -> str:
        """``multi-user`` (``up`` runs as root: every user has an account of their
        own) or ``single-user`` (everyone runs as the invoking account); what
        the last ``up`` recorded, else what this process would start."""
        return self.load_state().get("mode") or (MULTI_USER if os.geteuid() == 0
                                                  else SINGLE_USER)

    @property
    def multi_user(self) -> bool:
        return self.mode == MULTI_USER

    def site_id(self) -> str:
        """A random name of this site, chosen once (it marks the site's
        accounts and firewall rules)."""
        s = self.load_state()
        if not s.get("site_id"):
            s["site_id"] = secrets.token_hex(4)
            self.save_state(s)
        return s["site_id"]

    def spool_dir(self) -> Path:
        """Job runs, Dask clusters' folders and kernels' sockets of a
        multi-user site: outside the private state, traversable by users
        (each run or cluster folder is its user's): ``c.Site.spool_dir``;
        default ``/var/spool/imaginghub`` for the system's state directory,
        else ``<home>.spool`` beside it."""
        if self.site.spool_dir:
            return Path(self.site.spool_dir)
        if self.path == SYSTEM_HOME:
            return SYSTEM_SPOOL
        return self.path.with_name(self.path.name + ".spool")

    def homes_dir(self) -> Path:
        """Where a multi-user site's accounts get their homes (``c.Site.homes_dir``)."""
        return Path(self.site.homes_dir or "/home")

    def runs_dir(self) -> Path:
        """One folder per job run."""
        return self.spool_dir() / "jobs" if self.multi_user else self.jobs_dir / "runs"

    def clusters_dir(self) -> Path:
        """One working folder per running Dask cluster."""
        return (self.spool_dir() / "dask" if self.multi_user
                else self.path / "dask-gateway" / "clusters")

    def runtime_dir(self) -> Path:
        """Where each account's kernels keep their connection files and IPC
        sockets (a private folder per uid below it)."""
        return self.spool_dir() / "run" if self.multi_user else self.path / "run"

    def accounts(self):
        """The mapping of this site's hub users to Unix accounts."""
        from .accounts import Accounts

        return Accounts(self.site_id(), prefix=self.site.account_prefix,
                        homes_dir=self.homes_dir(), lock_path=self.path / "accounts.lock")

    def root_files(self) -> list[Path]:
        """The files that processes running as root execute (the site's
        configuration, the hub's and Dask Gateway's): root's, never the
        service account's, which could otherwise have its code run as root."""
        return [self.config_file, self.hub_dir / "jupyterhub_config.py",
                self.hub_dir / "dask_gateway_config.py"]

    def claim(self, uid: int, gid: int, *, skip=()) -> None:
        """Make the whole state directory ``uid``'s (the service account's),
        except the folders in ``skip`` that already belong to it and the
        :meth:`root_files`."""
        skip = {Path(p) for p in skip}
        keep = set(self.root_files())
        for root, dirs, files in os.walk(self.path):
            here = Path(root)
            for name in list(dirs):
                d = here / name
                if d in skip and d.stat().st_uid == uid:
                    dirs.remove(name)
            for p in [here, *(here / f for f in files if here / f not in keep)]:
                st = os.lstat(p)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(p, uid, gid)

    # secrets ---------------------------------------------------------------
    def secret(self, name: str, nbytes: int = 32) -> str:
        """The secret ``name``: generated on first use, then read back forever."""
        path = self.secrets_dir / name
        if path.exists():
            mode = path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(
                    f"{path} is readable by others (mode {mode:o}); "
                    f"run 'chmod 600 {path}' and start again"
                )
            value = path.read_text().strip()
            if value:
                return value
        value = secrets.token_hex(nbytes)
        write_private(path, value + "\n")
        return value

    # configuration and state -------------------------------------------------
    def config(self) -> Config:
        """The site's configuration (``imaginghub_config.py``), checked; read
        once per Home."""
        if self._config is None:
            from .config import site_config

            self._config = site_config(self)
        return self._config

    @property
    def site(self) -> Site:
        return Site(config=self.config())

    def load_state(self) -> dict:
        """What the machine chose (``state.json``): ports, the site's id, its mode."""
        return self._load_json(self.state_file)

    def save_state(self, state: dict) -> None:
        write_private(self.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")

    def load_modalities(self) -> dict:
        return self._load_json(self.modalities_file)

    def save_modalities(self, modalities: dict) -> None:
        write_private(self.modalities_file,
                      json.dumps(modalities, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def _load_json(path: Path) -> dict:
        if not path.exists():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix or remove it") from e

    # the running stack -----------------------------------------------------
    def read_run(self) -> dict | None:
        """What the running ``up`` wrote, or None when no live ``up`` owns this home."""
        if not self.run_file.exists():
            return None
        try:
            run = json.loads(self.run_file.read_text())
        except json.JSONDecodeError:
            return None
        pid = run.get("pid")
        if not pid or not _alive(pid):
            return None
        return run


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
