"""What the hub gives a kernel (and a job, and a Dask worker) in its
environment, read in one place: the data service's and the job service's
addresses, the user's token, and the local volume cache. Dask Gateway's
own settings (``DASK_GATEWAY__*``) are dask's, read by :mod:`.cluster`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_URL = "IMAGINGHUB_DICOMWEB_URL"
ENV_USER = "IMAGINGHUB_DICOMWEB_USER"
ENV_PASSWORD = "IMAGINGHUB_DICOMWEB_PASSWORD"
ENV_TOKEN = "IMAGINGHUB_DICOMWEB_TOKEN"
ENV_JOBS_URL = "IMAGINGHUB_JOBS_URL"
ENV_CACHE_DIR = "IMAGINGHUB_CACHE_DIR"
ENV_CACHE_GB = "IMAGINGHUB_CACHE_GB"
# Where the token comes from, first found: set for jobs and tests, else every
# user server's own.
TOKEN_ENV = (ENV_TOKEN, "JUPYTERHUB_API_TOKEN")


@dataclass(frozen=True)
class KernelEnvironment:
    dicomweb_url: str = ""         # the data service's DICOMweb root (or an archive's)
    jobs_url: str = ""             # the job service
    token: str | None = None       # the user's JupyterHub token
    username: str | None = None    # an archive's own credentials (outside the hub)
    password: str | None = None
    cache_dir: str | None = None   # None: no volume cache
    cache_gb: float = 5.0

    @property
    def data_api(self) -> str:
        """The data service's REST API (catalog, cohorts), beside its DICOMweb root."""
        return self.dicomweb_url.rsplit("/dicom-web", 1)[0] + "/api" if self.dicomweb_url else ""


def kernel_environment(environ: Mapping[str, str] | None = None) -> KernelEnvironment:
    """The settings in ``environ`` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    return KernelEnvironment(
        dicomweb_url=env.get(ENV_URL, ""),
        jobs_url=env.get(ENV_JOBS_URL, ""),
        token=next((env[n] for n in TOKEN_ENV if env.get(n)), None),
        username=env.get(ENV_USER) or None,
        password=env.get(ENV_PASSWORD) or None,
        cache_dir=_cache_dir(env),
        cache_gb=float(env.get(ENV_CACHE_GB) or 5.0),
    )


def _cache_dir(env: Mapping[str, str]) -> str | None:
    """$IMAGINGHUB_CACHE_DIR, ``off`` for none, else ~/.cache/imaginghub/volumes."""
    where = env.get(ENV_CACHE_DIR)
    if where is not None:
        return None if where.strip().lower() in ("", "off", "none") else where
    return os.path.join(os.path.expanduser("~"), ".cache", "imaginghub", "volumes")
