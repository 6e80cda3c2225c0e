"""A real Kubernetes API server for the chart's tests (tests/k8s/: etcd,
kube-apiserver and kube-controller-manager 1.20 from Debian's sources, built
by `make control-plane`), with helm and kubectl. There is no kubelet and no
scheduler: pods are stored and never run; a test that needs a pod to finish
writes its status itself, and says so."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "tests" / "k8s"
# the chart's release and namespace in the tests; the control plane's "hub"
# identity is the chart's hub ServiceAccount
RELEASE, NAMESPACE = "ih", "imaginghub"
HUB_SA = f"{RELEASE}-imaginghub-hub"


@dataclass
class Kube:
    state: Path
    cache: Path

    @property
    def admin(self) -> Path:
        return self.state / "admin.kubeconfig"

    @property
    def hub(self) -> Path:
        """A kubeconfig of the chart's hub ServiceAccount (its RBAC only)."""
        return self.state / "hub.kubeconfig"

    def run(self, tool: str, *args: str, input: str | None = None, check: bool = True,
            kubeconfig: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig or self.admin),
               "HELM_CACHE_HOME": str(self.state / "helm-cache"),
               "HELM_CONFIG_HOME": str(self.state / "helm-config"),
               "HELM_DATA_HOME": str(self.state / "helm-data")}
        got = subprocess.run([str(self.cache / "bin" / tool), *args], input=input, env=env,
                             capture_output=True, text=True, timeout=120)
        if check and got.returncode:
            raise AssertionError(f"{tool} {' '.join(args)}: {got.stderr or got.stdout}")
        return got

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("helm", *args, **kw)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", "-o", "json", *args).stdout)


def start_kube(tmp_path_factory):
    """The control plane, started; a generator for the session's fixture
    ``kube`` (tests/conftest.py), which stops it at the end."""
    cache = Path(os.environ.get("IMAGINGHUB_K8S_CACHE", "/var/cache/imaginghub-k8s"))
    missing = [p for p in ("kube-apiserver", "kube-controller-manager", "etcd", "helm",
                           "kubectl") if not (cache / "bin" / p).exists()]
    if missing:
        pytest.fail(f"{cache}/bin lacks {', '.join(missing)}: run 'make control-plane'")
    state = tmp_path_factory.mktemp("k8s")
    env = {**os.environ, "HUB_NAMESPACE": NAMESPACE, "HUB_SERVICEACCOUNT": HUB_SA}
    started = subprocess.run([str(K8S / "start-control-plane.sh"), str(cache), str(state)],
                             env=env, capture_output=True, text=True, timeout=240)
    if started.returncode:
        pytest.fail(f"the control plane did not start:\n{started.stderr[-3000:]}")
    k = Kube(state, cache)
    try:
        k.kubectl("create", "namespace", NAMESPACE)
        yield k
    finally:
        subprocess.run([str(K8S / "stop-control-plane.sh"), str(state)], capture_output=True,
                       timeout=60)
