"""Unix accounts of a multi-user site (``imaginghub up`` run as root).

Every hub user runs as a Unix account of their own: their server, kernels and
terminals (the spawner), their jobs (the job starter) and their Dask
schedulers and workers (the Dask backend), all through :class:`Accounts`.

Naming scheme: the hub user NAME runs as the account ``PREFIX + NAME``,
where PREFIX is the site's ``c.Site.account_prefix`` (empty by default:
alice runs as ``alice``). An account is created with its home in the
site's ``c.Site.homes_dir`` (default ``/home``), mode 0700, a group of its own,
and the comment ``imaginghub site SITE user NAME``, which is how imaginghub
knows the accounts it made. A hub name is refused when its account name
would not fit ``useradd`` (at most 32 characters, lower-case letters, digits,
``.``, ``_``, ``-``, not starting with a digit or ``-``), when it is one of
the system's or imaginghub's own accounts (``root``, ``orthanc``,
``postgres``, ``imaginghub``, ...), or when an account of that name exists
already and was not made by imaginghub for this site.

The services (hub, proxy, data service, job service) and the archive run as
one service account, :data:`SERVICE_ACCOUNT`.
"""

from __future__ import annotations

import fcntl
import grp
import os
import pwd
import re
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

SERVICE_ACCOUNT = "imaginghub"
MAX_NAME = 32  # useradd's limit
# Accounts of a Debian system and of what imaginghub runs beside: never a hub user's.
RESERVED = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp",
    "proxy", "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "_apt",
    "messagebus", "sshd", "systemd-network", "systemd-resolve", "systemd-timesync",
    "systemd-coredump", "polkitd", "postgres", "orthanc", "imaginghub", "mysql", "redis",
    "operator", "adm", "staff", "sudo", "wheel", "users", "shadow", "utmp", "tty", "disk",
})
_ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]*$")
# The first uid an ordinary account gets (Debian's login.defs UID_MIN).
UID_MIN = 1000


class AccountError(ConfigError):
    """A hub name that cannot have an account, or an account that cannot be made."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> Account:
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)

    @classmethod
    def named(cls, name: str) -> Account:
        return cls.of(pwd.getpwnam(name))

    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if r.returncode:
        raise AccountError(f"{argv[0]} failed: {(r.stderr or r.stdout).strip()}")


def ensure_service_account() -> Account:
    """The service account, created as a system account when missing."""
    try:
        return Account.named(SERVICE_ACCOUNT)
    except KeyError:
        pass
    _need("useradd")
    _run("useradd", "--system", "--user-group", "--no-create-home",
         "--home-dir", "/var/lib/imaginghub", "--shell", "/usr/sbin/nologin",
         "--comment", "imaginghub services", SERVICE_ACCOUNT)
    return Account.named(SERVICE_ACCOUNT)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        raise AccountError(f"multi-user mode needs {tool} (Debian package passwd) to make "
                           "users' accounts: install it, or start imaginghub as an ordinary "
                           "user (single-user mode)")


class Accounts:
    """The mapping from hub users to Unix accounts of one site, and the
    accounts' life (made, locked, removed)."""

    def __init__(self, site_id: str, *, prefix: str = "", homes_dir: str | Path = "/home",
                 lock_path: str | Path | None = None):
        self.site_id = site_id
        self.prefix = prefix
        self.homes_dir = Path(homes_dir)
        self.lock_path = Path(lock_path) if lock_path else None
        if prefix and not _ACCOUNT.match(prefix):
            raise AccountError(f"account_prefix {prefix!r} cannot start a Unix account name: "
                               "use lower-case letters, digits, '.', '_' or '-'")

    # -- names ----------------------------------------------------------------
    def name(self, hub_name: str) -> str:
        """The account of ``hub_name``, or an AccountError that says why it
        cannot have one."""
        account = self.prefix + hub_name
        if len(account) > MAX_NAME:
            room = MAX_NAME - len(self.prefix)
            raise AccountError(
                f"user name {hub_name!r} is too long for a Unix account on this site: "
                f"{account!r} has {len(account)} characters, useradd takes at most {MAX_NAME}"
                + (f" (the site's account prefix {self.prefix!r} leaves {room})"
                   if self.prefix else "") + "; choose a shorter name")
        if not _ACCOUNT.match(account):
            raise AccountError(
                f"user name {hub_name!r} cannot be a Unix account: use lower-case letters, "
                "digits, '.', '_' or '-', starting with a letter")
        if account in RESERVED:
            raise AccountError(
                f"user name {hub_name!r} would run as the system account {account!r}: "
                "choose another name")
        try:
            existing = pwd.getpwnam(account)
        except KeyError:
            return account
        if not self.is_ours(existing):
            what = ("a system account" if existing.pw_uid < UID_MIN
                    else "an account that imaginghub did not make for this site")
            raise AccountError(
                f"user name {hub_name!r} would run as {account!r}, which is {what}: choose "
                "another name (or set a prefix for this site's accounts, "
                "c.Site.account_prefix in imaginghub_config.py)")
        return account

    def comment(self, hub_name: str) -> str:
        return f"imaginghub site {self.site_id} user {hub_name}"

    def is_ours(self, entry: pwd.struct_passwd) -> bool:
        return entry.pw_gecos.startswith(f"imaginghub site {self.site_id} user ")

    def ours(self) -> dict[str, Account]:
        """{hub name: account} of every account imaginghub made for this site."""
        out = {}
        mark = f"imaginghub site {self.site_id} user "
        for entry in pwd.getpwall():
            if entry.pw_gecos.startswith(mark):
                out[entry.pw_gecos[len(mark):]] = Account.of(entry)
        return out

    def lookup(self, hub_name: str) -> Account | None:
        try:
            entry = pwd.getpwnam(self.prefix + hub_name)
        except KeyError:
            return None
        return Account.of(entry) if self.is_ours(entry) else None

    # -- life ------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        """useradd and usermod take turns (concurrent spawns, the CLI)."""
        if self.lock_path is None:
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure(self, hub_name: str) -> Account:
        """The account of ``hub_name``, made if missing; its home is private
        (0700) and its own, and the account is unlocked."""
        account = self.name(hub_name)
        with self._locked():
            try:
                entry = pwd.getpwnam(account)
            except KeyError:
                entry = None
            if entry is None:
                _need("useradd")
                self.homes_dir.mkdir(parents=True, exist_ok=True)
                home = self.homes_dir / account
                _run("useradd", "--create-home", "--home-dir", str(home), "--user-group",
                     "--shell", "/bin/bash", "--comment", self.comment(hub_name), account)
                entry = pwd.getpwnam(account)
            elif locked(account):  # a removed user added again
                _run("usermod", "--expiredate", "", "--shell", "/bin/bash", account)
        a = Account.of(entry)
        home = Path(a.home)
        home.mkdir(parents=True, exist_ok=True)
        st = home.stat()
        if (st.st_uid, st.st_gid) != (a.uid, a.gid):
            os.chown(home, a.uid, a.gid)
        if st.st_mode & 0o777 != 0o700:
            os.chmod(home, 0o700)
        return a

    def lock(self, hub_name: str) -> Account | None:
        """Lock the account of a removed user: no password, no shell, expired;
        every process of it ends; the home stays for the admin."""
        a = self.lookup(hub_name)
        if a is None:
            return None
        with self._locked():
            _run("usermod", "--lock", "--expiredate", "1", "--shell", "/usr/sbin/nologin",
                 a.name)
        kill_processes_of(a.uid)
        return a

    def remove(self, hub_name: str) -> None:
        """Delete the account and its home (used by the tests' clean-up)."""
        a = self.lookup(hub_name)
        if a is None:
            return
        kill_processes_of(a.uid)
        with self._locked():
            subprocess.run(["userdel", "--remove", "--force", a.name], capture_output=True,
                           timeout=60)
        shutil.rmtree(a.home, ignore_errors=True)


def locked(account: str) -> bool:
    """Whether imaginghub locked the account (expired, no login shell)."""
    r = subprocess.run(["getent", "shadow", account], capture_output=True, text=True,
                       timeout=30)
    fields = r.stdout.strip().split(":")
    return r.returncode == 0 and len(fields) > 7 and fields[7] == "1"


def kill_processes_of(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a locked or removed account)."""
    import psutil

    for p in psutil.process_iter(["uids"]):
        try:
            if p.info["uids"] and p.info["uids"].real == uid:
                p.kill()
        except psutil.Error:
            continue


def group_id(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def become(account: Account, *, umask: int = 0o077) -> None:
    """Turn this process into ``account`` (groups, gid, uid) with ``umask``.
    For a child between fork and exec, or a forked job."""
    os.setgroups(account.groups())
    os.setgid(account.gid)
    os.setuid(account.uid)
    os.umask(umask)


def preexec(account: Account | None, *, cwd: str | None = None, umask: int = 0o077,
            then=None):
    """A ``preexec_fn``: become ``account`` (None: stay who we are), set
    ``umask``, change to ``cwd``, then call ``then``."""
    groups = account.groups() if account is not None else None

    def run():  # pragma: nocover (runs in the child)
        if account is not None:
            os.setgroups(groups)
            os.setgid(account.gid)
            os.setuid(account.uid)
        os.umask(umask)
        if cwd:
            os.chdir(cwd)
        if then is not None:
            then()

    return run


# AF_UNIX paths hold at most 107 bytes; a kernel's sockets are
# RUNTIME/kernel-<uuid>-ipc-<n>.
SOCKET_PATH_MAX = 107
_KERNEL_SOCKET = "/kernel-00000000-0000-0000-0000-000000000000-ipc-5"


def runtime_dir(root: Path, account: Account, *, create: bool = True) -> Path:
    """The account's private folder for kernels' connection files and IPC
    sockets (``ROOT/UID``, 0700, the account's)."""
    d = Path(root) / str(account.uid)
    if len(str(d)) + len(_KERNEL_SOCKET) > SOCKET_PATH_MAX:
        raise ValueError(f"kernel sockets under {d} would be longer than {SOCKET_PATH_MAX} "
                         "bytes: use a shorter spool_dir")
    if create:
        d.mkdir(mode=0o700, exist_ok=True)
        st = d.stat()
        if (st.st_uid, st.st_gid) != (account.uid, account.gid) and os.geteuid() == 0:
            os.chown(d, account.uid, account.gid)
        os.chmod(d, 0o700)
    return d


def blocked_at(path: str | Path, *, execute: bool = False, list_dir: bool = True
               ) -> Path | None:
    """The first folder on the way to ``path`` (or ``path`` itself) that an
    account other than its owner, outside its group, cannot get through or
    read (a user's account, or the service account, facing root's files);
    None when ``path`` is reachable. A folder ``path`` must be readable too
    unless not ``list_dir``. Links are checked as written and as resolved."""
    import stat

    for candidate in dict.fromkeys([Path(os.path.abspath(path)), Path(os.path.realpath(path))]):
        cur = Path(candidate.anchor)
        for part in candidate.parts[1:]:
            try:
                st = os.stat(cur)
            except OSError:
                return cur
            if not st.st_mode & stat.S_IXOTH:
                return cur
            cur = cur / part
        try:
            st = os.stat(cur)
        except OSError:
            return cur
        if stat.S_ISDIR(st.st_mode):
            need = stat.S_IXOTH | (stat.S_IROTH if list_dir else 0)
        else:
            need = stat.S_IROTH | (stat.S_IXOTH if execute else 0)
        if st.st_mode & need != need:
            return cur
    return None


def check_reachable(paths: dict[str, str | Path]) -> None:
    """Refuse, naming the first folder in the way, when something users'
    processes (or the service account) need is closed to them.
    ``paths``: {what it is: path}; a key ending in ``(run)`` must be
    executable, one ending in ``(pass)`` a folder users may pass through."""
    for what, path in paths.items():
        execute, passing = what.endswith(" (run)"), what.endswith(" (pass)")
        what = what.removesuffix(" (run)").removesuffix(" (pass)")
        where = blocked_at(path, execute=execute, list_dir=not passing)
        if where is None:
            continue
        if not where.exists():
            raise AccountError(f"{what} ({path}) is missing: {where} does not exist")
        mode = os.stat(where).st_mode & 0o7777
        raise AccountError(
            f"{what} ({path}) is not reachable for users' accounts: {where} is closed to them "
            f"(mode {mode:o}). Install imaginghub where every account can read it ('make up' "
            "as root puts it in /opt/imaginghub), or open that folder (chmod o+rx).")
