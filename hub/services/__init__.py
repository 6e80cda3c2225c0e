"""Hub-managed services: ``data`` (the DICOMweb gateway, projects, catalog,
cohorts), ``jobs`` (workflow runs) and ``dask_gateway`` (users' clusters)."""

from __future__ import annotations

import asyncio
import logging
import signal

from traitlets import Integer
from traitlets.config import Configurable


class HubService(Configurable):
    """What every hub service of imaginghub shares (its settings apply to
    DataService and JobService alike, unless set on one of them)."""

    auth_cache_seconds = Integer(10, help="""
        How long a checked token's identity and a user's projects are
        trusted: a series load does not ask the hub per request, and a revoked
        token, a stopped server's token or a change of projects takes effect
        within this time.""").tag(config=True)


async def until_stopped() -> None:
    """Return on SIGTERM or SIGINT: how the hub stops a managed service."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def run(serve) -> None:
    """Run a service's ``serve()`` coroutine with the services' log format."""
    logging.basicConfig(level=logging.INFO,
                        format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request
    asyncio.run(serve())
