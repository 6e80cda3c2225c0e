"""Put the built OHIF app where the viewer service serves it from.

``python -m imaginghub.hub.services.viewer.install PYPROJECT DEST`` (what
``make setup`` runs): the package named in ``[tool.imaginghub.viewer-app]``
of ``pyproject.toml`` (the one place for dependencies) is fetched from the
npm registry with ``npm pack`` (the built app only: ``npm install`` would pull
a whole build toolchain), its SHA-512 is checked against the pinned
``integrity``, and its ``dist/`` is unpacked into ``DEST`` as it is: the app
is configured (:mod:`.app_config`), never changed. Nothing is fetched at run
time. A wrong hash stops with what was expected and what came, and leaves
``DEST`` as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

STAMP = ".imaginghub-app.json"  # in DEST: which package and hash it holds


def pinned(pyproject: Path) -> dict:
    """``{"package", "version", "integrity"}`` from pyproject.toml."""
    with open(pyproject, "rb") as f:
        table = tomllib.load(f)["tool"]["imaginghub"]["viewer-app"]
    return {k: str(table[k]) for k in ("package", "version", "integrity")}


def installed(dest: Path) -> dict | None:
    """What ``dest`` holds (the stamp written last), or None."""
    try:
        return json.loads((dest / STAMP).read_text())
    except (OSError, ValueError):
        return None


def integrity(path: Path) -> str:
    """npm's integrity string (SRI) of a file: ``sha512-`` and base64."""
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode()


def fetch(pin: dict, folder: Path) -> Path:
    """``npm pack`` the pinned package into ``folder``; the tarball's path."""
    npm = shutil.which("npm")
    if not npm:
        raise SystemExit("npm is needed once, to fetch the OHIF app from the npm registry: "
                         "install it (Debian: apt-get install npm) and run make again")
    spec = f"{pin['package']}@{pin['version']}"
    print(f"fetching the OHIF viewer app ({spec}, about 50 MB) from the npm registry ...",
          flush=True)
    out = subprocess.run([npm, "pack", spec, "--pack-destination", str(folder), "--json",
                          "--loglevel=error"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"npm pack {spec} failed: {out.stderr.strip()[-2000:]}")
    name = json.loads(out.stdout)[0]["filename"]
    return folder / name


def unpack(tarball: Path, dest: Path, pin: dict) -> None:
    """``package/dist/`` of ``tarball`` into ``dest``, all or nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ohif-", dir=dest.parent))
    try:
        with tarfile.open(tarball) as tar:
            # regular files and folders under package/dist/ only, no '..'
            # (Debian's Python 3.11.2 predates tarfile's extraction filters)
            members = [m for m in tar.getmembers() if m.name.startswith("package/dist/")
                       and (m.isfile() or m.isdir()) and ".." not in Path(m.name).parts]
            for m in members:
                m.mode = 0o755 if m.isdir() else 0o644
                m.uid = m.gid = 0
                m.uname = m.gname = ""
            tar.extractall(work, members=members)
        dist = work / "package" / "dist"
        if not (dist / "index.html").is_file():
            raise SystemExit(f"{tarball.name} has no dist/index.html: not the built OHIF app")
        dist.chmod(0o755)  # readable by every account: the service may run as another
        (dist / STAMP).write_text(json.dumps(pin) + "\n")
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if dest.exists():
            dest.rename(old)
        dist.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def install(pyproject: Path, dest: Path) -> bool:
    """Install the pinned app into ``dest`` unless it is there; True if it was
    (re)installed."""
    pin = pinned(pyproject)
    if installed(dest) == pin:
        return False
    with tempfile.TemporaryDirectory(prefix="ohif-pack-") as tmp:
        tarball = fetch(pin, Path(tmp))
        got = integrity(tarball)
        if got != pin["integrity"]:
            raise SystemExit(
                f"{pin['package']}@{pin['version']} from the registry has the hash {got}, not "
                f"the pinned {pin['integrity']} (pyproject.toml): nothing was installed. If "
                "the version was changed on purpose, put its integrity (npm view "
                f"{pin['package']}@VERSION dist.integrity) next to it")
        unpack(tarball, dest, pin)
    print(f"the OHIF viewer app is in {dest}", flush=True)
    return True


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise SystemExit("usage: python -m imaginghub.hub.services.viewer.install "
                         "PYPROJECT DEST")
    os.umask(0o022)
    install(Path(args[0]), Path(args[1]))


if __name__ == "__main__":
    main()
