"""The job service's records: every run with its provenance (SQLAlchemy;
SQLite by default, PostgreSQL in production).

A job is one papermill run of a workflow notebook, or, for a workflow that
runs once per series, a parent whose children are those runs. Its record
keeps what went in (the notebook's SHA-256, the parameters as injected, the
cohort's version and a hash of its series, the package versions), what
happened (times, status, the reason it ended) and where the executed
notebook, logs and artefacts are.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable

from sqlalchemy import (Boolean, DateTime, Float, Integer, String, Text, create_engine, or_,
                        select, update)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
CANCELLED, TIMED_OUT, INTERRUPTED = "cancelled", "timed_out", "interrupted"
ACTIVE = (QUEUED, RUNNING)
FINISHED = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT, INTERRUPTED)

log = logging.getLogger("imaginghub.jobs")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    parent_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    user: Mapped[str] = mapped_column(String(255), index=True)
    project: Mapped[str] = mapped_column(String(64), default="", index=True)
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    workflow: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(255), default="")
    notebook_path: Mapped[str] = mapped_column(Text)
    notebook_sha256: Mapped[str] = mapped_column(String(64))
    parameters: Mapped[str] = mapped_column(Text, default="{}")  # JSON, as injected
    cohort: Mapped[str] = mapped_column(String(255), default="")  # "name@version"
    cohort_series_hash: Mapped[str] = mapped_column(String(64), default="")
    series_count: Mapped[int] = mapped_column(Integer, default=0)
    packages: Mapped[str] = mapped_column(Text, default="{}")  # JSON {name: version}
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    failed_cell: Mapped[int | None] = mapped_column(Integer, default=None)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    time_limit: Mapped[int] = mapped_column(Integer, default=0)  # seconds
    runner: Mapped[str] = mapped_column(String(32), default="local")
    handle: Mapped[str] = mapped_column(Text, default="")  # the runner's (a pid and its start)
    token_id: Mapped[str] = mapped_column(String(64), default="")
    rerun_of: Mapped[str | None] = mapped_column(String(32), default=None)
    per_series: Mapped[bool] = mapped_column(Boolean, default=False)
    # JSON: what one run needs (workflows.check_resources), the workflow's
    # with the job's own on top; a runner that places jobs (Kubernetes) uses it
    resources: Mapped[str] = mapped_column(Text, default="{}")
    # JSON: files given with the job ({name: SHA-256}), kept by their hash in
    # the service's inputs folder and put in the run's work/inputs/ folder
    inputs: Mapped[str] = mapped_column(Text, default="{}")

    def model(self, children: list[Job] | None = None) -> dict:
        """The job as the REST API shows it."""
        def iso(t):
            if t is None:
                return None
            if t.tzinfo is None:  # SQLite hands back naive times
                t = t.replace(tzinfo=dt.timezone.utc)
            return t.isoformat()

        out = {
            "id": self.id, "parent": self.parent_id, "user": self.user, "project": self.project,
            "shared": self.shared, "workflow": self.workflow, "title": self.title,
            "notebook": {"path": self.notebook_path, "sha256": self.notebook_sha256},
            "parameters": json.loads(self.parameters),
            "cohort": ({"ref": self.cohort, "series_hash": self.cohort_series_hash,
                        "project": self.project} if self.cohort else None),
            "series_count": self.series_count, "status": self.status, "reason": self.reason,
            "failed_cell": self.failed_cell, "progress": round(self.progress, 4),
            "submitted": iso(self.submitted_at), "started": iso(self.started_at),
            "ended": iso(self.ended_at), "time_limit": self.time_limit, "runner": self.runner,
            "rerun_of": self.rerun_of, "per_series": self.per_series,
            "resources": json.loads(self.resources or "{}"),
            "inputs": json.loads(self.inputs or "{}"),
            "packages": json.loads(self.packages or "{}"),
        }
        if children is not None:
            counts: dict[str, int] = {}
            for c in children:
                counts[c.status] = counts.get(c.status, 0) + 1
            out["children"] = {"count": len(children), "status": counts,
                               "ids": [c.id for c in children]}
        return out


class JobStore:
    def __init__(self, url: str):
        self.engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)
        self._add_new_columns()
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # columns added after the first release: (name, SQL type and default)
    NEW_COLUMNS = (("resources", "TEXT DEFAULT '{}'"), ("inputs", "TEXT DEFAULT '{}'"))

    def _add_new_columns(self) -> None:
        """A database an older imaginghub made gets the columns added since
        (create_all makes missing tables only); its jobs keep their rows."""
        from sqlalchemy import inspect, text

        have = {c["name"] for c in inspect(self.engine).get_columns("jobs")}
        missing = [(n, t) for n, t in self.NEW_COLUMNS if n not in have]
        if missing:
            with self.engine.begin() as c:
                for name, kind in missing:
                    c.execute(text(f"ALTER TABLE jobs ADD COLUMN {name} {kind}"))
            log.info("jobs database: added the column(s) %s", ", ".join(n for n, _ in missing))

    def add(self, jobs: Iterable[Job]) -> None:
        """Add jobs at once: a fan-out's parent and children all, or none."""
        with self.session.begin() as s:
            s.add_all(list(jobs))

    def get(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def children(self, job_id: str) -> list[Job]:
        with self.session() as s:
            return list(s.scalars(select(Job).where(Job.parent_id == job_id)
                                  .order_by(Job.submitted_at, Job.id)))

    def update(self, job_id: str, *, only_if: Iterable[str] | None = None, **values) -> bool:
        """Set ``values``; with ``only_if``, only while the job's status is one
        of them (False when it was not)."""
        q = update(Job).where(Job.id == job_id)
        if only_if is not None:
            q = q.where(Job.status.in_(list(only_if)))
        with self.session.begin() as s:
            return s.execute(q.values(**values)).rowcount == 1

    def with_status(self, *statuses: str, runnable_only: bool = False) -> list[Job]:
        """Jobs in ``statuses``, oldest first; ``runnable_only`` leaves out
        fan-out parents (they run nothing themselves)."""
        q = select(Job).where(Job.status.in_(statuses))
        if runnable_only:
            q = q.where(or_(Job.per_series.is_(False), Job.parent_id.is_not(None)))
        with self.session() as s:
            return list(s.scalars(q.order_by(Job.submitted_at, Job.id)))

    def visible(self, user: str | None, projects: Iterable[str], *, limit: int = 100,
                offset: int = 0, status: str | None = None, parents_only: bool = True,
                mine_only: bool = False) -> list[Job]:
        """Newest first: the user's own jobs and those shared with their
        projects (``user`` None: everyone's)."""
        q = select(Job)
        if user is not None:
            own = Job.user == user
            projects = list(projects)
            if projects and not mine_only:
                own = or_(own, Job.shared.is_(True) & Job.project.in_(projects))
            q = q.where(own)
        if status:
            q = q.where(Job.status == status)
        if parents_only:
            q = q.where(Job.parent_id.is_(None))
        q = q.order_by(Job.submitted_at.desc(), Job.id.desc()).limit(limit).offset(offset)
        with self.session() as s:
            return list(s.scalars(q))
