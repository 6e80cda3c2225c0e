"""``cluster()``: a Dask cluster of your own from the hub's Dask Gateway.

>>> client = cluster(workers=2)                    # a Dask cluster of your own

``cluster(workers=2, **options)`` asks the hub's Dask Gateway (the hub
service ``dask-gateway``) for a cluster that belongs to you and returns a
connected ``distributed.Client``; ``options`` are the gateway's cluster
options (``worker_memory`` in GiB, ``worker_cores``, ``idle_timeout`` in
seconds; ``dask_gateway.Gateway().cluster_options()`` lists them with this
hub's limits). The cluster stops with ``client.shutdown()``, when the kernel
stops, or after its idle timeout. Without a gateway (a kernel outside the
hub) it starts a ``LocalCluster`` on this machine and says so.

The gateway is found from dask-gateway's own settings, which the hub sets in
every user server and job (``DASK_GATEWAY__ADDRESS``, ``__PROXY_ADDRESS``,
``__PUBLIC_ADDRESS``); the token is yours, from the same environment as
``pacs``: ``IMAGINGHUB_DICOMWEB_TOKEN``, else ``JUPYTERHUB_API_TOKEN``.
What dask-gateway needs worked around is here too; running a function over
series on a cluster is :mod:`.mapping`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from .environment import TOKEN_ENV, kernel_environment
from .errors import PACSError, ServiceUnavailable

log = logging.getLogger(__name__)

ENV_ADDRESS = "DASK_GATEWAY__ADDRESS"
ENV_PROXY = "DASK_GATEWAY__PROXY_ADDRESS"
ENV_PUBLIC = "DASK_GATEWAY__PUBLIC_ADDRESS"
DEFAULT_WORKERS = 2


class ClusterError(PACSError, RuntimeError):
    """A cluster could not be had: no token, the gateway refused (limits,
    an unknown option) or did not answer (:class:`ClusterUnavailable`)."""


class ClusterUnavailable(ClusterError, ServiceUnavailable):
    """The hub's Dask Gateway did not answer."""


# -- the token ---------------------------------------------------------------
def token_from_env(environ=None) -> str | None:
    """Your JupyterHub token: ``IMAGINGHUB_DICOMWEB_TOKEN`` (set for jobs and
    tests), else ``JUPYTERHUB_API_TOKEN`` (every user server)."""
    return kernel_environment(environ).token


# -- clusters ------------------------------------------------------------------
def gateway_settings(environ=None) -> dict | None:
    """The gateway's addresses (``address``, ``proxy_address``,
    ``public_address``) from the environment or dask's configuration; None
    when no gateway is configured."""
    env = os.environ if environ is None else environ
    address = env.get(ENV_ADDRESS)
    proxy = env.get(ENV_PROXY)
    public = env.get(ENV_PUBLIC)
    if not address and environ is None:
        try:
            import dask.config

            address = dask.config.get("gateway.address", None)
            proxy = proxy or dask.config.get("gateway.proxy-address", None)
            public = public or dask.config.get("gateway.public-address", None)
        except ImportError:
            pass
    if not address:
        return None
    return {"address": address, "proxy_address": proxy, "public_address": public}


def _safe_finalisers() -> None:
    """Make dask-gateway's ``__del__`` never block.

    A ``Gateway`` or ``GatewayCluster`` left unclosed (a refused ``connect``
    leaves one) is finalised whenever the garbage collector runs: on
    dask-gateway's own event-loop thread, where its ``__del__`` waits for
    that very loop, or while another thread holds the loop runner's lock,
    which its ``__del__`` takes too; either way the process hangs. Here the
    clean-up (closing the HTTP session, and for a cluster with
    ``shutdown_on_close`` stopping it) is handed to the loop, which never
    blocks the finalising thread."""
    from dask_gateway import client as dg

    if getattr(dg, "_imaginghub_safe_finalisers", False):
        return

    def running_loop(gateway):
        runner = getattr(gateway, "_loop_runner", None)
        loop = getattr(getattr(runner, "_loop", None), "asyncio_loop", None)  # no lock taken
        return loop if loop is not None and loop.is_running() and not loop.is_closed() else None

    def hand_over(loop, coroutine_function, *args) -> None:
        loop.call_soon_threadsafe(lambda: asyncio.ensure_future(coroutine_function(*args)))

    def gateway_del(self):
        if sys.is_finalizing() or getattr(self, "_asynchronous", True):
            return
        loop = running_loop(self)
        if loop is not None and getattr(self, "_session", None) is not None:
            hand_over(loop, self._cleanup)

    def cluster_del(self):
        gateway = getattr(self, "gateway", None)
        if sys.is_finalizing() or gateway is None or gateway.asynchronous:
            return
        loop = running_loop(gateway)
        if loop is not None and self.status != "closed":
            hand_over(loop, self._stop_internal)

    dg.Gateway.__del__ = gateway_del
    dg.GatewayCluster.__del__ = cluster_del
    dg._imaginghub_safe_finalisers = True


def gateway(token: str | None = None, environ=None):
    """A ``dask_gateway.Gateway`` of this hub, as you (your token): to list,
    connect to or stop your clusters (``.list_clusters()``, ``.connect(name)``)."""
    from dask_gateway import Gateway
    from dask_gateway.auth import JupyterHubAuth

    _safe_finalisers()

    settings = gateway_settings(environ)
    if settings is None:
        raise ClusterError(f"no Dask Gateway is configured here ({ENV_ADDRESS} is not set)")
    token = token or token_from_env(environ)
    if not token:
        raise ClusterError("no JupyterHub token to show the Dask Gateway: set "
                           f"{' or '.join(TOKEN_ENV)} (every user server of the hub has "
                           "JUPYTERHUB_API_TOKEN)")
    return Gateway(settings["address"], proxy_address=settings["proxy_address"],
                   public_address=settings["public_address"], auth=JupyterHubAuth(token))


def cluster(workers: int = DEFAULT_WORKERS, *, token: str | None = None,
            timeout: float = 120.0, **options):
    """A Dask cluster of your own with ``workers`` workers; returns a connected
    ``distributed.Client`` (also Dask's default client from now on).

    ``options``: the gateway's cluster options, for example
    ``worker_memory=4`` (GiB), ``worker_cores=2``, ``idle_timeout=600``
    (seconds). The hub's limits apply; a request over them fails with the
    reason. ``client.shutdown()`` stops the cluster (so does the end of the
    kernel, or the idle timeout)."""
    if workers < 0:
        raise ValueError("workers must be 0 or more")
    settings = gateway_settings()
    if settings is None:
        return _local_cluster(workers, options)
    started = time.perf_counter()
    # The Gateway is closed here, in this thread, whatever happens: dask-gateway
    # deadlocks when an unclosed one is garbage-collected on its event loop.
    with gateway(token) as gw:
        try:
            offered = set(gw.cluster_options(use_local_defaults=False))
        except Exception as e:
            raise _gateway_error(e, settings["address"]) from None
        unknown = set(options) - offered
        if unknown:
            raise ClusterError(f"unknown cluster option(s) {sorted(unknown)}; this hub's Dask "
                               f"Gateway offers {sorted(offered)}")
        request = dict(options)
        if "workers" in offered:
            request["workers"] = workers  # started by the gateway with the cluster
        try:
            # submit, then connect: a refused request leaves no half-made cluster object
            name = gw.submit(**request)
            gc = gw.connect(name, shutdown_on_close=True)
        except Exception as e:
            raise _gateway_error(e, settings["address"]) from None
    if "workers" not in offered and workers:
        gc.scale(workers)
    client = _client_class()(gc, security=gc.security, set_as_default=True)
    if workers:
        try:
            client.wait_for_workers(workers, timeout=timeout)
        except Exception:
            client.shutdown()
            raise ClusterError(f"the Dask cluster did not get {workers} workers within "
                               f"{timeout:g} s; it was shut down") from None
    took = time.perf_counter() - started
    print(f"Dask cluster {gc.name}: {workers} worker{'s' if workers != 1 else ''}, ready in "
          f"{took:.1f} s. Dashboard (through the hub): {gc.dashboard_link}", flush=True)
    return client


_CLIENT_CLASS = None


def _client_class():
    """``distributed.Client`` whose ``shutdown()`` stops its gateway cluster
    (the plain one waits forever on a cluster made outside its event loop)."""
    global _CLIENT_CLASS
    if _CLIENT_CLASS is None:
        from distributed import Client

        class HubClient(Client):
            def shutdown(self):
                """Stop the cluster (scheduler and workers) and close this client."""
                cluster = self.cluster
                if cluster is None or not hasattr(cluster, "shutdown") or self.asynchronous:
                    return super().shutdown()
                self.close()
                cluster.shutdown()

        _CLIENT_CLASS = HubClient
    return _CLIENT_CLASS


def _gateway_error(exc: Exception, address: str) -> Exception:
    """What went wrong with the gateway, said for a user (never a token)."""
    name = type(exc).__name__
    if isinstance(exc, ValueError):  # 404 and 422: the gateway's own reason
        return ClusterError(str(exc))
    status = getattr(exc, "status", None)
    if name == "GatewayServerError" or status in (401, 403):
        return ClusterError(f"the Dask Gateway at {address} did not accept your JupyterHub "
                            f"token ({name}: {exc}); in a user server it needs the scope "
                            "access:services!service=dask-gateway")
    if isinstance(exc, OSError) or "Connect" in name:
        return ClusterUnavailable(f"the Dask Gateway at {address} did not answer ({name}: "
                                  f"{exc})")
    return ClusterError(f"the Dask Gateway at {address} failed: {name}: {exc}")


def _local_cluster(workers: int, options: dict):
    from distributed import Client, LocalCluster

    unknown = set(options) - {"worker_memory", "worker_cores", "idle_timeout"}
    if unknown:
        raise ClusterError(f"unknown cluster option(s) {sorted(unknown)}")
    print(f"Note: no Dask Gateway is configured in this kernel ({ENV_ADDRESS} is not set), so "
          f"this is a LocalCluster of {workers} worker process{'es' if workers != 1 else ''} "
          "on this machine, not a cluster of the hub.", flush=True)
    memory = options.get("worker_memory")
    lc = LocalCluster(n_workers=workers, threads_per_worker=int(options.get("worker_cores", 1)),
                      processes=True, dashboard_address="127.0.0.1:0",
                      memory_limit=f"{float(memory)}GiB" if memory else "auto")
    client = Client(lc, set_as_default=True)
    print(f"Dashboard: {client.dashboard_link}", flush=True)
    return client
