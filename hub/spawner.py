"""The spawner of the embedded stack: users' servers as local processes.

In multi-user mode (the hub runs as root) every hub user's server runs as
their own Unix account (see :mod:`.accounts`), made at first spawn if the
CLI has not made it yet, in their private home (0700), with umask 077, so
their kernels and terminals are theirs too. In single-user mode every server
runs as the account that started the hub, with a home under the state
directory: projects are then a convenience, not a security boundary.

Either way kernels talk over IPC (Unix sockets in the account's private
runtime folder, ``KernelManager.transport=ipc`` in the server's arguments):
a kernel on loopback TCP publishes its output to any local subscriber.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from pathlib import Path

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Bool, Unicode

from .accounts import Account, preexec, runtime_dir
from .state import Home


def give_tutorials(source: Path, home: Path, account: Account | None) -> None:
    """Copy the tutorials into ``home/tutorials`` once; the copies are the
    user's to change. In multi-user mode the copy is made by the account
    itself (umask 077): root never writes into a folder the user controls,
    where a link could send its writes elsewhere."""
    import subprocess

    target = home / "tutorials"
    if os.path.lexists(target) or not source.is_dir():
        return
    if account is None or os.geteuid() != 0:
        shutil.copytree(source, target)
        return
    r = subprocess.run(["cp", "-R", "--no-preserve=mode,ownership,timestamps", str(source),
                        str(target)], preexec_fn=preexec(account), capture_output=True,
                       text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"could not copy the tutorials into {home}: {r.stderr.strip()}")


def tutorials_dir() -> Path:
    from importlib.resources import files

    return Path(str(files("imaginghub.notebooks") / "tutorials"))


class ImagingSpawner(LocalProcessSpawner):
    """A local process per server, as the user's own account (multi-user
    mode) or as the hub's (single-user mode).

    Overrides of LocalProcessSpawner: :meth:`start` (the account, its home,
    its runtime folder and tutorials first), :meth:`make_preexec_fn` (the
    account and umask 077), :meth:`user_env` (HOME, USER, the runtime folder)."""

    site_home = Unicode(
        help="The site's state directory: its configuration says how hub users map to "
             "accounts (c.Site.account_prefix) and where their homes are (c.Site.homes_dir).",
    ).tag(config=True)
    multi_user = Bool(
        False, help="Run each user's server as their own Unix account (the hub runs as root).",
    ).tag(config=True)
    runtime_root = Unicode(
        help="Folder under which each account gets its private runtime folder (UID/).",
    ).tag(config=True)

    _account: Account | None = None
    _home: str = ""

    def _site(self) -> Home:
        """The site's Home, made once per spawner: it reads (and executes) the
        site's configuration file, which a spawn need not do again."""
        if getattr(self, "_site_home", None) is None:
            self._site_home = Home(self.site_home)
        return self._site_home

    def account_of_user(self) -> tuple[Account, str]:
        """(account, home) the server runs as and in; made if missing."""
        if self.multi_user:
            a = self._site().accounts().ensure(self.user.name)
            return a, a.home
        me = Account.of(pwd.getpwuid(os.geteuid()))
        home = self._site().users_dir / self.user.name
        home.mkdir(parents=True, exist_ok=True)
        return me, str(home)

    async def start(self):
        loop = asyncio.get_running_loop()
        self._account, self._home = await loop.run_in_executor(None, self.account_of_user)
        runtime = runtime_dir(Path(self.runtime_root), self._account)
        self._runtime = str(runtime)
        await loop.run_in_executor(None, give_tutorials, tutorials_dir(), Path(self._home),
                                   self._account if self.multi_user else None)
        return await super().start()

    def make_preexec_fn(self, name):
        return preexec(self._account if self.multi_user else None, cwd=self._home)

    def user_env(self, env):
        a = self._account
        env["USER"] = a.name if self.multi_user else self.user.name
        env["HOME"] = self._home
        env["SHELL"] = "/bin/bash"
        env["JUPYTER_RUNTIME_DIR"] = self._runtime
        return env

    def move_certs(self, paths):
        return paths  # internal TLS is off: loopback only
