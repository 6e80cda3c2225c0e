"""Run the viewer service: ``python -m imaginghub.hub.services.viewer``.

JupyterHub starts it as a managed service (JUPYTERHUB_API_TOKEN,
JUPYTERHUB_SERVICE_URL, JUPYTERHUB_SERVICE_PREFIX, the OAuth client's
settings); ``IMAGINGHUB_HOME`` names the state directory (the site's
``c.ViewerService``) and ``IMAGINGHUB_DATA_URL`` the data service.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubOAuth

from ...state import Home
from .. import run, until_stopped
from .app import Context, make_app
from .config import ViewerService


async def serve() -> None:
    os.umask(0o077)
    home = Home(os.environ["IMAGINGHUB_HOME"])
    conf = ViewerService(config=home.config())
    hub_auth = HubOAuth(cache_max_age=conf.auth_cache_seconds)
    ctx = Context(conf.app_path(), os.environ["IMAGINGHUB_DATA_URL"], hub_auth, conf.title)
    bind = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8893"))
    server = make_app(ctx).listen(bind.port, address=bind.hostname or "127.0.0.1")
    log = logging.getLogger("imaginghub.viewer")
    if ctx.index is None:
        log.warning("the OHIF app is not installed in %s: the viewer says so to users; run "
                    "'make setup'", ctx.app_dir)
    log.info("viewer service on %s/services/viewer/", bind.netloc)
    await until_stopped()
    server.stop()
    await ctx.http.aclose()


def main() -> None:
    run(serve)


if __name__ == "__main__":
    main()
