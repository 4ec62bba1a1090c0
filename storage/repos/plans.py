"""Plans (`PlanRow`): their status moves compare-and-set (`transition`), so two
processes approving or applying one plan at once cannot both win."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, update
from sqlmodel import col, select

from ..tables import PlanRow, utcnow
from .base import Repo


class PlanRepo(Repo):
    def add(self, row: PlanRow) -> None:
        """Insert a plan whose id is drawn already (see `Repos.add_plan`: with its locks)."""
        with self.session() as s:
            s.add(row)
            self.commit(s)

    def get(self, plan_id: str) -> PlanRow | None:
        with self.session() as s:
            return s.get(PlanRow, plan_id)

    def transition(self, plan_id: str, from_status: Iterable[str], to_status: str, **fields: Any) -> bool:
        """Move the plan to `to_status` only if it is in one of `from_status` now."""
        values = {"status": to_status, "updated_at": utcnow(), **fields}
        with self.session() as s:
            result = s.exec(
                update(PlanRow)
                .where(col(PlanRow.id) == plan_id, col(PlanRow.status).in_(list(from_status)))
                .values(**values)
            )
            self.commit(s)
            return result.rowcount == 1

    def update(self, plan_id: str, **fields: Any) -> None:
        with self.session() as s:
            s.exec(update(PlanRow).where(col(PlanRow.id) == plan_id).values(updated_at=utcnow(), **fields))
            self.commit(s)

    def renew_lease(self, plan_id: str, owner: str, until: datetime) -> bool:
        """Extend the apply lease this process holds; False when it holds it no more."""
        with self.session() as s:
            result = s.exec(
                update(PlanRow)
                .where(
                    col(PlanRow.id) == plan_id,
                    col(PlanRow.status) == "applying",
                    col(PlanRow.lease_owner) == owner,
                )
                .values(lease_until=until)
            )
            self.commit(s)
            return result.rowcount == 1

    def take_lease(
        self, plan_id: str, owner: str, until: datetime, now: datetime, dead: Iterable[str] = ()
    ) -> bool:
        """Take over the apply of a plan whose lease expired, or whose owner is known dead."""
        expired = or_(
            col(PlanRow.lease_until).is_(None),
            col(PlanRow.lease_until) < now,
            col(PlanRow.lease_owner).in_(list(dead)),
        )
        with self.session() as s:
            result = s.exec(
                update(PlanRow)
                .where(col(PlanRow.id) == plan_id, col(PlanRow.status) == "applying", expired)
                .values(lease_owner=owner, lease_until=until)
            )
            self.commit(s)
            return result.rowcount == 1

    def find(
        self,
        *,
        pbx: str | None = None,
        status: Iterable[str] | None = None,
        proposer: int | None = None,
        card_stale: bool | None = None,
        limit: int = 50,
    ) -> list[PlanRow]:
        """Plans, newest first."""
        query = select(PlanRow).order_by(col(PlanRow.created_at).desc()).limit(limit)
        if card_stale is not None:
            query = query.where(PlanRow.card_stale == card_stale)
        if pbx is not None:
            query = query.where(PlanRow.pbx == pbx)
        if proposer is not None:
            query = query.where(PlanRow.proposer_id == proposer)
        if status is not None:
            query = query.where(col(PlanRow.status).in_(list(status)))
        with self.session() as s:
            return list(s.exec(query))

    def due(self, statuses: Iterable[str], now: datetime) -> list[PlanRow]:
        """Open plans past their expiry."""
        with self.session() as s:
            return list(
                s.exec(
                    select(PlanRow).where(col(PlanRow.status).in_(list(statuses)), PlanRow.expires_at <= now)
                )
            )

    def count_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(select(PlanRow.status, func.count()).group_by(PlanRow.status))
            return {status: n for status, n in rows}
