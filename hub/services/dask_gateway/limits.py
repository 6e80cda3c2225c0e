"""The limits of users' Dask clusters (light: read by ``imaginghub up``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class Limits:
    """What one user may have. Settings (settings.json) ``dask_<field>``;
    ``dask_user_limits: {"alice": {"max_workers_per_cluster": 8}}`` changes
    them for one user."""

    max_clusters_per_user: int = 2
    max_workers_per_cluster: int = 4
    max_cores_per_cluster: int = 4          # all workers of one cluster
    max_memory_gb_per_cluster: float = 8.0  # all workers of one cluster, GiB
    worker_cores: int = 1                   # default per worker
    max_worker_cores: int = 2
    worker_memory_gb: float = 2.0           # default per worker, GiB
    max_worker_memory_gb: float = 4.0
    idle_timeout_seconds: float = 1800.0    # 0: never

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict) -> Limits:
        unknown = set(values) - set(cls.names())
        if unknown:
            raise ValueError(f"unknown Dask limits {sorted(unknown)}; known: {cls.names()}")
        out = cls(**values)
        for f in fields(cls):
            cast = int if f.type == "int" else float
            setattr(out, f.name, cast(getattr(out, f.name)))
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def limits_for(username: str, limits: dict, user_limits: dict) -> Limits:
    """The limits of ``username``: the site's, with that user's changes."""
    return Limits.from_dict({**limits, **user_limits.get(username, {})})
