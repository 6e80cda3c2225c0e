"""The site's record of everything that left it: one row per output of a
round, with the SHA-256 and size of exactly the bytes the egress gate
released (SQLAlchemy: SQLite at a site on one machine, PostgreSQL in the
chart). A site's admin compares them with what the coordinator says it
received; nothing else about the round (its notebook, its log, its series)
is kept here, those stay with the job."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import DateTime, Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from .egress import Released


class Base(DeclarativeBase):
    pass


class EgressRecord(Base):
    __tablename__ = "egress"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    coordinator: Mapped[str] = mapped_column(String(64), index=True)
    study: Mapped[str] = mapped_column(String(64), index=True)
    round: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    suppressed: Mapped[int] = mapped_column(Integer, default=0)

    def model(self) -> dict:
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=dt.timezone.utc)
        return {"at": at.isoformat(), "coordinator": self.coordinator, "study": self.study,
                "round": self.round, "job": self.job_id, "name": self.name,
                "kind": self.kind, "sha256": self.sha256, "bytes": self.bytes,
                "suppressed": self.suppressed}


class Audit:
    def __init__(self, url: str):
        self.engine = create_engine(url, future=True)
        Base.metadata.create_all(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def record(self, coordinator: str, study: str, round_number: int, job_id: str,
               released: Iterable[Released]) -> None:
        """What one round released, all rows at once (before it is sent)."""
        now = dt.datetime.now(dt.timezone.utc)
        with self.session.begin() as s:
            s.add_all([EgressRecord(at=now, coordinator=coordinator, study=study,
                                    round=round_number, job_id=job_id, name=r.name,
                                    kind=r.kind, sha256=r.sha256, bytes=r.size,
                                    suppressed=len(r.suppressed)) for r in released])

    def rows(self, coordinator: str | None = None, study: str | None = None) -> list[dict]:
        """Every output that left, oldest first (of one study, if named)."""
        q = select(EgressRecord)
        if coordinator is not None:
            q = q.where(EgressRecord.coordinator == coordinator)
        if study is not None:
            q = q.where(EgressRecord.study == study)
        with self.session() as s:
            return [r.model() for r in s.scalars(q.order_by(EgressRecord.id))]
