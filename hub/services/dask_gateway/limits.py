"""The limits of users' Dask clusters (light: read by ``imaginghub up``)."""

from __future__ import annotations

from traitlets import Dict, Float, Integer, TraitError
from traitlets.config import Configurable


class DaskLimits(Configurable):
    """What one user's Dask clusters may have (local processes of this
    machine, started as the user). ``user_limits`` changes them for some
    users."""

    max_clusters_per_user = Integer(2, help="Clusters of one user at once.").tag(config=True)
    max_workers_per_cluster = Integer(4, help="Workers of one cluster.").tag(config=True)
    max_cores_per_cluster = Integer(4, help="""
        Cores of all the workers of one cluster together.""").tag(config=True)
    max_memory_gb_per_cluster = Float(8.0, help="""
        Memory of all the workers of one cluster together, GiB.""").tag(config=True)
    worker_cores = Integer(1, help="A worker's cores unless the user asks for more.").tag(
        config=True)
    max_worker_cores = Integer(2, help="The most cores a user may ask for per worker.").tag(
        config=True)
    worker_memory_gb = Float(2.0, help="""
        A worker's memory unless the user asks for more, GiB.""").tag(config=True)
    max_worker_memory_gb = Float(4.0, help="""
        The most memory a user may ask for per worker, GiB.""").tag(config=True)
    idle_timeout_seconds = Float(1800.0, help="""
        A cluster that has had no client for this long is stopped (0:
        never); users may choose less.""").tag(config=True)
    user_limits = Dict(help="""
        Per-user changes to the limits above, such as
        {"alice": {"max_workers_per_cluster": 8}}.""").tag(config=True)

    @classmethod
    def names(cls) -> list[str]:
        """The names of the limits (every setting but ``user_limits``)."""
        return [n for n in cls.class_traits(config=True) if n != "user_limits"]

    def as_dict(self) -> dict:
        """The limits of every user."""
        return {n: getattr(self, n) for n in self.names()}

    def check(self) -> DaskLimits:
        """Self, when every user's changes are limits with values of the
        right types; else a ValueError naming the first wrong one."""
        for user in self.user_limits:
            limits_for(user, self.as_dict(), self.user_limits)
        return self


def limits_for(username: str, limits: dict, user_limits: dict) -> DaskLimits:
    """The limits of ``username``: the site's, with that user's changes."""
    values = {**limits, **user_limits.get(username, {})}
    unknown = sorted(set(values) - set(DaskLimits.names()))
    if unknown:
        raise ValueError(f"unknown Dask limits {unknown}; known: {DaskLimits.names()}")
    try:
        return DaskLimits(**values)
    except TraitError as e:
        raise ValueError(f"Dask limits of {username}: {e}") from None
