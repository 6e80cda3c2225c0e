"""Cohorts: named sets of series inside one project, shared with its members,
reproducible: every save makes a new immutable version (``lung-ct@3``) with
the query that made it, the frozen list of series, a hash of that list, who
saved it and when. Kept in the service's SQL database beside the project
mapping (SQLite or PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json
import re

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, func, select
from sqlalchemy.orm import Mapped, mapped_column

from ....kernels.workflow import series_hash
from .db import Base, Store, _now
from .errors import CohortError

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
MAX_SERIES = 200_000


class CohortVersion(Base):
    __tablename__ = "cohort_versions"
    __table_args__ = (UniqueConstraint("project", "name", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    query: Mapped[str] = mapped_column(Text, default="{}")
    series: Mapped[str] = mapped_column(Text)  # JSON list, sorted
    series_hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    note: Mapped[str] = mapped_column(Text, default="")
    saved_by: Mapped[str] = mapped_column(String(255))
    saved_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)

    def summary(self) -> dict:
        return {"project": self.project, "name": self.name, "version": self.version,
                "ref": f"{self.name}@{self.version}", "size": self.size,
                "series_hash": self.series_hash, "saved_by": self.saved_by,
                "saved_at": self.saved_at.isoformat(), "note": self.note,
                "query": json.loads(self.query)}

    def full(self) -> dict:
        return {**self.summary(), "series": json.loads(self.series)}


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"lung-ct"`` or ``"lung-ct@3"`` -> (name, version or None)."""
    name, _, version = ref.partition("@")
    if not NAME.fullmatch(name):
        raise CohortError(f"cohort name {name!r}: use lower-case letters, digits, '-', '_', '.'"
                          " (at most 63)")
    if version and not version.isdigit():
        raise CohortError(f"cohort version {version!r}: a whole number, as in {name}@2")
    return name, int(version) if version else None


class Cohorts:
    def __init__(self, store: Store):
        self.store = store
        Base.metadata.create_all(store.engine)

    def save(self, project: str, name: str, series: list[str], query: dict, by: str,
             note: str = "") -> dict:
        """A new version of ``project``'s cohort ``name``; returns its summary."""
        name, version = parse_ref(name)
        if version is not None:
            raise CohortError("versions are made by saving: give the name without @N")
        uids = sorted(set(series))
        if len(uids) > MAX_SERIES:
            raise CohortError(f"a cohort holds at most {MAX_SERIES} series ({len(uids)} given)")
        with self.store.session.begin() as s:
            last = s.scalar(select(func.max(CohortVersion.version)).where(
                CohortVersion.project == project, CohortVersion.name == name)) or 0
            row = CohortVersion(project=project, name=name, version=last + 1,
                                query=json.dumps(query or {}, sort_keys=True),
                                series=json.dumps(uids), series_hash=series_hash(uids),
                                size=len(uids), note=note[:2000], saved_by=by)
            s.add(row)
        return row.summary()

    def get(self, projects: set[str] | None, project: str, ref: str) -> dict | None:
        name, version = parse_ref(ref)
        if projects is not None and project not in projects:
            return None
        with self.store.session() as s:
            q = select(CohortVersion).where(CohortVersion.project == project,
                                            CohortVersion.name == name)
            q = (q.where(CohortVersion.version == version) if version is not None
                 else q.order_by(CohortVersion.version.desc()))
            row = s.scalars(q.limit(1)).first()
            return row.full() if row else None

    def list(self, projects: set[str] | None) -> list[dict]:
        """Every version of every cohort in ``projects`` (None: all), newest first."""
        with self.store.session() as s:
            q = select(CohortVersion).order_by(CohortVersion.project, CohortVersion.name,
                                               CohortVersion.version.desc())
            if projects is not None:
                q = q.where(CohortVersion.project.in_(sorted(projects)))
            return [r.summary() for r in s.scalars(q)]
