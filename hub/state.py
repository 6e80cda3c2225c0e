"""The state directory of one site: settings, generated secrets, data.

Layout under the home (``--home``, ``$IMAGINGHUB_HOME`` or
``~/.local/share/imaginghub``)::

    settings.json            ports and names chosen on the first ``up`` (kept)
    users.json               the user registry: names, projects, password hashes (0600)
    secrets/                 generated once, 0600: cookie secret, tokens, archive password
    orthanc/orthanc.json     the archive's configuration, written at every ``up`` (0600)
    orthanc/db/              the archive's storage and index
    hub/jupyterhub_config.py the hub's configuration, written at every ``up``
    hub/jupyterhub.sqlite    the hub's database
    users/NAME/              the home of each user's server
    run.json                 written by a running ``up``: pids and URLs (0600)
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path

from .errors import ConfigError

ENV_HOME = "IMAGINGHUB_HOME"


def default_home() -> Path:
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imaginghub"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, atomically.

    The file is created 0600 before any byte is written, and replaces the old
    one only when complete: a crash never leaves a half-written secret.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
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
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class Home:
    """Paths, settings and secrets of one state directory."""

    def __init__(self, path: Path | str | None = None):
        self.path = Path(path).expanduser().resolve() if path else default_home().resolve()

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
    def settings_file(self) -> Path:
        return self.path / "settings.json"

    @property
    def users_file(self) -> Path:
        return self.path / "users.json"

    def create(self) -> None:
        for d in (self.path, self.secrets_dir, self.orthanc_dir, self.hub_dir, self.users_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        os.chmod(self.secrets_dir, 0o700)

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

    # settings --------------------------------------------------------------
    def load_settings(self) -> dict:
        if not self.settings_file.exists():
            return {}
        try:
            return json.loads(self.settings_file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.settings_file} is not valid JSON ({e}); fix or remove it") from e

    def save_settings(self, settings: dict) -> None:
        write_private(self.settings_file, json.dumps(settings, indent=2, sort_keys=True) + "\n")

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
