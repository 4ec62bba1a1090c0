"""The audit trail (`AuditRow`): written once, never changed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from ..tables import AuditRow
from .base import Repo


class AuditRepo(Repo):
    def add(self, *events: AuditRow) -> None:
        """The events, in one transaction."""
        with self.session() as s:
            s.add_all(events)
            self.commit(s)

    def trail(self, *, plan_id: str | None = None, limit: int = 1000) -> list[AuditRow]:
        """Events oldest first, of one plan or all."""
        query = select(AuditRow).order_by(col(AuditRow.id)).limit(limit)
        if plan_id is not None:
            query = query.where(AuditRow.plan_id == plan_id)
        with self.session() as s:
            return list(s.exec(query))

    def since(self, pbx: str, since: datetime, events: Iterable[str]) -> list[AuditRow]:
        """A PBX's events of these kinds from `since` on, oldest first."""
        with self.session() as s:
            return list(
                s.exec(
                    select(AuditRow)
                    .where(AuditRow.pbx == pbx, AuditRow.at >= since, col(AuditRow.event).in_(list(events)))
                    .order_by(col(AuditRow.id))
                )
            )

    def get(self, event_id: int) -> AuditRow | None:
        with self.session() as s:
            return s.get(AuditRow, event_id)

    def latest(self, pbx: str, events: Iterable[str], *, limit: int = 20) -> list[AuditRow]:
        """A PBX's newest events of these kinds, newest first."""
        with self.session() as s:
            return list(
                s.exec(
                    select(AuditRow)
                    .where(AuditRow.pbx == pbx, col(AuditRow.event).in_(list(events)))
                    .order_by(col(AuditRow.id).desc())
                    .limit(limit)
                )
            )

    def count(self) -> int:
        with self.session() as s:
            return s.exec(select(func.count()).select_from(AuditRow)).one()
