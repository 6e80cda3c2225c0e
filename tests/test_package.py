"""The distribution: a wheel built from the checkout holds every module,
the tutorials and workflows, the widgets' assets and the entry points, so
a plain (non-editable) install is the whole of imaginghub. (The wheel is
built from a copy: setuptools writes build/ and egg-info beside the
sources.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# source folder -> where its files go in the wheel
FOLDERS = {"hub": "imaginghub/hub", "kernels": "imaginghub/kernels",
           "widgets": "imaginghub/widgets", "notebooks": "imaginghub/notebooks"}


def build_wheel(folder: Path) -> Path:
    """imaginghub's wheel, built from a copy of the checkout in ``folder``."""
    src = folder / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in FOLDERS:
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "--disable-pip-version-check", "-w", str(folder / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel, = (folder / "dist").glob("imaginghub-*.whl")
    return wheel


def test_the_wheel_holds_everything(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = set()
    for folder, target in FOLDERS.items():
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and (
                    path.suffix in (".py", ".ipynb", ".js", ".css", ".svg")):
                wanted.add(f"{target}/{path.relative_to(REPO / folder).as_posix()}")
    assert wanted - names == set(), "files the wheel lacks"
    assert "imaginghub/hub/services/data/app.py" in names  # the services too
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[imaginghub.job_runners]" in text and "local = imaginghub.hub.services.jobs." \
        "runner:LocalProcessRunner" in text
    assert "imaginghub = imaginghub.hub.cli:main" in text
    # JupyterLab's launcher card for the browser viewer
    assert "[jupyter_serverproxy_servers]" in text and "imaging-viewer = imaginghub.kernels." \
        "browser_viewer:launcher_entry" in text
    # the Kubernetes chart's login and spawner by JupyterHub's short names
    assert "imaginghub-oidc = imaginghub.hub.oidc:ImagingOIDCAuthenticator" in text
    assert "imaginghub-kubernetes = imaginghub.hub.kubespawn:ImagingKubeSpawner" in text
    # nothing generic at the top level of site-packages
    assert {n.split("/")[0] for n in names} <= {"imaginghub", wheel.name.split("-")[0] + "-"
                                                + wheel.name.split("-")[1] + ".dist-info"}
