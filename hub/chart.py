"""The hub and the services in the Helm chart (``charts/imaginghub``): their
configuration, made from the rendered values.

The chart renders ``values.json`` (its values, the release's names, the
objects' names) into its config Secret; ``files/hub/jupyterhub_config.py``
calls :func:`configure_hub` with it, as zero-to-jupyterhub's reads its own
values, and the services' ``imaginghub_config.py`` calls
:func:`configure_services`. What every user's server gets is
:class:`.servers.ServerSettings`, the same as on the embedded stack; the
roles are :func:`.hubconfig.roles`. ``hub.config.<Class>`` is applied last,
so a site's own settings win; a section of one of imaginghub's classes is
checked there as ``imaginghub_config.py`` is.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config

from .config import merge
from .errors import ConfigError

# Where things are in the images (docker/): the user image's Python, its
# Jupyter data (kernelspec, JupyterLab's settings), the users' home.
IMAGE_PYTHON = "/opt/imaginghub/venv/bin/python"
IMAGE_JUPYTER_DATA = "/opt/imaginghub/venv/share/jupyter"
IMAGE_HOME = "/home/jovyan"
USER_UID = 1000
# The services' port in their pods, and the hub's API port.
SERVICE_PORT = 8080
HUB_PORT = 8081
SERVICES = ("data", "jobs", "viewer", "dask-gateway")
CULLER = "idle-culler"
SECRETS_DIR = "/usr/local/etc/imaginghub/secrets"


@dataclass
class Rendered:
    """The chart's rendered values: ``values`` (the release's values),
    ``release`` (name, namespace, fullname, secret) and ``names`` (each
    component's object name, which is its Service's host name)."""

    values: dict
    release: dict
    names: dict

    @classmethod
    def load(cls, path: str | os.PathLike) -> Rendered:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} is missing: the chart mounts its values there "
                              "(set IMAGINGHUB_CHART_VALUES to where they are)") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not the chart's values.json ({e})") from None
        return cls(data["values"], data["release"], data["names"])

    def url(self, component: str, port: int = SERVICE_PORT, path: str = "") -> str:
        return f"http://{self.names[component]}:{port}{path}"

    @property
    def public_url(self) -> str:
        """The hub's public address: the Ingress's host, or '' (then links
        are relative to whatever address the browser used)."""
        ingress = self.values.get("ingress") or {}
        host = ingress.get("host")
        if not (ingress.get("enabled") and host):
            return ""
        scheme = "https" if (ingress.get("tls") or {}).get("secretName") else "http"
        return f"{scheme}://{host}"

    def pg_url(self, db: str) -> str:
        pg = self.values["postgresql"]
        if pg["type"] == "internal":
            host, port, user = self.names["postgresql"], 5432, "imaginghub"
        else:
            ext = pg["external"]
            host, port, user = ext["host"], ext.get("port", 5432), ext.get("user", "imaginghub")
        return f"postgresql+psycopg://{user}@{host}:{port}/imaginghub_{db}"

    def enabled(self, service: str) -> bool:
        key = {"viewer": "viewer", "dask-gateway": "daskGateway"}.get(service)
        return True if key is None else bool(self.values[key].get("enabled", True))

    def instance_labels(self) -> dict[str, str]:
        """The labels of every pod that runs a user's code: the
        NetworkPolicies let them reach what users may reach, and nothing
        else."""
        return {"imaginghub.org/instance": self.release["name"],
                "imaginghub.org/user-code": "true"}


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def server_settings(r: Rendered):
    """What every user's server gets (the same as on the embedded stack)."""
    from .services import dask_gateway
    from .servers import ServerSettings

    public = r.public_url
    dask_env = {}
    if r.enabled("dask-gateway"):
        dask_env = dask_gateway.client_environment(r.url("proxy-public", 80), 8786)
        dask_env["DASK_GATEWAY__PROXY_ADDRESS"] = f"gateway://{r.names['dask-traefik']}:8786"
    return ServerSettings(
        data_url=r.url("data", path="/services/data"),
        jobs_url=r.url("jobs", path="/services/jobs"),
        jupyter_path=IMAGE_JUPYTER_DATA,
        lab_settings=f"{IMAGE_JUPYTER_DATA}/lab/settings",
        dask_environment=dask_env,
        python=IMAGE_PYTHON,
        viewer_url=f"{public}/services/viewer" if r.enabled("viewer") else "")


def profiles(r: Rendered) -> list[dict]:
    """KubeSpawner's profile_list entries of every profile in the values,
    each with the projects it is offered to under ``"projects"`` (taken off
    by :func:`profile_list`)."""
    images = r.values["images"]
    out = []
    for p in r.values["singleuser"]["profiles"]:
        override = {
            "cpu_guarantee": float(p["cpu"]["guarantee"]),
            "cpu_limit": float(p["cpu"]["limit"]),
            "mem_guarantee": p["memory"]["guarantee"],
            "mem_limit": p["memory"]["limit"],
        }
        gpu = int(p.get("gpu") or 0)
        if gpu:
            image = images.get("userGPU") or images["user"]
            override["image"] = f"{image['name']}:{image['tag']}"
            override["extra_resource_limits"] = {"nvidia.com/gpu": str(gpu)}
            override["extra_resource_guarantees"] = {"nvidia.com/gpu": str(gpu)}
        sched = p.get("scheduling") or {}
        if sched.get("nodeSelector"):
            override["node_selector"] = dict(sched["nodeSelector"])
        if sched.get("tolerations"):
            override["tolerations"] = list(sched["tolerations"])
        out.append({"display_name": p["displayName"], "slug": p["slug"],
                    "description": p.get("description", ""),
                    "default": bool(p.get("default")),
                    "kubespawner_override": override,
                    "projects": sorted(p.get("projects") or [])})
    return out


def offered(all_profiles: list[dict], groups) -> list[dict]:
    """The profiles a user in ``groups`` (hub group names) may choose: those
    without projects, and those of a project the user is in. KubeSpawner
    refuses a slug that is not among them, so a user cannot ask the API
    for a profile they are not offered."""
    from .users import PROJECT_PREFIX

    mine = {g[len(PROJECT_PREFIX):] for g in groups if g.startswith(PROJECT_PREFIX)}
    out = []
    for p in all_profiles:
        if p["projects"] and not (mine & set(p["projects"])):
            continue
        out.append({k: v for k, v in p.items() if k != "projects"})
    if out and not any(p.get("default") for p in out):
        out[0] = {**out[0], "default": True}
    return out


def profile_list(all_profiles: list[dict]):
    """KubeSpawner's ``profile_list`` as a callable: per user, by project."""
    def for_user(spawner):
        return offered(all_profiles, [g.name for g in spawner.user.groups])
    return for_user


def configure_spawner(c: Config, r: Rendered) -> None:
    """KubeSpawner from the values: images, profiles, the home volume,
    /dev/shm, labels, no service-account token, the servers' settings."""
    su = r.values["singleuser"]
    user = r.values["images"]["user"]
    c.JupyterHub.spawner_class = "imaginghub.hub.kubespawn.ImagingKubeSpawner"
    k = c.KubeSpawner
    server_settings(r).apply(c, "KubeSpawner")
    k.namespace = r.release["namespace"]
    k.image = f"{user['name']}:{user['tag']}"
    k.image_pull_policy = user.get("pullPolicy", "IfNotPresent")
    if r.values.get("imagePullSecrets"):
        k.image_pull_secrets = list(r.values["imagePullSecrets"])
    k.uid = USER_UID
    k.gid = USER_UID
    k.fs_gid = USER_UID
    k.port = 8888
    k.notebook_dir = IMAGE_HOME
    k.working_dir = IMAGE_HOME
    k.automount_service_account_token = False
    k.allow_privilege_escalation = False
    k.extra_labels = {**r.instance_labels(),
                      "app.kubernetes.io/part-of": "imaginghub"}
    k.profile_list = profile_list(profiles(r))
    # a home per user, kept when the server stops
    storage = su["storage"]
    k.storage_pvc_ensure = True
    k.storage_capacity = str(storage["size"])
    if storage.get("storageClass"):
        k.storage_class = storage["storageClass"]
    k.storage_access_modes = ["ReadWriteOnce"]
    k.pvc_name_template = "home-{user_server}"
    k.volumes = [
        {"name": "home", "persistentVolumeClaim": {"claimName": "{pvc_name}"}},
        # PyTorch's data loaders share tensors through /dev/shm
        {"name": "dshm", "emptyDir": {"medium": "Memory",
                                      "sizeLimit": str(su["shm"]["sizeLimit"])}},
    ]
    k.volume_mounts = [{"name": "home", "mountPath": IMAGE_HOME},
                       {"name": "dshm", "mountPath": "/dev/shm"}]
    sched = su.get("scheduling") or {}
    if sched.get("nodeSelector"):
        k.node_selector = dict(sched["nodeSelector"])
    if sched.get("tolerations"):
        k.tolerations = list(sched["tolerations"])
    k.start_timeout = 600
    k.http_timeout = 120


def configure_auth(c: Config, r: Rendered) -> None:
    auth = r.values["auth"]
    admins = set(r.values["hub"].get("adminUsers") or [])
    if admins:
        c.Authenticator.admin_users = admins
    if auth["type"] == "shared-password":
        c.JupyterHub.authenticator_class = "shared-password"
        c.SharedPasswordAuthenticator.user_password = os.environ.get(
            "IMAGINGHUB_SHARED_PASSWORD", "")
        c.SharedPasswordAuthenticator.allow_all = True
        return
    o = auth["oidc"]
    c.JupyterHub.authenticator_class = "imaginghub.hub.oidc.ImagingOIDCAuthenticator"
    a = c.ImagingOIDCAuthenticator
    issuer = (o.get("issuer") or "").rstrip("/")
    # Keycloak's endpoints below the issuer unless the values name them
    a.authorize_url = o.get("authorizeUrl") or f"{issuer}/protocol/openid-connect/auth"
    a.token_url = o.get("tokenUrl") or f"{issuer}/protocol/openid-connect/token"
    a.userdata_url = o.get("userdataUrl") or f"{issuer}/protocol/openid-connect/userinfo"
    a.client_id = o["clientId"]
    # the client's secret: OAUTH_CLIENT_SECRET in the hub's environment, from
    # the site's Secret (GenericOAuthenticator reads it there)
    a.scope = list(o.get("scopes") or ["openid", "profile", "email"])
    a.username_claim = o.get("usernameClaim") or "preferred_username"
    a.groups_claim = o.get("groupsClaim") or "groups"
    a.admin_groups = set(o.get("adminGroups") or [])
    a.allowed_groups = set(o.get("allowedGroups") or [])
    a.oauth_callback_url = f"{r.public_url}/hub/oauth_callback"
    c.Authenticator.enable_auth_state = True


def services(r: Rendered) -> list[dict]:
    """The hub's services: each in a pod of its own (a url and a token from
    the chart's Secret, never started by the hub), and the idle culler."""
    out = []
    for name in SERVICES:
        if not r.enabled(name):
            continue
        # Dask Gateway: its traefik, which routes the API and the dashboards
        url = r.url("dask-traefik", 8000) if name == "dask-gateway" else r.url(name)
        entry = {"name": name, "url": url,
                 "api_token": os.environ.get(f"IMAGINGHUB_TOKEN_{name.upper().replace('-', '_')}",
                                             ""),
                 "display": name != "dask-gateway"}
        if name != "dask-gateway":
            entry.update(oauth_no_confirm=True, oauth_client_id=f"service-{name}",
                         oauth_redirect_uri=f"/services/{name}/oauth_callback")
        if name == "viewer":
            entry["oauth_client_allowed_scopes"] = ["access:services!service=data"]
        out.append(entry)
    cull = r.values["hub"].get("cull") or {}
    if cull.get("enabled"):
        out.append({"name": CULLER,
                    "api_token": os.environ.get("IMAGINGHUB_TOKEN_CULLER", ""),
                    "command": ["python3", "-m", "jupyterhub_idle_culler",
                                f"--timeout={int(cull.get('timeout', 3600))}",
                                f"--cull-every={int(cull.get('every', 300))}",
                                "--concurrency=5"]})
    return out


def configure_hub(c: Config, path: str | os.PathLike) -> Rendered:
    """The whole hub configuration from the chart's ``values.json``."""
    from .hubconfig import roles

    r = Rendered.load(path)
    j = c.JupyterHub
    j.hub_bind_url = f"http://:{HUB_PORT}"
    j.hub_connect_url = f"http://{r.names['hub']}:{HUB_PORT}"
    # configurable-http-proxy in its own pod (CONFIGPROXY_AUTH_TOKEN)
    c.ConfigurableHTTPProxy.should_start = False
    c.ConfigurableHTTPProxy.api_url = f"http://{r.names['proxy-api']}:8001"
    j.db_url = r.pg_url("hub")  # the password: PGPASSWORD
    j.cleanup_servers = False   # users' servers outlive a restart of the hub
    j.allow_named_servers = False
    # cookie secret and crypt key: JPY_COOKIE_SECRET, JUPYTERHUB_CRYPT_KEY
    j.services = services(r)
    cull = r.values["hub"].get("cull") or {}
    j.load_roles = roles(None, culler=CULLER if cull.get("enabled") else None)
    configure_auth(c, r)
    configure_spawner(c, r)
    apply_passthrough(c, r.values["hub"].get("config") or {})
    return r


def configure_services(c: Config, path: str | os.PathLike) -> Rendered:
    """imaginghub's own settings of the services' pods from the values:
    the archive, Dask's limits, then hub.config's sections of imaginghub's
    classes."""
    r = Rendered.load(path)
    archive = r.values["archive"]
    d = c.DataService
    d.read_archive_files = False  # the archive's files are in another pod
    d.feed = "qido"
    if archive["type"] == "orthanc":
        d.archive_url = r.url("archive", 8042, "/dicom-web")
        d.archive_username = "imaginghub"
        d.archive_password_file = f"{SECRETS_DIR}/archive-password"
    else:
        ext = archive["external"]
        d.archive_url = ext["url"]
        if ext.get("password"):
            d.archive_password_file = f"{SECRETS_DIR}/archive-password"
            if ext.get("username"):
                d.archive_username = ext["username"]
    # jobs: Kubernetes Jobs in the user image, sending their results back
    user = r.values["images"]["user"]
    job = (r.values.get("jobs") or {}).get("job") or {}
    c.JobService.runner = "kubernetes"
    k = c.KubernetesJobRunner
    k.namespace = r.release["namespace"]
    k.image = f"{user['name']}:{user['tag']}"
    gpu_image = r.values["images"].get("userGPU")
    if gpu_image:
        k.gpu_image = f"{gpu_image['name']}:{gpu_image['tag']}"
    k.image_pull_policy = user.get("pullPolicy", "IfNotPresent")
    k.image_pull_secrets = list(r.values.get("imagePullSecrets") or [])
    k.upload_url = r.url("jobs", path="/services/jobs")
    k.extra_labels = {**r.instance_labels(), "app.kubernetes.io/part-of": "imaginghub"}
    k.uid = USER_UID
    if job.get("resources"):
        k.resources = job["resources"]
    for key, selector, tolerations in (("scheduling", "node_selector", "tolerations"),
                                       ("gpuScheduling", "gpu_node_selector",
                                        "gpu_tolerations")):
        where = job.get(key) or {}
        if where.get("nodeSelector"):
            k[selector] = dict(where["nodeSelector"])
        if where.get("tolerations"):
            k[tolerations] = list(where["tolerations"])
    if job.get("ttlSecondsAfterFinished") is not None:
        k.ttl_seconds_after_finished = int(job["ttlSecondsAfterFinished"])
    apply_passthrough(c, r.values["hub"].get("config") or {}, ours_only=True)
    merge(c, dask_limits(r))
    return r


# dask-gateway's classes that hub.config may set for the gateway's pods
DASK_CLASSES = ("DaskGateway", "Backend", "KubeBackend", "HubKubeBackend", "KubeController",
                "ClusterConfig", "KubeClusterConfig", "HubKubeClusterConfig",
                "JupyterHubAuthenticator", "UserLimits")


def dask_limits(r: Rendered) -> Config:
    """``c.DaskLimits`` of the release: ``daskGateway.limits`` (camelCase),
    then ``hub.config.DaskLimits``, checked as the embedded stack's are."""
    from .config import check

    cfg = Config()
    for key, value in ((r.values.get("daskGateway") or {}).get("limits") or {}).items():
        cfg.DaskLimits[_camel_to_snake(key)] = value
    cfg.DaskLimits.update((r.values["hub"].get("config") or {}).get("DaskLimits") or {})
    return check(cfg, "the chart's daskGateway.limits")


def configure_dask_gateway(c: Config, path: str | os.PathLike) -> Rendered:
    """Dask Gateway's API and controller from the values: the Kubernetes
    backend with the embedded stack's per-user limits and options, clusters
    in the user image with the labels of users' code, JupyterHub's users."""
    from .services.dask_gateway import CLUSTER_ENVIRONMENT, PREFIX, site_limits
    from .services.dask_gateway.backend import cluster_options

    r = Rendered.load(path)
    ns = r.release["namespace"]
    instance = r.release["fullname"]
    user = r.values["images"]["user"]
    c.DaskGateway.address = ":8000"
    c.DaskGateway.backend_class = "imaginghub.hub.services.dask_gateway.kube.HubKubeBackend"
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
    c.JupyterHubAuthenticator.jupyterhub_api_url = r.url("hub", HUB_PORT, "/hub/api")
    c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"
    for cls in ("KubeBackend", "KubeController"):
        c[cls].gateway_instance = instance
    c.KubeController.address = ":8000"
    c.KubeController.api_url = r.url("dask-gateway", 8000, "/api")
    c.KubeController.proxy_prefix = PREFIX
    c.KubeController.proxy_web_entrypoint = "web"
    c.KubeController.proxy_tcp_entrypoint = "tcp"
    k = c.KubeClusterConfig
    k.namespace = ns
    k.image = f"{user['name']}:{user['tag']}"
    k.image_pull_policy = user.get("pullPolicy", "IfNotPresent")
    k.image_pull_secrets = [{"name": n} for n in r.values.get("imagePullSecrets") or []]
    bin_dir = IMAGE_PYTHON.rsplit("/", 1)[0]
    k.scheduler_cmd = [f"{bin_dir}/dask", "scheduler"]
    k.worker_cmd = [f"{bin_dir}/dask", "worker"]
    labels = {**r.instance_labels(), "app.kubernetes.io/part-of": "imaginghub"}
    k.scheduler_extra_pod_labels = labels
    k.worker_extra_pod_labels = labels
    pod = {"automountServiceAccountToken": False,
           "securityContext": {"runAsUser": USER_UID, "runAsGroup": USER_UID,
                               "runAsNonRoot": True}}
    k.scheduler_extra_pod_config = pod
    k.worker_extra_pod_config = pod
    # what a worker needs to reach the data service (the user's token comes
    # with the work: kernels/cluster.py)
    k.environment = {**CLUSTER_ENVIRONMENT,
                     **{key: v for key, v in server_settings(r).environment().items()
                        if key.startswith("IMAGINGHUB_")}}
    limits, user_limits = site_limits(dask_limits(r))
    c.HubKubeBackend.limits = limits
    c.HubKubeBackend.user_limits = user_limits
    k.idle_timeout = float(limits["idle_timeout_seconds"])
    c.Backend.cluster_options = cluster_options(limits, user_limits)
    apply_passthrough(c, {name: section for name, section in
                          (r.values["hub"].get("config") or {}).items()
                          if name in DASK_CLASSES})
    return r


def apply_passthrough(c: Config, sections: dict, *, ours_only: bool = False) -> None:
    """``hub.config`` into ``c``: every class's section as it is, after a
    check of imaginghub's own classes' sections (an unknown setting or a
    wrong type is a ConfigError naming it). With ``ours_only``, only
    imaginghub's classes (the services have no use for JupyterHub's)."""
    from .config import check, classes

    ours = {cls.__name__ for cls in classes()}
    cfg = Config({k: v for k, v in sections.items() if not ours_only or k in ours})
    check(cfg, "the chart's hub.config")
    merge(c, cfg)
