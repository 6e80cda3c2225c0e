"""The chart against a real Kubernetes API server (1.20, built from Debian's
sources; see conftest.py): what it accepts, the release's life with helm,
each component's rights, and a real spawn. No kubelet: pods are stored,
never run."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml

from chart_support import CHART, HUB_SA, NAMESPACE, RELEASE, VALUES, hub_config, values_of


def template(kube, values: Path, namespace: str) -> list[dict]:
    out = kube.helm("template", RELEASE, str(CHART), "--namespace", namespace,
                    "--values", str(values)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_the_api_server_accepts_every_object(kube, values):
    namespace = f"dry-{values.stem}"
    kube.kubectl("create", "namespace", namespace)
    objects = template(kube, values, namespace)
    # what API level 1.20 cannot know (policy/v1) is left to the schema checks
    known = [o for o in objects if o["apiVersion"] != "policy/v1"]
    assert len(known) >= len(objects) - 1
    got = kube.kubectl("apply", "--dry-run=server", "-f", "-",
                       input=json.dumps({"apiVersion": "v1", "kind": "List", "items": known}))
    lines = [line for line in got.stdout.splitlines() if line.strip()]
    assert len(lines) == len(known) and all("(server dry run)" in line for line in lines), \
        got.stdout
    # a dry run stores nothing
    assert not kube.get("deployments", "-n", namespace)["items"]


@pytest.fixture(scope="module")
def release(kube):
    """The chart installed with the GPU values, by the helm binary."""
    kube.helm("install", RELEASE, str(CHART), "--namespace", NAMESPACE,
              "--values", str(CHART / "ci" / "values" / "gpu.yaml"))
    return kube


def test_install_then_upgrade_keeps_the_generated_secrets(release):
    kube = release
    before = kube.get("secret", f"{RELEASE}-imaginghub", "-n", NAMESPACE)["data"]
    hub = kube.get("deployment", f"{RELEASE}-imaginghub-hub", "-n", NAMESPACE)
    checksum = hub["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    # the cluster has no policy/v1: the budget of the viewer's two replicas is v1beta1
    budget = kube.get("poddisruptionbudget.v1beta1.policy", f"{RELEASE}-imaginghub-viewer",
                      "-n", NAMESPACE)
    assert budget["spec"]["maxUnavailable"] == 1
    kube.helm("upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE,
              "--values", str(CHART / "ci" / "values" / "gpu.yaml"),
              "--set", "hub.cull.timeout=7200")
    after = kube.get("secret", f"{RELEASE}-imaginghub", "-n", NAMESPACE)["data"]
    assert after == before and len(after) == 11
    hub = kube.get("deployment", f"{RELEASE}-imaginghub-hub", "-n", NAMESPACE)
    assert hub["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != checksum
    history = json.loads(kube.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json").stdout)
    assert [h["status"] for h in history] == ["superseded", "deployed"]


def can(kube, account: str, verb: str, resource: str, namespace: str = NAMESPACE) -> bool:
    """kubectl auth can-i as the component's ServiceAccount; ``pods/log`` is
    the subresource (kubectl would read TYPE/NAME)."""
    resource, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    got = kube.kubectl("auth", "can-i", verb, resource, *extra, "-n", namespace, "--as",
                       f"system:serviceaccount:{NAMESPACE}:{RELEASE}-imaginghub-{account}",
                       check=False)
    assert got.stdout.strip() in ("yes", "no"), got.stderr
    return got.stdout.strip() == "yes"


@pytest.mark.parametrize("account, allowed, refused", [
    ("hub",
     [("create", "pods"), ("delete", "pods"), ("watch", "pods"), ("create",
      "persistentvolumeclaims"), ("create", "secrets"), ("list", "events")],
     [("get", "secrets"), ("list", "secrets"), ("create", "jobs.batch"), ("create",
      "pods/exec"), ("create", "roles.rbac.authorization.k8s.io"), ("update", "pods"),
      ("delete", "persistentvolumeclaims/status")]),
    ("jobs",
     [("create", "jobs.batch"), ("delete", "jobs.batch"), ("get", "pods/log"),
      ("create", "secrets"), ("watch", "pods")],
     [("create", "pods"), ("delete", "pods"), ("get", "secrets"), ("create", "pods/exec"),
      ("create", "persistentvolumeclaims"), ("update", "jobs.batch")]),
])
def test_each_component_has_what_it_needs_and_no_more(release, account, allowed, refused):
    for verb, resource in allowed:
        assert can(release, account, verb, resource), f"{account} cannot {verb} {resource}"
    for verb, resource in refused:
        assert not can(release, account, verb, resource), f"{account} may {verb} {resource}"
    # nothing outside its namespace, nothing cluster-wide
    release.kubectl("create", "namespace", "elsewhere", check=False)
    assert not can(release, account, "list", "pods", "elsewhere")
    assert not can(release, account, "list", "nodes")


def test_a_real_spawn_with_the_gpu_profile(release, tmp_path):
    """KubeSpawner as the chart's hub, with its ServiceAccount's rights only."""
    kube = release
    c = hub_config(values_of("gpu"), tmp_path)
    token = "spawn-token-7c1e9a"
    user = SimpleNamespace(name="alice", id=7, url="/user/alice/", escaped_name="alice",
                           groups=[SimpleNamespace(name="project-oncology")])
    hub = SimpleNamespace(public_host="", url=f"http://{RELEASE}-imaginghub-hub:8081/hub/",
                          base_url="/", api_url=f"http://{RELEASE}-imaginghub-hub:8081/hub/api")

    async def spawn():
        from imaginghub.hub.kubespawn import ImagingKubeSpawner

        s = ImagingKubeSpawner(config=c, user=user, hub=hub, _mock=True)
        s.api_token = token
        s.start_timeout = 30
        s.user_options = {"profile": "gpu"}
        await s.load_user_options()
        started = s.start()  # a future (KubeSpawner keeps it for its progress)
        pod = None
        for _ in range(200):
            pods = (await asyncio.to_thread(kube.get, "pods", "-n", NAMESPACE, "-l",
                                            "component=singleuser-server"))["items"]
            if pods:
                pod = pods[0]
                break
            await asyncio.sleep(0.1)
        assert pod is not None, "no pod was stored"
        pvc = await asyncio.to_thread(kube.get, "pvc", s.pvc_name, "-n", NAMESPACE)
        secret = await asyncio.to_thread(kube.get, "secret", s.token_secret_name, "-n",
                                         NAMESPACE)
        await s.stop(now=True)
        started.cancel()
        try:
            await started
        except (asyncio.CancelledError, Exception):
            pass
        left = await asyncio.to_thread(kube.get, "pods,secrets", "-n", NAMESPACE, "-l",
                                       "component=singleuser-server")
        return pod, pvc, secret, s, left

    with mock.patch.dict(os.environ, {"KUBECONFIG": str(kube.hub)}):
        pod, pvc, secret, spawner, left = asyncio.run(spawn())
    container = pod["spec"]["containers"][0]
    # the API server filled requests from limits for the GPU
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["image"].endswith("/user-gpu:0.1.0")
    assert pod["status"]["phase"] == "Pending"  # no kubelet: it never runs
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert {v["name"]: v for v in pod["spec"]["volumes"]}["dshm"]["emptyDir"]["medium"] == \
        "Memory"
    # the token is in the Secret the pod refers to, not in the pod
    assert token not in json.dumps(pod)
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == \
        spawner.token_secret_name
    import base64

    assert base64.b64decode(secret["data"]["JUPYTERHUB_API_TOKEN"]).decode() == token
    # stopped cleanly: pod and token gone, the home kept
    assert not left["items"], [i["metadata"]["name"] for i in left["items"]]
    kube.get("pvc", spawner.pvc_name, "-n", NAMESPACE)
    # and all of it with the hub's rights only: it may not even list Secrets
    denied = kube.kubectl("get", "secrets", "-n", NAMESPACE, kubeconfig=kube.hub, check=False)
    assert denied.returncode and f"serviceaccount:{NAMESPACE}:{HUB_SA}" in denied.stderr \
        and "forbidden" in denied.stderr
