"""The Helm chart (charts/imaginghub), offline: rendered with Helm's SDK for
every values file in ci/values, every object checked against the Kubernetes
schemas of 1.30 and 1.32 (strict), `helm lint --strict`, bad values refused
by the schema, the hub's and the services' configuration loaded from the
rendered values, and KubeSpawner's manifests built from it. Nothing here
needs a cluster (the API-server tests are elsewhere)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from chart_support import (CHART, NAMESPACE, ROOT, VALUES, crd_schema, crds, dask_config,
                           hub_config, one, render, rendered_values, values_of)


def test_schema_json_and_reference_are_generated_from_the_yaml():
    spec = importlib.util.spec_from_file_location("generate_schema",
                                                  ROOT / "charts" / "generate-schema.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert (CHART / "values.schema.json").read_text() == gen.generated(), \
        "run 'python charts/generate-schema.py'"
    assert (CHART / "README.md").read_text() == gen.readme_with_reference(), \
        "run 'python charts/generate-schema.py'"
    assert "| `singleuser.profiles` | list of object |" in gen.reference()


# objects that two values files render alike are checked once
_checked: set[str] = set()


@pytest.mark.parametrize("path", VALUES, ids=lambda p: p.stem)
def test_every_object_is_valid_kubernetes(path):
    objects = render(yaml.safe_load(path.read_text()))
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "Secret", "NetworkPolicy"} <= kinds
    for o in objects:
        key = json.dumps(o, sort_keys=True)
        if key in _checked:
            continue
        _checked.add(key)
        schema = crd_schema(o)
        if schema is not None:  # a custom resource: its definition's schema
            jsonschema.validate(o, schema)
            continue
        for version in ("1.30.0", "1.32.0"):
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{o['kind']} {o['metadata']['name']} on {version}: {e}")
        # every container asks for what it needs
        spec = (o.get("spec") or {}).get("template", {}).get("spec")
        for c in (spec or {}).get("containers", []):
            req = c.get("resources", {}).get("requests", {})
            assert req.get("cpu") and req.get("memory"), f"{o['metadata']['name']}/{c['name']}"


def test_the_resource_definitions_are_valid_and_a_dask_cluster_fits_its_own(tmp_path):
    defined = {c["spec"]["names"]["kind"] for c in crds()}
    assert {"DaskCluster", "IngressRoute", "IngressRouteTCP"} <= defined
    for crd in crds():
        for version in ("1.30.0", "1.32.0"):
            kubernetes_validate.validate(crd, version, strict=True)
    # a DaskCluster as the gateway's backend makes it, from the chart's configuration
    from imaginghub.hub.services.dask_gateway.kube import HubKubeBackend, HubKubeClusterConfig

    c = dask_config({}, tmp_path)
    backend = HubKubeBackend(config=c)
    config = HubKubeClusterConfig(config=c, workers=2)
    obj = backend.make_cluster_object("alice", {"workers": 2}, config)
    obj["metadata"]["namespace"] = NAMESPACE
    jsonschema.validate(obj, crd_schema(obj))
    assert obj["spec"]["replicas"] == 2 and obj["spec"]["username"] == "alice"
    assert obj["spec"]["config"]["image"] == "imaginghub/user:0.1.0"
    bad = {**obj, "spec": {**obj["spec"], "replicas": -1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, crd_schema(obj))


def test_dask_gateway_config_from_values(tmp_path):
    c = dask_config(values_of("gpu"), tmp_path)
    assert c.DaskGateway.backend_class.endswith("HubKubeBackend")
    assert c.JupyterHubAuthenticator.jupyterhub_api_url == "http://ih-imaginghub-hub:8081/hub/api"
    assert c.KubeController.api_url == "http://ih-imaginghub-dask-gateway:8000/api"
    assert c.KubeBackend.gateway_instance == c.KubeController.gateway_instance == "ih-imaginghub"
    k = c.KubeClusterConfig
    assert k.image == "registry.example.org/imaginghub/user:0.1.0"
    assert k.image_pull_secrets == [{"name": "site-registry"}]
    assert k.worker_extra_pod_labels["imaginghub.org/user-code"] == "true"
    assert k.environment["IMAGINGHUB_DICOMWEB_URL"].startswith("http://ih-imaginghub-data:8080")
    assert not any("TOKEN" in key for key in k.environment)
    assert c.HubKubeBackend.limits["max_workers_per_cluster"] == 8  # daskGateway.limits
    # hub.config.DaskLimits comes on top, checked as the embedded stack's
    values = {**values_of("gpu"), "hub": {"config": {"DaskLimits": {"max_clusters_per_user": 5}}}}
    assert dask_config(values, tmp_path).HubKubeBackend.limits["max_clusters_per_user"] == 5
    with pytest.raises(Exception, match="max_cluster_per_user"):
        dask_config({"hub": {"config": {"DaskLimits": {"max_cluster_per_user": 5}}}}, tmp_path)
    # the same options, bounded by the same limits, as the embedded stack's
    options = c.Backend.cluster_options(SimpleNamespace(name="alice"))
    with pytest.raises(ValueError, match="over this hub's limit"):
        options.parse_options({"workers": 99})


@pytest.mark.parametrize("path", VALUES, ids=lambda p: p.stem)
def test_lint_strict(path):
    report = helm.lint(str(CHART), yaml.safe_load(path.read_text()), strict=True,
                       kube_version="v1.30.0", namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("values, where", [
    ({"hub": {"resorces": {}}}, "resorces"),                          # a misspelled key
    ({"singleuser": {"profiles": [{"slug": "x", "displayName": "x", "gpu": "one",
                                   "cpu": {"guarantee": 1, "limit": 1},
                                   "memory": {"guarantee": "1G", "limit": "1G"}}]}},
     "/singleuser/profiles/0/gpu"),                                   # a wrong type
    ({"archive": {"type": "dcm4chee"}}, "/archive/type"),             # not one of the choices
    ({"imagez": {}}, "imagez"),                                       # unknown at the top
])
def test_bad_values_are_refused_by_the_schema(values, where):
    with pytest.raises(helm.HelmValuesError) as e:
        render(values)
    assert where in str(e.value)


@pytest.mark.parametrize("values, message", [
    ({"auth": {"type": "oidc"}}, "auth.oidc.clientSecret is required"),
    ({"archive": {"type": "external", "external": {"password": {"name": "p", "key": "k"}}}},
     "archive.external.url is required"),
    ({"postgresql": {"type": "external"}}, "postgresql.external.host is required"),
])
def test_what_a_choice_needs_is_required(values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(values)


def test_generated_secrets_are_random_and_kept():
    first, second = (one(render(), "Secret", "ih-imaginghub") for _ in range(2))
    assert first["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    keys = {"cookie-secret", "crypt-key", "proxy-token", "token-data", "token-jobs",
            "token-viewer", "token-dask-gateway", "token-culler", "postgresql-password",
            "archive-password", "shared-password"}
    assert set(first["data"]) == keys
    for k in keys:  # 32 random bytes, hex (the cookie secret's and crypt key's form)
        import base64

        value = base64.b64decode(first["data"][k]).decode()
        assert len(value) == 64 and int(value, 16) >= 0
        assert first["data"][k] != second["data"][k]


def test_disruption_budgets_only_for_components_with_replicas():
    assert not [o for o in render() if o["kind"] == "PodDisruptionBudget"]
    budgets = [o for o in render(values_of("gpu")) if o["kind"] == "PodDisruptionBudget"]
    assert [b["metadata"]["name"] for b in budgets] == ["ih-imaginghub-viewer"]
    assert budgets[0]["apiVersion"] == "policy/v1"
    viewer = one(render(values_of("gpu")), "Deployment", "ih-imaginghub-viewer")
    assert viewer["spec"]["replicas"] == 2


# -- who may reach whom: the rendered NetworkPolicies, evaluated ------------------
def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _allowed(policies, src: dict, dst: dict, port: int) -> bool:
    """Whether a pod labelled ``src`` may open ``port`` on one labelled ``dst``
    under Kubernetes' NetworkPolicy semantics (union of rules; a pod no policy
    selects for a direction is open in that direction)."""
    def rule_ok(rule, peer_key, peer_labels):
        ports = [p["port"] for p in rule.get("ports") or []]
        if ports and port not in ports:
            return False
        peers = rule.get(peer_key)
        if not peers:
            return True
        return any("podSelector" in p and _matches(p["podSelector"], peer_labels)
                   for p in peers)

    def direction(kind, pod, peer_key, peer):
        chosen = [p for p in policies if _matches(p["spec"]["podSelector"], pod)
                  and kind in p["spec"]["policyTypes"]]
        if not chosen:
            return True
        return any(rule_ok(r, peer_key, peer) for p in chosen
                   for r in p["spec"].get(kind.lower()) or [])

    return (direction("Egress", src, "to", dst) and
            direction("Ingress", dst, "from", src))


def test_users_code_reaches_the_services_never_the_archive_or_postgresql():
    objects = render()
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {o["metadata"]["labels"]["app.kubernetes.io/component"]:
            o["spec"]["template"]["metadata"]["labels"]
            for o in objects if o["kind"] in ("Deployment", "StatefulSet")}
    values = rendered_values(objects)
    from imaginghub.hub.chart import Rendered

    user = {**Rendered(values["values"], values["release"], values["names"]).instance_labels(),
            "component": "singleuser-server"}
    for component, port in [("hub", 8081), ("proxy", 8000), ("data", 8080), ("jobs", 8080),
                            ("viewer", 8080)]:
        assert _allowed(policies, user, pods[component], port), component
    assert not _allowed(policies, user, pods["archive"], 8042)
    assert not _allowed(policies, user, pods["archive"], 4242)  # egress: no route at all
    assert not _allowed(policies, user, pods["postgresql"], 5432)
    # the components that need them do reach them
    assert _allowed(policies, pods["data"], pods["archive"], 8042)
    assert not _allowed(policies, pods["jobs"], pods["archive"], 8042)
    for component in ("hub", "data", "jobs", "archive"):
        assert _allowed(policies, pods[component], pods["postgresql"], 5432), component
    assert not _allowed(policies, pods["viewer"], pods["postgresql"], 5432)
    # from outside (the Ingress controller): the proxy's public port, and only the proxy's
    outsider = {"app": "ingress-nginx"}
    assert _allowed(policies, outsider, pods["proxy"], 8000)
    assert not _allowed(policies, outsider, pods["dask-gateway"], 8000)
    assert not _allowed(policies, outsider, pods["hub"], 8081)


def test_dask_workers_reach_the_data_service_with_the_users_token_only(tmp_path):
    """A Dask worker's and scheduler's pods as dask-gateway's controller
    makes them from the chart's configuration: the worker knows the data
    service's address and holds no token of the user's (that comes with the
    work, as on the embedded stack: kernels/mapping.py); the NetworkPolicies
    let it reach the data service and its scheduler, never the archive or
    PostgreSQL, and let the scheduler reach the gateway's API. (No kubelet
    here runs them: these are the pods as they would be made.)"""
    from dask_gateway_server.backends.kubernetes.controller import KubeController

    from imaginghub.hub.services.dask_gateway.kube import HubKubeClusterConfig

    values = values_of("gpu")
    c = dask_config(values, tmp_path)
    controller = KubeController(config=c)
    cluster = HubKubeClusterConfig(config=c, workers=1)
    worker = controller.make_pod(NAMESPACE, "c0ffee", cluster, is_worker=True)
    scheduler = controller.make_pod(NAMESPACE, "c0ffee", cluster, is_worker=False)
    env = {e["name"]: e.get("value") for e in worker["spec"]["containers"][0]["env"]}
    assert env["IMAGINGHUB_DICOMWEB_URL"] == \
        "http://ih-imaginghub-data:8080/services/data/dicom-web"
    assert not {"JUPYTERHUB_API_TOKEN", "IMAGINGHUB_DICOMWEB_TOKEN"} & set(env)
    assert worker["spec"]["automountServiceAccountToken"] is False

    objects = render(values)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    pods = {o["metadata"]["labels"]["app.kubernetes.io/component"]:
            o["spec"]["template"]["metadata"]["labels"]
            for o in objects if o["kind"] in ("Deployment", "StatefulSet")}
    w, sch = worker["metadata"]["labels"], scheduler["metadata"]["labels"]
    assert _allowed(policies, w, pods["data"], 8080)
    assert _allowed(policies, w, sch, 8786) and _allowed(policies, sch, w, 8786)
    assert _allowed(policies, sch, pods["dask-gateway"], 8000)  # its heartbeats
    assert _allowed(policies, pods["dask-traefik"], sch, 8786)  # clients through traefik
    assert not _allowed(policies, w, pods["archive"], 8042)
    assert not _allowed(policies, sch, pods["archive"], 8042)


def test_hub_config_from_values(tmp_path):
    c = hub_config(values_of("gpu"), tmp_path, {"IMAGINGHUB_TOKEN_DATA": "tok-data"})
    assert c.JupyterHub.spawner_class == "imaginghub.hub.kubespawn.ImagingKubeSpawner"
    assert c.JupyterHub.hub_connect_url == "http://ih-imaginghub-hub:8081"
    assert c.ConfigurableHTTPProxy.api_url == "http://ih-imaginghub-proxy-api:8001"
    assert c.JupyterHub.db_url == ("postgresql+psycopg://imaginghub@ih-imaginghub-postgresql:"
                                   "5432/imaginghub_hub")
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {"data", "jobs", "viewer", "dask-gateway", "idle-culler"}
    assert services["data"]["url"] == "http://ih-imaginghub-data:8080"
    assert services["data"]["api_token"] == "tok-data"
    assert "command" not in services["data"]  # run in its own pod, not by the hub
    assert services["viewer"]["oauth_client_allowed_scopes"] == ["access:services!service=data"]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(roles["idle-culler"]["scopes"]) == {"list:users", "read:users:activity",
                                                   "read:servers", "delete:servers"}
    assert "imaginghub-admin" not in roles
    assert c.JupyterHub.authenticator_class == "shared-password"
    k = c.KubeSpawner
    assert k.image == "registry.example.org/imaginghub/user:0.1.0"
    assert k.image_pull_secrets == ["site-registry"]
    env = k.environment
    assert env["IMAGINGHUB_DICOMWEB_URL"] == "http://ih-imaginghub-data:8080/services/data/dicom-web"
    assert env["IMAGINGHUB_JOBS_URL"] == "http://ih-imaginghub-jobs:8080/services/jobs"
    assert not any("tok" in v for v in env.values())


def profile_slugs(c, groups):
    user = SimpleNamespace(groups=[SimpleNamespace(name=g) for g in groups])
    return [p["slug"] for p in c.KubeSpawner.profile_list(SimpleNamespace(user=user))]


def test_gpu_profile_only_for_its_project(tmp_path):
    c = hub_config(values_of("gpu"), tmp_path)
    assert profile_slugs(c, ["project-oncology"]) == ["cpu-small", "gpu"]
    assert profile_slugs(c, ["project-neuro"]) == ["cpu-small"]
    assert profile_slugs(c, []) == ["cpu-small"]
    c = hub_config({}, tmp_path)
    assert profile_slugs(c, ["project-neuro"]) == ["cpu-small", "cpu-large"]


def test_oidc_values_give_the_oidc_authenticator(tmp_path):
    c = hub_config(values_of("oidc"), tmp_path)
    assert c.JupyterHub.authenticator_class == "imaginghub.hub.oidc.ImagingOIDCAuthenticator"
    a = c.ImagingOIDCAuthenticator
    issuer = "https://keycloak.example.org/realms/hospital"
    assert a.authorize_url == f"{issuer}/protocol/openid-connect/auth"
    assert a.token_url == f"{issuer}/protocol/openid-connect/token"
    assert a.userdata_url == f"{issuer}/protocol/openid-connect/userinfo"
    assert a.admin_groups == {"imaginghub-admins"}
    assert c.Authenticator.admin_users == {"ops"}
    # hub.config passes through, last
    assert c.KubeSpawner.start_timeout == 600
    assert c.JupyterHub.shutdown_on_logout is True


def service_config(values: dict, tmp_path: Path):
    from imaginghub.hub.config import read_file

    secret = one(render(values), "Secret", "ih-imaginghub-config")["stringData"]
    (tmp_path / "values.json").write_text(secret["values.json"])
    (tmp_path / "imaginghub_config.py").write_text(secret["imaginghub_config.py"])
    with mock.patch.dict(os.environ, {"IMAGINGHUB_CHART_VALUES": str(tmp_path / "values.json")}):
        return read_file(tmp_path / "imaginghub_config.py")


def test_services_config_from_values(tmp_path):
    c = service_config({}, tmp_path)
    assert c.DataService.archive_url == "http://ih-imaginghub-archive:8042/dicom-web"
    assert c.DataService.archive_password_file == ("/usr/local/etc/imaginghub/secrets/"
                                                   "archive-password")
    assert c.DaskLimits.max_workers_per_cluster == 8
    # jobs run as Kubernetes Jobs in the user image, and send their results back
    assert c.JobService.runner == "kubernetes"
    k = c.KubernetesJobRunner
    assert k.image == "imaginghub/user:0.1.0" and k.namespace == NAMESPACE
    assert k.upload_url == "http://ih-imaginghub-jobs:8080/services/jobs"
    assert k.extra_labels["imaginghub.org/user-code"] == "true"
    assert k.resources["requests"] == {"cpu": "1", "memory": "4Gi"}
    # a job that asks for a GPU: the GPU image on the GPU nodes
    k = service_config(values_of("gpu"), tmp_path).KubernetesJobRunner
    assert k.gpu_image == "registry.example.org/imaginghub/user-gpu:0.1.0"
    assert k.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert k.gpu_tolerations[0]["key"] == "nvidia.com/gpu"
    c = service_config(values_of("external-dicomweb"), tmp_path)
    assert c.DataService.archive_url == values_of("external-dicomweb")["archive"]["external"]["url"]
    assert c.DataService.archive_username == "imaginghub"
    c = service_config(values_of("oidc"), tmp_path)
    assert c.DataService.auth_cache_seconds == 10
    assert "KubeSpawner" not in c  # the services have no use for the hub's classes


def test_a_wrong_imaginghub_setting_in_hub_config_is_named(tmp_path):
    from imaginghub.hub.errors import ConfigError

    values = {"hub": {"config": {"DataService": {"auth_cach_seconds": 3}}}}
    with pytest.raises(ConfigError, match="auth_cach_seconds.*did you mean "
                                          "c.DataService.auth_cache_seconds"):
        service_config(values, tmp_path)


def test_the_data_pod_gets_the_archive_password_as_a_file():
    data = one(render(values_of("external-dicomweb")), "Deployment", "ih-imaginghub-data")
    spec = data["spec"]["template"]["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v}
    mount = [m for m in spec["containers"][0]["volumeMounts"]
             if m["mountPath"].endswith("/archive-password")][0]
    assert secrets[mount["name"]] == "site-pacs" and mount["subPath"] == "password"
    assert not [o for o in render(values_of("external-dicomweb"))
                if o["metadata"]["name"] == "ih-imaginghub-archive"]


# -- KubeSpawner's manifests ------------------------------------------------------
def spawner_for(c, groups, profile, token="secret-token-4b1d"):
    from kubernetes_asyncio.client import ApiClient

    from imaginghub.hub.kubespawn import ImagingKubeSpawner

    user = SimpleNamespace(name="alice", id=7, url="/user/alice/", escaped_name="alice",
                           groups=[SimpleNamespace(name=g) for g in groups])
    hub = SimpleNamespace(public_host="", url="http://ih-imaginghub-hub:8081/hub/",
                          base_url="/", api_url="http://ih-imaginghub-hub:8081/hub/api")

    async def build():
        with mock.patch("kubespawner.spawner.load_config"), \
                mock.patch("kubespawner.spawner.shared_client"):
            s = ImagingKubeSpawner(config=c, user=user, hub=hub, _mock=True)
        s.api_token = token
        s.user_options = {"profile": profile}
        await s.load_user_options()
        pod = await s.get_pod_manifest()
        pvc = s.get_pvc_manifest()
        ser = ApiClient().sanitize_for_serialization
        return ser(pod), ser(pvc), ser(s.get_token_secret_manifest())

    return asyncio.run(build())


def test_gpu_pod_manifest(tmp_path):
    c = hub_config(values_of("gpu"), tmp_path)
    pod, pvc, secret = spawner_for(c, ["project-oncology"], "gpu")
    kubernetes_validate.validate(pod, "1.30.0", strict=True)
    kubernetes_validate.validate(pvc, "1.30.0", strict=True)
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/imaginghub/user-gpu:0.1.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["metadata"]["labels"]["imaginghub.org/user-code"] == "true"
    assert pod["spec"]["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["home"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/dev/shm"] == "dshm" and mounts["/home/jovyan"] == "home"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    # the token is in the server's Secret, never in the pod's spec
    assert "secret-token-4b1d" not in json.dumps(pod)
    env = {e["name"]: e for e in container["env"]}
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "JUPYTERHUB_API_TOKEN"}
    assert secret["stringData"]["JUPYTERHUB_API_TOKEN"] == "secret-token-4b1d"
    assert env["IMAGINGHUB_DICOMWEB_URL"]["value"].startswith("http://ih-imaginghub-data:8080")


def test_a_profile_not_offered_is_refused(tmp_path):
    c = hub_config(values_of("gpu"), tmp_path)
    with pytest.raises(ValueError, match="gpu"):
        spawner_for(c, ["project-neuro"], "gpu")
    pod, _, _ = spawner_for(c, ["project-neuro"], "cpu-small")
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get("limits", {})


# -- OIDC: names and groups from the provider -------------------------------------
def test_provider_names_and_groups():
    from imaginghub.hub.errors import ConfigError
    from imaginghub.hub.oidc import hub_name, project_groups

    assert hub_name("Alice.Smith") == "alice.smith"
    for bad in ("root", "a b", "1alice", "x" * 40, ""):
        with pytest.raises(ConfigError):
            hub_name(bad)
    assert project_groups(["/project-oncology", "/imaging/project-neuro", "/staff",
                           "imaginghub-admins", "project-oncology"],
                          keep={"imaginghub-admins"}) == [
        "imaginghub-admins", "project-neuro", "project-oncology"]
