"""Dask Gateway as the hub service ``dask-gateway``: every user's Dask clusters.

JupyterHub starts ``python -m imaginghub.hub.services.dask_gateway CONFIG``
(the gateway, its proxy, and through them the users' schedulers and workers
as local processes) and routes ``/services/dask-gateway/`` to the gateway's
proxy: the gateway's API and the clusters' dashboards are reached through
the hub. Clients connect to their scheduler over TLS on the proxy's port
(``gateway://127.0.0.1:PORT``). Users are JupyterHub's: a request carries the
user's API token, which needs ``access:services!service=dask-gateway``.

``imaginghub up`` writes the gateway's configuration at every start
(:func:`write_config`, ``hub/dask_gateway_config.py``): a plain file a person
can read, with no secret in it (the proxy's token is read from ``secrets/``
when the gateway loads it). The admin sets the limits in the site's
configuration (``c.DaskLimits``, see :class:`~.limits.DaskLimits`), and
dask-gateway's own classes there too (``c.DaskGateway``, ``c.ClusterConfig``,
...: loaded after this file). The proxy's port on 127.0.0.1 is chosen once
and kept in state.json (``dask_gateway_port``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ...config import write_file
from ...errors import ConfigError
from ...state import Home, free_port, make_dir, port_in_use
from .limits import DaskLimits

SERVICE = "dask-gateway"
PREFIX = f"/services/{SERVICE}"

TEMPLATE = '''\
# Dask Gateway configuration of the imaginghub workspace in {home}
#
# Written by `imaginghub up` at every start: change the limits (c.DaskLimits)
# and dask-gateway's own settings in {config_file}, which
# is loaded at the end of this file, not here. Secrets are read from {home}/secrets (0600); none is written in this
# file. JupyterHub runs the gateway as its service "{service}" and gives it
# JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN.

from pathlib import Path

from imaginghub.hub.config import load_site_config
from imaginghub.hub.services.dask_gateway.backend import cluster_options

HOME = Path({home!r})


def secret(name):
    return (HOME / "secrets" / name).read_text().strip()


c = get_config()  # noqa: F821

# -- Network: loopback only ---------------------------------------------------
# The gateway's private API (its proxy and the clusters' schedulers call it).
c.DaskGateway.address = "127.0.0.1:{api_port}"
# The proxy, on one port: the API and the dashboards over HTTP (JupyterHub
# routes {prefix}/ here) and the schedulers over TLS (gateway://).
c.Proxy.address = "127.0.0.1:{port}"
c.Proxy.tcp_address = "127.0.0.1:{port}"
c.Proxy.prefix = {prefix!r}
c.Proxy.api_token = secret("dask_gateway_proxy_token")
c.Proxy.log_level = "warn"
c.DaskGateway.log_format = "[%(levelname)1.1s %(asctime)s.%(msecs).03d %(name)s] %(message)s"

# -- Users: JupyterHub's, by their API tokens ---------------------------------
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.JupyterHubAuthenticator"
# Tokens need the scope access:services!service={service}.
c.JupyterHubAuthenticator.jupyterhub_service_name = {service!r}

# -- Clusters: local processes of this machine --------------------------------
# {accounts_line}
c.DaskGateway.backend_class = "imaginghub.hub.services.dask_gateway.backend.HubLocalBackend"
c.HubLocalBackend.site_home = str(HOME)
c.HubLocalBackend.multi_user = {multi_user!r}
c.LocalBackend.clusters_directory = {clusters_dir!r}
c.LocalBackend.sigint_timeout = 5
c.LocalBackend.sigterm_timeout = 3
c.HubLocalBackend.logs_directory = {logs_dir!r}
c.HubLocalBackend.user_home_template = {user_home!r}
c.ClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.ClusterConfig.worker_cmd = [{dask!r}, "worker"]
c.ClusterConfig.environment = {environment!r}

# -- Limits: c.DaskLimits of the site's configuration --------------------------
LIMITS = {limits!r}
USER_LIMITS = {user_limits!r}
c.HubLocalBackend.limits = LIMITS
c.HubLocalBackend.user_limits = USER_LIMITS
c.ClusterConfig.idle_timeout = {idle_timeout!r}
# What users choose (workers, cores and memory per worker, idle timeout),
# bounded by their limits.
c.Backend.cluster_options = cluster_options(LIMITS, USER_LIMITS)

# -- The site's own settings of dask-gateway's classes ------------------------
load_site_config(c, {config_file!r})
'''

# Environment of every scheduler and worker (on top of PATH, VIRTUAL_ENV and
# the locale, which the local backend passes on). Workers may start processes
# of their own (decoding pools), and keep no volume cache. The nanny does not
# set MALLOC_TRIM_THRESHOLD_ (distributed's default, 65536): set at all, it
# stops glibc from raising its mmap threshold, and every array over 128 KiB
# (a 256 x 256 float32 slice) is then an mmap and a munmap; slice-by-slice
# numpy code ran 4x slower on the workers here (see docs/architecture.md).
CLUSTER_ENVIRONMENT = {
    "DASK_DISTRIBUTED__WORKER__DAEMON": "False",
    "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}",
    "IMAGINGHUB_CACHE_DIR": "off",
}


@dataclass
class GatewayConfig:
    path: Path
    port: int       # the proxy (HTTP and TLS), on 127.0.0.1
    api_port: int   # the gateway's private API

    @property
    def url(self) -> str:
        """Where JupyterHub routes PREFIX."""
        return f"http://127.0.0.1:{self.port}"


def site_limits(cfg) -> tuple[dict, dict]:
    """(limits of every user, per-user changes) of the site's configuration
    ``cfg``, checked."""
    limits = DaskLimits(config=cfg).check()
    return limits.as_dict(), dict(limits.user_limits)


def client_environment(hub_url: str, port: int, public_url: str = PREFIX) -> dict[str, str]:
    """What a kernel needs to reach the gateway (dask-gateway's own settings,
    so a plain ``dask_gateway.Gateway()`` works too): the API through the hub,
    the schedulers on the proxy's port, dashboard links through the hub
    (``public_url``: relative by default, so links work from any browser
    address of the hub)."""
    return {
        "DASK_GATEWAY__ADDRESS": hub_url.rstrip("/") + PREFIX,
        "DASK_GATEWAY__PROXY_ADDRESS": f"gateway://127.0.0.1:{port}",
        "DASK_GATEWAY__PUBLIC_ADDRESS": public_url,
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


def write_config(home: Home) -> GatewayConfig:
    """Write ``hub/dask_gateway_config.py`` for this start; choose the proxy's
    port once (``dask_gateway_port`` in state.json) and the API's each time."""
    try:
        limits, user_limits = site_limits(home.config())
    except ValueError as e:
        raise ConfigError(f"{home.config_file}: c.DaskLimits.user_limits: {e}") from None
    state = home.load_state()
    port = state.get("dask_gateway_port")
    if not port or port_in_use(port):
        port = free_port()
        home.save_state({**state, "dask_gateway_port": port})
    home.secret("dask_gateway_proxy_token")
    clusters_dir = home.clusters_dir()
    logs_dir = home.path / "dask-gateway" / "logs"
    for d in (logs_dir.parent, logs_dir):
        make_dir(d)
    if home.multi_user:  # the users' cluster folders: each one its user's (made by root)
        make_dir(clusters_dir, 0o711)
    else:
        make_dir(clusters_dir)
    api_port = free_port()
    text = TEMPLATE.format(
        home=str(home.path),
        service=SERVICE,
        prefix=PREFIX,
        api_port=api_port,
        port=port,
        clusters_dir=str(clusters_dir),
        logs_dir=str(logs_dir),
        user_home="" if home.multi_user else str(home.users_dir / "{username}"),
        multi_user=home.multi_user,
        accounts_line=("Each user's clusters run as their own Unix account (see "
                       "imaginghub.hub.accounts), in their own folder under "
                       f"{clusters_dir}." if home.multi_user else
                       "Single-user mode: clusters run as this account."),
        dask=str(Path(sys.executable).parent / "dask"),
        environment=CLUSTER_ENVIRONMENT,
        limits=limits,
        user_limits=json.loads(json.dumps(user_limits)),
        idle_timeout=float(limits["idle_timeout_seconds"]),
        config_file=str(home.config_file),
    )
    path = home.hub_dir / "dask_gateway_config.py"
    write_file(path, text)  # executed by the gateway, as root in multi-user mode
    return GatewayConfig(path, port, api_port)
