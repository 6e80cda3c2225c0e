"""The OHIF app's installation (the pinned hash is checked, a wrong one
changes nothing), its configuration as the browser runs it (node), and the
proxy's router for the app's root paths: no service needed."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from imaginghub.hub import hubconfig
from imaginghub.hub.services.viewer import install
from imaginghub.hub.services.viewer.app_config import app_config_js
from imaginghub.hub.services.viewer.config import root_entries
from imaginghub.hub.state import Home

REPO = Path(__file__).resolve().parents[2]


def _tarball(folder: Path) -> Path:
    """A package shaped like @ohif/app's: package/dist/ with index.html."""
    path = folder / "app-1.0.0.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("package/package.json", b"{}"),
                           ("package/dist/index.html", b"<html>new</html>"),
                           ("package/dist/app.bundle.0123456789abcdef.js", b"//"),
                           ("package/dist/assets/icon.png", b"png"),
                           ("package/dist/../../escape.txt", b"no")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _pyproject(folder: Path, integrity: str) -> Path:
    path = folder / "pyproject.toml"
    path.write_text('[tool.imaginghub.viewer-app]\npackage = "@ohif/app"\nversion = "1.0.0"\n'
                    f'integrity = "{integrity}"\n')
    return path


def test_the_pinned_app_is_the_one_in_pyproject():
    pin = install.pinned(REPO / "pyproject.toml")
    assert pin["package"] == "@ohif/app" and pin["integrity"].startswith("sha512-")


def test_a_wrong_hash_installs_nothing_and_says_so(tmp_path, monkeypatch):
    tarball = _tarball(tmp_path)
    dest = tmp_path / "ohif"
    dest.mkdir()
    (dest / "index.html").write_text("<html>old</html>")
    monkeypatch.setattr(install, "fetch", lambda pin, folder: shutil.copy(tarball, folder)
                        and Path(folder) / tarball.name)
    with pytest.raises(SystemExit, match="not the pinned sha512-AAAA"):
        install.install(_pyproject(tmp_path, "sha512-AAAA"), dest)
    assert (dest / "index.html").read_text() == "<html>old</html>"  # as it was

    good = install.integrity(tarball)
    assert install.install(_pyproject(tmp_path, good), dest)
    assert (dest / "index.html").read_text() == "<html>new</html>"
    assert (dest / "assets" / "icon.png").is_file()
    assert not (tmp_path / "escape.txt").exists()  # a member outside dist/ is left out
    assert install.installed(dest)["integrity"] == good
    assert not install.install(_pyproject(tmp_path, good), dest)  # there already
    assert root_entries(dest) == ["app.bundle.0123456789abcdef.js", "assets"]


def _config_in_a_page(path: str, cookie: str) -> dict:
    """window.config as app-config.js makes it in a page at ``path`` (in
    node, which make setup has: npm fetches the app)."""
    script = ("const window = {location: {origin: 'https://hub.example', pathname: %s}};"
              "const document = {cookie: %s};\n%s\n"
              "process.stdout.write(JSON.stringify(window.config));") % (
        json.dumps(path), json.dumps(cookie), app_config_js("Site"))
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30,
                         check=True)
    return json.loads(out.stdout)


def test_the_configuration_takes_the_cohort_and_the_token_from_the_page():
    plain = _config_in_a_page("/services/viewer/viewer", "a=1; _xsrf=2|ab%3D|cd; b=2")
    source = plain["dataSources"][0]["configuration"]
    assert plain["routerBasename"] == "/services/viewer"
    assert source["qidoRoot"] == "https://hub.example/services/viewer/dicom-web/s/2%7Cab%3D%7Ccd"
    assert source["wadoRoot"] == source["qidoRoot"] and source["dicomUploadEnabled"] is False
    assert plain["investigationalUseDialog"] == {"option": "never"}
    cohort = _config_in_a_page("/services/viewer/cohorts/oncology/lung-ct@2/viewer", "")
    assert cohort["routerBasename"] == "/services/viewer/cohorts/oncology/lung-ct@2"
    assert cohort["dataSources"][0]["configuration"]["qidoRoot"] == (
        "https://hub.example/services/viewer/cohorts/oncology/lung-ct@2/dicom-web/s/-")
    text = app_config_js("Site")
    assert "http://" not in text and "https://" not in text  # no other host, ever


def test_the_proxy_sends_the_apps_root_paths_to_the_viewer(tmp_path):
    app = tmp_path / "app"
    (app / "assets").mkdir(parents=True)
    for name in ("index.html", "sw.js", "app.bundle.0123456789abcdef.js", "app-config.js"):
        (app / name).write_text("x")
    home = Home(tmp_path / "home")
    home.path.mkdir()
    (home.path / "imaginghub_config.py").write_text(f"c.ViewerService.app_dir = {str(app)!r}\n")
    routes = hubconfig.viewer_app_routes(home, "http://127.0.0.1:9")
    router, = routes["http"]["routers"].values()
    terms = set(router["rule"].split(" || "))
    assert terms == {"Path(`/app.bundle.0123456789abcdef.js`)", "Path(`/app-config.js`)",
                     "PathPrefix(`/assets/`)"}  # not index.html, not the service worker
    service, = routes["http"]["services"].values()
    assert service["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:9"}]
    (home.path / "imaginghub_config.py").write_text(
        f"c.ViewerService.app_dir = {str(tmp_path / 'none')!r}\n")
    assert hubconfig.viewer_app_routes(Home(home.path), "http://127.0.0.1:9") == {}
