"""What imaginghub adds to Dask Gateway's local process backend.

Loaded by the gateway process (``dask-gateway-server``) through the
configuration file that :mod:`imaginghub.hub.services.dask_gateway` writes:

- :class:`HubLocalBackend`: dask-gateway's ``LocalBackend``, whose clusters
  run as their user's own Unix account in multi-user mode (the account of
  :mod:`imaginghub.hub.accounts`, umask 077, its own working folder) and as
  the gateway's in single-user mode, plus a limit on the number of clusters
  a user may have at once, the ``workers`` option honoured when a cluster
  starts, logs of stopped clusters kept in the state directory, and
  scheduler and workers that stop when the gateway dies (Linux ``PDEATHSIG``);
- :func:`cluster_options`: the options users choose from (workers, cores and
  memory per worker, idle timeout), bounded by the admin's limits for that
  user, with a clear message when a request goes past them.
"""

from __future__ import annotations

import asyncio
import os
import shutil

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.local import LocalBackend, LocalClusterConfig
from dask_gateway_server.options import Float, Integer, Options
from traitlets import Bool, Dict, Integer as IntegerTrait, Unicode, default

from ...accounts import Account, preexec
from ...safeio import chmod_file
from ...process import die_with_parent
from .limits import limits_for

GiB = 2**30
# Bookkeeping of the scheduler in the gateway's limits (the local backend
# does not confine processes: these only count against the cluster limits).
SCHEDULER_CORES = 1
SCHEDULER_MEMORY = 1 * GiB


class _Bounded(Integer):
    """An integer option whose bound is a site limit, said plainly."""

    def validate(self, x):
        if not isinstance(x, int) or isinstance(x, bool):
            raise TypeError(f"{self.field} must be a whole number, got {x!r}")
        if self.min is not None and x < self.min:
            raise ValueError(f"{self.field} must be at least {self.min}, got {x}")
        if self.max is not None and x > self.max:
            raise ValueError(f"{self.field}={x} is over this hub's limit for you: at most "
                             f"{self.max} (ask the hub's admin for more)")
        return x


class _BoundedFloat(Float):
    def validate(self, x):
        if isinstance(x, int) and not isinstance(x, bool):
            x = float(x)
        if not isinstance(x, float):
            raise TypeError(f"{self.field} must be a number, got {x!r}")
        if self.min is not None and x < self.min:
            raise ValueError(f"{self.field} must be at least {self.min:g}, got {x:g}")
        if self.max is not None and x > self.max:
            raise ValueError(f"{self.field}={x:g} is over this hub's limit for you: at most "
                             f"{self.max:g} (ask the hub's admin for more)")
        return x


def cluster_options(limits: dict, user_limits: dict):
    """``c.Backend.cluster_options``: for each user, the options they may
    choose, bounded by their limits, and the cluster configuration they give."""

    def for_user(user):
        lim = limits_for(user.name, limits, user_limits)

        def handler(options, user):
            workers, cores, memory = options.workers, options.worker_cores, options.worker_memory
            if workers * cores > lim.max_cores_per_cluster:
                raise ValueError(
                    f"{workers} workers of {cores} cores need {workers * cores} cores: over "
                    f"this hub's limit for you of {lim.max_cores_per_cluster} cores per cluster")
            if workers * memory > lim.max_memory_gb_per_cluster + 1e-9:
                raise ValueError(
                    f"{workers} workers of {memory:g} GiB need {workers * memory:g} GiB: over "
                    f"this hub's limit for you of {lim.max_memory_gb_per_cluster:g} GiB "
                    "per cluster")
            idle = options.idle_timeout
            if lim.idle_timeout_seconds and (idle <= 0 or idle > lim.idle_timeout_seconds):
                idle = lim.idle_timeout_seconds
            by_memory = int(lim.max_memory_gb_per_cluster // memory)
            by_cores = int(lim.max_cores_per_cluster // cores)
            return {
                "workers": workers,
                "worker_cores": cores,
                "worker_memory": int(memory * GiB),
                "idle_timeout": float(idle),
                "scheduler_cores": SCHEDULER_CORES,
                "scheduler_memory": SCHEDULER_MEMORY,
                "cluster_max_workers": min(lim.max_workers_per_cluster, by_memory, by_cores),
                "cluster_max_cores": float(lim.max_cores_per_cluster + SCHEDULER_CORES),
                "cluster_max_memory": int(lim.max_memory_gb_per_cluster * GiB
                                          + SCHEDULER_MEMORY),
            }

        return Options(
            _Bounded("workers", default=0, min=0, max=lim.max_workers_per_cluster,
                     label="Workers to start with"),
            _Bounded("worker_cores", default=lim.worker_cores, min=1,
                     max=lim.max_worker_cores, label="Cores per worker"),
            _BoundedFloat("worker_memory", default=lim.worker_memory_gb, min=0.25,
                          max=lim.max_worker_memory_gb, label="Memory per worker (GiB)"),
            _BoundedFloat("idle_timeout", default=lim.idle_timeout_seconds, min=0.0,
                          max=lim.idle_timeout_seconds or None,
                          label="Shut down after this many idle seconds"),
            handler=handler,
        )

    return for_user


def check_cluster_count(name: str, count: int, limits: dict, user_limits: dict) -> None:
    """A PublicException (the user reads it) when ``name``, who has ``count``
    clusters pending or running, may not start another."""
    lim = limits_for(name, limits, user_limits)
    if count >= lim.max_clusters_per_user:
        raise PublicException(
            f"{name} has {count} Dask clusters already, the most this hub allows "
            f"per user ({lim.max_clusters_per_user}): shut one down first "
            "(client.shutdown(), or Gateway().list_clusters() to find them)")


class HubClusterConfig(LocalClusterConfig):
    """A local cluster's configuration, plus the workers it starts with."""

    workers = IntegerTrait(
        0, min=0, config=True,
        help="Workers started as soon as the cluster runs (the `workers` option).",
    )


class HubLocalBackend(LocalBackend):
    """Local processes for every user's clusters: as the user's own account
    in multi-user mode, as the gateway's (the embedded stack's one account)
    in single-user mode.

    Overrides of LocalBackend: :meth:`make_preexec_fn` (the account, umask
    077, PDEATHSIG), :meth:`setup_working_directory` and
    :meth:`set_file_permissions` (the account owns its folder, certificate
    and key; dask-gateway-server 2026.3.0's own version extends its list of
    paths with each path's characters, and as root chowns ``/`` to the
    user), :meth:`get_env` (the account's HOME and USER)."""

    site_home = Unicode(
        "", config=True, help="The site's state directory (its accounts mapping).")
    multi_user = Bool(
        False, config=True, help="Run each user's clusters as their own Unix account.")
    limits = Dict(help="The limits of every user (see Limits).", config=True)
    user_limits = Dict(help="Per user changes to `limits`: {name: {limit: value}}.",
                       config=True)
    logs_directory = Unicode(
        "", config=True,
        help="Where the logs of a stopped cluster are kept (a folder per cluster); "
             "empty: they go with its working directory.",
    )
    keep_logs_of = IntegerTrait(
        50, config=True, help="Logs of at most this many stopped clusters are kept.")
    user_home_template = Unicode(
        "", config=True,
        help="HOME of a user's schedulers and workers in single-user mode, `{username}` "
             "replaced (the home of the user's server, so `~` means the same in a notebook "
             "and on a worker); in multi-user mode HOME is the account's home.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._starting: set = set()

    @default("cluster_config_class")
    def _default_cluster_config_class(self):
        return "imaginghub.hub.services.dask_gateway.backend.HubClusterConfig"

    async def start_cluster(self, user, cluster_options):
        mine = self.db.list_clusters(username=user.name)  # pending and running
        check_cluster_count(user.name, len(mine), self.limits, self.user_limits)
        return await super().start_cluster(user, cluster_options)

    async def _cluster_to_running(self, cluster):
        await super()._cluster_to_running(cluster)
        workers = int(cluster.config.get("workers") or 0)
        if workers and cluster.count == 0:
            task = asyncio.ensure_future(self._scale_at_start(cluster.name, workers))
            self._starting.add(task)  # kept until done (the loop holds tasks weakly)
            task.add_done_callback(self._starting.discard)

    async def _scale_at_start(self, name: str, workers: int) -> None:
        cluster = await self.get_cluster(name)
        if cluster is None:
            return
        try:
            await self.forward_message_to_scheduler(cluster, {"op": "scale", "count": workers})
        except Exception:  # a cluster stopped meanwhile
            self.log.warning("could not start the workers of cluster %s", name, exc_info=True)

    # -- accounts ------------------------------------------------------------
    def account(self, username: str) -> Account | None:
        """The account a user's clusters run as (None: the gateway's own)."""
        if not self.multi_user:
            return None
        from ...state import Home

        return Home(self.site_home).accounts().ensure(username)

    def get_env(self, cluster):
        env = super().get_env(cluster)
        account = self.account(cluster.username)
        if account is not None:
            env["HOME"], env["USER"] = account.home, account.name
        elif self.user_home_template:
            home = self.user_home_template.format(username=cluster.username)
            os.makedirs(home, exist_ok=True)
            env["HOME"] = home
        return env

    def make_preexec_fn(self, cluster):
        return preexec(self.account(cluster.username), cwd=cluster.state["workdir"],
                       then=die_with_parent)

    def set_file_permissions(self, paths, username):
        account = self.account(username)
        if account is None:
            return
        for path in paths:
            os.chown(path, account.uid, account.gid)

    def setup_working_directory(self, cluster):
        """``CLUSTERS/NAME`` with ``.certs`` (the cluster's TLS certificate and
        key, 0600) and ``logs``, all 0700 and the user's."""
        workdir = os.path.join(self.clusters_directory, cluster.name)
        certs, logs = self.get_certs_directory(workdir), self.get_logs_directory(workdir)
        for d in (workdir, certs, logs):
            os.makedirs(d, 0o700, exist_ok=True)
            os.chmod(d, 0o700)
        cert_path, key_path = self._get_tls_paths(workdir)
        for path, data in ((cert_path, cluster.tls_cert), (key_path, cluster.tls_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        self.set_file_permissions([workdir, certs, logs, cert_path, key_path],
                                  cluster.username)
        return workdir

    def cleanup_working_directory(self, workdir):
        """Keep a stopped cluster's logs in the state directory. The cluster's
        folder is its user's: a link there is never followed (as root, a
        ``logs`` link to /etc would have us chmod the system's files)."""
        import stat

        logs = self.get_logs_directory(workdir)
        try:
            is_dir = stat.S_ISDIR(os.lstat(logs).st_mode)
        except OSError:
            is_dir = False
        if self.logs_directory and is_dir:
            keep = os.path.join(self.logs_directory, os.path.basename(workdir.rstrip("/")))
            try:
                os.makedirs(self.logs_directory, 0o700, exist_ok=True)
                shutil.rmtree(keep, ignore_errors=True)
                shutil.move(logs, keep)
                if os.path.islink(keep):  # swapped for a link meanwhile
                    os.unlink(keep)
                else:
                    for name in os.listdir(keep):  # the user's files: never follow a link
                        chmod_file(os.path.join(keep, name), 0o600)
                self._prune_logs()
            except OSError:
                self.log.warning("could not keep the logs of %s", workdir, exc_info=True)
        super().cleanup_working_directory(workdir)

    def _prune_logs(self) -> None:
        paths = [os.path.join(self.logs_directory, n) for n in os.listdir(self.logs_directory)]
        kept = sorted((os.path.getmtime(p), p) for p in paths if os.path.isdir(p))
        for _, path in kept[:max(0, len(kept) - self.keep_logs_of)]:
            shutil.rmtree(path, ignore_errors=True)
