"""Run the data service: ``python -m imaginghub.hub.services.data``.

JupyterHub starts it as a managed service and sets JUPYTERHUB_API_TOKEN,
JUPYTERHUB_API_URL, JUPYTERHUB_SERVICE_URL and JUPYTERHUB_SERVICE_PREFIX;
``IMAGINGHUB_HOME`` names the state directory, where the archive's address
(settings.json) and password (secrets/) are read; see :func:`db_url` for the
database.
"""

from __future__ import annotations

import asyncio
import logging
import os
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubAuth

from ... import orthanc
from ...state import Home
from .. import run, until_stopped
from .app import Context, make_app
from .catalog import Catalog
from .thumbnails import ThumbnailStore
from .db import Store


def db_url(home: Home) -> str:
    """The service's database: $IMAGINGHUB_DATA_DB_URL, else ``data_db_url``
    in settings.json (e.g. ``postgresql+psycopg://user@host/db``), else SQLite
    in the state directory."""
    return (os.environ.get("IMAGINGHUB_DATA_DB_URL") or home.load_settings().get("data_db_url")
            or f"sqlite:///{home.path / 'data' / 'data.sqlite'}")


async def serve() -> None:
    os.umask(0o077)
    home = Home(os.environ["IMAGINGHUB_HOME"])
    (home.path / "data").mkdir(exist_ok=True)
    settings = home.load_settings()
    archive = f"http://127.0.0.1:{settings['orthanc_http_port']}"
    # A token's identity and a user's projects are trusted for this long: a
    # series load does not ask the hub per request, and a revoked token or a
    # stopped server's token stops working within it.
    cache = int(settings.get("data_auth_cache_seconds", 10))
    ctx = Context(archive, (orthanc.ARCHIVE_USER, home.secret("archive_password")),
                  Store(db_url(home)), HubAuth(cache_max_age=cache), cache_seconds=cache,
                  max_stow_bytes=int(settings.get("data_max_stow_mb", 256)) * 1024**2,
                  # The embedded archive's files, read directly for whole series
                  # (setting data_read_archive_files: false turns it off).
                  archive_storage=(home.orthanc_dir / "db"
                                   if settings.get("data_read_archive_files", True) else None),
                  catalog=Catalog(home.path / "data" / "catalog.duckdb"),
                  thumbnails=ThumbnailStore(home.path / "data" / "thumbnails"))
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/data/")
    bind = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8890"))
    app = make_app(ctx, prefix)
    ctx.own_host = bind.netloc
    from .sync import ChangeFeed

    from .catalog_sync import CatalogSync

    ctx.catalog_sync = CatalogSync(ctx.archive, archive, ctx.catalog, ctx.store)
    feed = asyncio.create_task(ChangeFeed(ctx.archive, archive, ctx.store,
                                          settings.get("aet", "IMAGINGHUB"),
                                          catalog_sync=ctx.catalog_sync).run())
    # A full re-crawl at start (the feed has passed older series) and then daily.
    crawl = asyncio.create_task(ctx.catalog_sync.periodic(
        float(settings.get("catalog_full_sync_hours", 24)) * 3600))
    server = app.listen(bind.port, address=bind.hostname or "127.0.0.1",
                        max_buffer_size=2 * 1024**3)
    logging.getLogger("imaginghub.data").info("data service on %s%s", bind.netloc, prefix)
    await until_stopped()
    feed.cancel()
    crawl.cancel()
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
