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

from chart_support import (CHART, HUB_SA, NAMESPACE, RELEASE, VALUES, dask_config, hub_config,
                           one, render, values_of)




@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.stem)
def test_the_api_server_accepts_every_object(kube, values):
    namespace = f"dry-{values.stem}"
    kube.kubectl("create", "namespace", namespace)
    # the chart's resource definitions first (helm installs crds/ before the rest)
    kube.kubectl("apply", "-f", str(CHART / "crds"))
    kube.kubectl("wait", "--for=condition=established", "--timeout=30s", "-f",
                 str(CHART / "crds"))
    objects = render(yaml.safe_load(values.read_text()), namespace=namespace)
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
    ("dask-gateway",
     [("create", "daskclusters.gateway.dask.org"), ("patch", "daskclusters.gateway.dask.org"),
      ("get", "secrets")],
     [("create", "pods"), ("list", "secrets"), ("create", "jobs.batch")]),
    ("dask-controller",
     [("create", "pods"), ("create", "secrets"), ("create", "services"),
      ("patch", "daskclusters.gateway.dask.org/status"), ("create", "ingressroutes.traefik.io")],
     [("create", "jobs.batch"), ("create", "pods/exec"), ("create",
      "daskclusters.gateway.dask.org"), ("create", "persistentvolumeclaims")]),
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

    # kubernetes_asyncio reads $KUBECONFIG when it is imported, and KubeSpawner
    # loads its configuration once: both pointed at the hub's identity here
    from kubernetes_asyncio.config import kube_config
    from kubespawner import clients

    clients.load_config.cache_clear()
    try:
        with mock.patch.object(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kube.hub)):
            pod, pvc, secret, spawner, left = asyncio.run(spawn())
    finally:
        clients.load_config.cache_clear()
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


def test_the_controller_turns_a_dask_cluster_into_its_scheduler(release, tmp_path):
    """dask-gateway's controller, configured by the chart, against the API
    server: a DaskCluster as the chart's gateway makes it becomes the
    scheduler's Pod and Secret (its TLS credentials), with the labels of
    users' code. (Its Service and traefik's routes follow once the pod runs,
    which needs a kubelet.)"""
    import subprocess
    import sys
    import time

    from imaginghub.hub.services.dask_gateway.kube import HubKubeBackend, HubKubeClusterConfig
    from imaginghub.hub.state import free_port

    kube = release
    c = dask_config(values_of("gpu"), tmp_path)
    secret = one(render(values_of("gpu")), "Secret", "ih-imaginghub-config")["stringData"]
    (tmp_path / "dask_gateway_config.py").write_text(secret["dask_gateway_config.py"])
    log = tmp_path / "controller.log"
    controller = subprocess.Popen(
        [str(Path(sys.executable).parent / "dask-gateway-server"), "kube-controller",
         "--config", str(tmp_path / "dask_gateway_config.py"),
         f"--KubeController.address=127.0.0.1:{free_port()}"],
        env={**os.environ, "KUBECONFIG": str(kube.admin),
             "IMAGINGHUB_CHART_VALUES": str(tmp_path / "values.json")},
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        obj = HubKubeBackend(config=c).make_cluster_object(
            "alice", {"workers": 1}, HubKubeClusterConfig(config=c, workers=1))
        name = obj["metadata"]["name"]
        kube.kubectl("create", "-n", NAMESPACE, "-f", "-", input=json.dumps(obj))
        selector = f"gateway.dask.org/cluster={name}"
        pods = secrets = []
        for _ in range(150):
            pods = kube.get("pods", "-n", NAMESPACE, "-l", selector)["items"]
            secrets = kube.get("secrets", "-n", NAMESPACE, "-l", selector)["items"]
            if pods and secrets:
                break
            assert controller.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert pods and secrets, log.read_text()[-3000:]
    finally:
        controller.terminate()
        controller.wait(20)
    scheduler = [p for p in pods if p["metadata"]["labels"].get(
        "app.kubernetes.io/component") == "dask-scheduler"]
    assert len(scheduler) == 1
    pod = scheduler[0]
    assert pod["metadata"]["labels"]["imaginghub.org/user-code"] == "true"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/imaginghub/user:0.1.0"
    assert container["args"][:2] == ["/opt/imaginghub/venv/bin/dask", "scheduler"], container
    assert {s["metadata"]["name"] for s in secrets} == {f"dask-credentials-{name}"}
    assert {"dask.crt", "dask.pem", "api-token"} <= set(secrets[0]["data"])
    # the cluster's workers: asked for at the start (spec.replicas from the options)
    cluster = kube.get("daskcluster", name, "-n", NAMESPACE)
    assert cluster["spec"]["replicas"] == 1
