"""The job service's settings (light: read by ``imaginghub up`` and
``imaginghub config`` without the service's dependencies)."""

from __future__ import annotations

import os

from traitlets import Float, Integer, List, Unicode

from .. import HubService


class JobService(HubService):
    """The job service: workflow runs (papermill) queued, run as their user
    and kept with their provenance."""

    db_url = Unicode("", help="""
        The service's database (jobs and their provenance), as an SQLAlchemy
        URL. Empty: SQLite in the state directory. $IMAGINGHUB_JOBS_DB_URL,
        when set, wins.""").tag(config=True)
    workflow_dirs = List(Unicode(), help="""
        More folders of workflow notebooks, after imaginghub's own (the first
        workflow of a name wins). A folder that does not exist stops 'up'
        with its name.""").tag(config=True)
    runner = Unicode("local", help="""
        The runner of jobs, by its name in the entry-point group
        imaginghub.job_runners (local: processes of this
        machine).""").tag(config=True)
    max_running = Integer(0, help="""
        Jobs running at once, all users together (0: the number of this
        machine's CPUs); the rest wait in the queue.""").tag(config=True)
    max_running_per_user = Integer(2, help="""
        Jobs of one user running at once.""").tag(config=True)
    time_limit_minutes = Float(360, help="""
        The longest a job may run; it is stopped after it, and marked
        failed.""").tag(config=True)

    def running_limit(self) -> int:
        return self.max_running or os.cpu_count() or 2
