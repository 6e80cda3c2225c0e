"""The viewer service's settings (light: read by ``imaginghub up`` and
``imaginghub config`` without the service's dependencies)."""

from __future__ import annotations

import sys
from pathlib import Path

from traitlets import Unicode

from .. import HubService

PREFIX = "/services/viewer"


def default_app_dir() -> Path:
    """Where ``make setup`` puts the built OHIF app: this Python's share/."""
    return Path(sys.prefix) / "share" / "imaginghub" / "ohif"


class ViewerService(HubService):
    """The browser viewer: the OHIF app at /services/viewer/, reading the
    archive through the data service as the logged-in user (reads only)."""

    app_dir = Unicode("", help="""
        The folder of the built OHIF app (its dist/, with index.html). Empty:
        where 'make setup' installs it, share/imaginghub/ohif in imaginghub's
        Python environment.""").tag(config=True)
    title = Unicode("imaginghub", help="""
        The name the viewer's data source shows (the study list's
        title).""").tag(config=True)

    def app_path(self) -> Path:
        return Path(self.app_dir) if self.app_dir else default_app_dir()


def root_entries(app: Path) -> list[str]:
    """The app's top-level files and folders it loads from the site's root
    (it was built for the public path '/'): the hub routes these paths to the
    viewer service. Empty when the app is not installed."""
    if not (app / "index.html").is_file():
        return []
    skip = {"index.html", "sw.js", "_headers", "_redirects", "serve.json"}
    return sorted(p.name for p in app.iterdir()
                  if p.name not in skip and not p.name.startswith("."))
