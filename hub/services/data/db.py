"""The data service's state: which series belong to which project, and the
audit trail (SQLAlchemy; SQLite by default, PostgreSQL in production)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import DateTime, Integer, String, Text, create_engine, delete, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class SeriesProject(Base):
    """Series ``series_uid`` (of study ``study_uid``) belongs to ``project``."""

    __tablename__ = "series_projects"
    series_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    added_by: Mapped[str] = mapped_column(String(255), default="")
    added_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)
    user: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(64))
    projects: Mapped[str] = mapped_column(Text, default="")
    uids: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[int] = mapped_column(Integer)


class Store:
    """Reads and writes the mapping and the audit trail."""

    def __init__(self, url: str):
        self.engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # -- mapping --------------------------------------------------------------
    def assign(self, series: Iterable[tuple[str, str]], project: str, by: str = "") -> int:
        """Put ``(study_uid, series_uid)`` pairs into ``project``; returns how many were new."""
        added = 0
        with self.session.begin() as s:
            for study_uid, series_uid in series:
                if s.get(SeriesProject, (series_uid, project)) is None:
                    s.add(SeriesProject(series_uid=series_uid, project=project,
                                        study_uid=study_uid, added_by=by))
                    added += 1
        return added

    def unassign(self, project: str, *, series_uids: Iterable[str] = (),
                 study_uids: Iterable[str] = ()) -> int:
        series_uids, study_uids = list(series_uids), list(study_uids)
        with self.session.begin() as s:
            n = 0
            if series_uids:
                n += s.execute(delete(SeriesProject).where(
                    SeriesProject.project == project,
                    SeriesProject.series_uid.in_(series_uids))).rowcount
            if study_uids:
                n += s.execute(delete(SeriesProject).where(
                    SeriesProject.project == project,
                    SeriesProject.study_uid.in_(study_uids))).rowcount
        return n

    def visible_series(self, projects: set[str] | None, series_uids: Iterable[str]) -> set[str]:
        """Which of ``series_uids`` the projects may see (``None``: all projects)."""
        uids = list(set(series_uids))
        if not uids:
            return set()
        out: set[str] = set()
        with self.session() as s:
            for i in range(0, len(uids), 500):
                q = select(SeriesProject.series_uid).where(
                    SeriesProject.series_uid.in_(uids[i:i + 500]))
                if projects is not None:
                    q = q.where(SeriesProject.project.in_(projects))
                out.update(s.scalars(q))
        return out

    def visible_studies(self, projects: set[str] | None,
                        study_uids: Iterable[str]) -> dict[str, int]:
        """{study: number of its series the projects may see} for visible studies."""
        uids = list(set(study_uids))
        out: dict[str, int] = {}
        with self.session() as s:
            for i in range(0, len(uids), 500):
                q = (select(SeriesProject.study_uid,
                            func.count(func.distinct(SeriesProject.series_uid)))
                     .where(SeriesProject.study_uid.in_(uids[i:i + 500]))
                     .group_by(SeriesProject.study_uid))
                if projects is not None:
                    q = q.where(SeriesProject.project.in_(projects))
                out.update(dict(s.execute(q).all()))
        return out

    def series_of_study(self, projects: set[str] | None, study_uid: str) -> list[str]:
        with self.session() as s:
            q = select(SeriesProject.series_uid).where(SeriesProject.study_uid == study_uid)
            if projects is not None:
                q = q.where(SeriesProject.project.in_(projects))
            return sorted(set(s.scalars(q)))

    def is_visible(self, projects: set[str] | None, study_uid: str, series_uid: str) -> bool:
        with self.session() as s:
            q = select(SeriesProject.series_uid).where(
                SeriesProject.series_uid == series_uid, SeriesProject.study_uid == study_uid)
            if projects is not None:
                q = q.where(SeriesProject.project.in_(projects))
            return s.scalars(q.limit(1)).first() is not None

    def study_of(self, series_uid: str) -> str | None:
        with self.session() as s:
            return s.scalars(select(SeriesProject.study_uid).where(
                SeriesProject.series_uid == series_uid).limit(1)).first()

    def projects_of(self, series_uid: str) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(SeriesProject.project)
                                 .where(SeriesProject.series_uid == series_uid)))

    def project_summary(self) -> dict[str, dict]:
        with self.session() as s:
            rows = s.execute(select(SeriesProject.project,
                                    func.count(func.distinct(SeriesProject.study_uid)),
                                    func.count(SeriesProject.series_uid))
                             .group_by(SeriesProject.project)).all()
        return {p: {"studies": st, "series": se} for p, st, se in rows}

    # -- audit ----------------------------------------------------------------
    def audit(self, user: str, action: str, projects: Iterable[str], uids: Iterable[str],
              status: int) -> None:
        with self.session.begin() as s:
            s.add(AuditEntry(user=user, action=action, projects=",".join(sorted(projects)),
                             uids=",".join(uids), status=status))

    def audit_entries(self, limit: int = 100) -> list[AuditEntry]:
        with self.session() as s:
            return list(s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
