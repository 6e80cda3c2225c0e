"""Run the job service: ``python -m imaginghub.hub.services.jobs``.

JupyterHub starts it as a managed service (and restarts it if it stops).
``IMAGINGHUB_HOME`` names the state directory; the jobs live in its
``jobs/`` folder (0700): ``jobs.sqlite`` (or ``jobs_db_url``), the kept
notebooks and one folder per run. ``IMAGINGHUB_USER_ENV`` (JSON) is what a
user's server gets in its environment, and so what a job gets;
``IMAGINGHUB_JOB_SCOPES`` (JSON) the scopes of a job's token. It runs as
the service account in multi-user mode; the job starter (:mod:`.starter`,
run by ``imaginghub up``) starts each job as its user.

Its settings are ``c.JobService`` of the site's configuration (see
:class:`.config.JobService`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from urllib.parse import urlsplit

from jupyterhub.services.auth import HubAuth

from ...state import Home
from .. import run, until_stopped
from ..identity import Users
from .app import Context, make_app
from .config import JobService
from .db import JobStore
from .runner import runner
from .scheduler import Scheduler
from .workflows import Registry


def db_url(home: Home) -> str:
    return (os.environ.get("IMAGINGHUB_JOBS_DB_URL") or JobService(config=home.config()).db_url
            or f"sqlite:///{home.path / 'jobs' / 'jobs.sqlite'}")


async def serve() -> None:
    os.umask(0o077)
    home = Home(os.environ["IMAGINGHUB_HOME"])
    root = home.path / "jobs"
    root.mkdir(mode=0o700, exist_ok=True)
    conf = JobService(config=home.config())
    hub_auth = HubAuth(cache_max_age=conf.auth_cache_seconds)
    user_env = json.loads(os.environ.get("IMAGINGHUB_USER_ENV") or "{}")
    scopes = json.loads(os.environ.get("IMAGINGHUB_JOB_SCOPES") or
                        '["access:services!service=data"]')
    if not user_env and os.environ.get("IMAGINGHUB_CHART_VALUES"):
        # in the Helm chart: what users' servers get, from the rendered values
        from ...chart import Rendered, server_settings

        settings = server_settings(Rendered.load(os.environ["IMAGINGHUB_CHART_VALUES"]))
        user_env = settings.environment()
        scopes = [s for s in settings.token_scopes() if s.startswith("access:services")]
    data_api = user_env.get("IMAGINGHUB_DICOMWEB_URL", "").rsplit("/dicom-web", 1)[0] + "/api"
    scheduler = Scheduler(
        JobStore(db_url(home)), Registry(conf.workflow_dirs),
        runner(conf.runner, home, home.config()), root,
        hub_api=hub_auth.api_url, service_token=hub_auth.api_token, data_api=data_api,
        users_dir=home.users_dir, user_env=user_env, token_scopes=scopes,
        max_running=conf.running_limit(), max_per_user=conf.max_running_per_user,
        time_limit=int(conf.time_limit_minutes * 60),
        tick=0.25)
    users = Users(hub_auth, conf.auth_cache_seconds)
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/jobs/")
    bind = urlsplit(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8891"))
    app = make_app(Context(scheduler, users), prefix)
    server = app.listen(bind.port, address=bind.hostname or "127.0.0.1",
                        max_buffer_size=257 * 1024**2)  # a job's files (FilesHandler)
    loop_task = asyncio.create_task(scheduler.run())
    logging.getLogger("imaginghub.jobs").info("job service on %s%s", bind.netloc, prefix)
    await until_stopped()
    # Running jobs keep running (they are in sessions of their own): a
    # restarted service adopts them; a stopped workspace ends them.
    loop_task.cancel()
    server.stop()
    await scheduler.aclose()
    await users.aclose()


def main() -> None:
    run(serve)


if __name__ == "__main__":
    main()
