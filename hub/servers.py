"""What every user's server gets, whatever spawns it: one place for the
embedded stack's ``jupyterhub_config.py`` and for the Kubernetes chart's
hub configuration (which applies it to KubeSpawner).

The server runs ``python -m imaginghub.hub.singleuser`` (jupyterhub-
singleuser without a slow import, see :mod:`.singleuser`) with JupyterLab,
the imaging kernel by default, kernels over IPC, and JupyterLab settings
that fetch nothing from the internet. Its environment names the data
service, the job service and Dask Gateway as the server reaches them, and
where the imaging kernelspec is; its token reaches exactly those services.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

# JupyterLab settings for every user: sites are often offline, and nothing is
# fetched from the internet at run time (no news, no update checks).
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false",
                                                    "checkForUpdates": False},
}

# What a server's token may do: its own server and the imaginghub services.
TOKEN_SCOPES = [
    "users:activity!user", "access:servers!server", "access:services!service=data",
    "access:services!service=jobs", "access:services!service=dask-gateway",
]


@dataclass
class ServerSettings:
    """The settings of users' servers. ``data_url`` and ``jobs_url`` are the
    services' roots (``.../services/data``, ``.../services/jobs``) as the
    servers reach them; ``dask_environment`` is dask-gateway's client
    settings (see :func:`imaginghub.hub.services.dask_gateway.client_environment`);
    ``jupyter_path`` holds the imaging kernelspec and ``lab_settings`` the
    JupyterLab overrides (:func:`write_lab_settings`); ``viewer_url`` is the
    browser viewer's address as users' browsers reach it (the text of
    ``view_in_browser``'s links)."""

    data_url: str
    jobs_url: str
    jupyter_path: str
    lab_settings: str
    dask_environment: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    viewer_url: str = ""  # the browser viewer as users' browsers reach it

    def cmd(self) -> list[str]:
        return [self.python, "-m", "imaginghub.hub.singleuser"]

    def args(self) -> list[str]:
        return ["--MultiKernelManager.default_kernel_name=imaging",
                "--KernelManager.transport=ipc",
                f"--LabApp.app_settings_dir={self.lab_settings}"]

    def environment(self) -> dict[str, str]:
        return {
            "JUPYTER_PATH": self.jupyter_path,
            "IMAGINGHUB_DICOMWEB_URL": self.data_url.rstrip("/") + "/dicom-web",
            "IMAGINGHUB_JOBS_URL": self.jobs_url.rstrip("/"),
            **self.dask_environment,
            **({"IMAGINGHUB_VIEWER_URL": self.viewer_url} if self.viewer_url else {}),
        }

    def token_scopes(self) -> list[str]:
        return list(TOKEN_SCOPES)

    def apply(self, c, spawner: str = "Spawner") -> None:
        """Set these on ``c`` (a traitlets Config) for the class ``spawner``."""
        section = c[spawner]
        section.cmd = self.cmd()
        section.args = self.args()
        section.default_url = "/lab"
        section.environment = self.environment()
        section.server_token_scopes = self.token_scopes()


def write_lab_settings(folder: Path) -> Path:
    """JupyterLab's settings overrides in ``folder/lab/settings``; that folder."""
    settings = Path(folder) / "lab" / "settings"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "overrides.json").write_text(json.dumps(LAB_OVERRIDES, indent=2) + "\n")
    return settings
