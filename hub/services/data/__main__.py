"""Run the data service: ``python -m imaginghub.hub.services.data``.

JupyterHub starts it as a managed service and sets JUPYTERHUB_API_TOKEN,
JUPYTERHUB_API_URL, JUPYTERHUB_SERVICE_URL and JUPYTERHUB_SERVICE_PREFIX;
``IMAGINGHUB_HOME`` names the state directory, where the site's
configuration (``c.DataService``, see :class:`.config.DataService`) is read:
the archive is ``c.DataService.archive_url`` with its credentials, or the
embedded Orthanc (its port in state.json, its password in secrets/).
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubAuth

from ...state import Home
from .. import run, until_stopped
from ...orthanc import Archive
from .app import Context, make_app
from .catalog import Catalog
from .config import DataService, archive_endpoint
from .thumbnails import ThumbnailStore
from .db import Store


def db_url(home: Home) -> str:
    """The service's database: $IMAGINGHUB_DATA_DB_URL, else
    ``c.DataService.db_url`` (e.g. ``postgresql+psycopg://user@host/db``),
    else SQLite in the state directory."""
    return (os.environ.get("IMAGINGHUB_DATA_DB_URL") or DataService(config=home.config()).db_url
            or f"sqlite:///{home.path / 'data' / 'data.sqlite'}")


async def serve() -> None:
    os.umask(0o077)
    home = Home(os.environ["IMAGINGHUB_HOME"])
    (home.path / "data").mkdir(exist_ok=True)
    conf = DataService(config=home.config())
    endpoint = archive_endpoint(home)
    cache = conf.auth_cache_seconds
    ctx = Context(endpoint, Store(db_url(home)), HubAuth(cache_max_age=cache),
                  cache_seconds=cache,
                  max_stow_bytes=conf.max_stow_mb * 1024**2,
                  # The embedded archive's files, read directly for whole series.
                  archive_storage=home.orthanc_dir / "db" if conf.read_archive_files else None,
                  catalog=Catalog(home.path / "data" / "catalog.duckdb"),
                  thumbnails=ThumbnailStore(home.path / "data" / "thumbnails"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/data/")
    bind = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8890"))
    app = make_app(ctx, prefix)
    ctx.own_host = bind.netloc
    from .catalog_sync import CatalogSync
    from .feeds import feed_class

    ctx.catalog_sync = CatalogSync(ctx.archive, endpoint.dicomweb, ctx.catalog, ctx.store)
    # The archive's feed, and a full re-crawl at start (the feed has passed
    # older series) and then every c.ArchiveFeed.full_sync_hours.
    feed = asyncio.create_task(feed_class(conf.feed_name())(
        config=home.config(), archive=ctx.archive, dicomweb_url=endpoint.dicomweb,
        orthanc_url=endpoint.orthanc, store=ctx.store,
        catalog_sync=ctx.catalog_sync, aet=Archive(config=home.config()).aet).run())
    server = app.listen(bind.port, address=bind.hostname or "127.0.0.1",
                        max_buffer_size=2 * 1024**3)
    logging.getLogger("imaginghub.data").info("data service on %s%s", bind.netloc, prefix)
    await until_stopped()
    feed.cancel()
    server.stop()
    await ctx.archive.aclose()
    await ctx.users.aclose()
    ctx.relay_pool.shutdown(wait=False, cancel_futures=True)
    ctx.query_pool.shutdown(wait=True, cancel_futures=True)
    ctx.catalog.db.close()


def main() -> None:
    run(serve)


if __name__ == "__main__":
    main()
