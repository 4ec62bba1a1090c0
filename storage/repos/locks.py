"""Locks (`LockRow`): a login of a PBX is held by at most one open plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete
from sqlmodel import col, select

from ..tables import LockRow
from .base import Repo


@dataclass(frozen=True, slots=True)
class Conflict:
    """An open plan holding some of the logins a new plan wants: which of them, since when."""

    plan_id: str
    logins: list[str]  # only those both plans want, sorted
    since: datetime


class LockRepo(Repo):
    def holder(self, pbx: str, logins: Iterable[str]) -> str | None:
        """The id of a plan holding one of the logins, or None."""
        conflict = self.conflict(pbx, logins)
        return conflict.plan_id if conflict is not None else None

    def conflict(self, pbx: str, logins: Iterable[str]) -> Conflict | None:
        """The open plan holding one of the logins (the earliest lock's, if several plans
        hold some), with the logins it holds of these, or None."""
        with self.session() as s:
            rows = s.exec(
                select(LockRow).where(LockRow.pbx == pbx, col(LockRow.login).in_(list(logins)))
            ).all()
        if not rows:
            return None
        first = min(rows, key=lambda r: (r.at, r.plan_id))
        mine = [r for r in rows if r.plan_id == first.plan_id]
        return Conflict(first.plan_id, sorted(r.login for r in mine), min(r.at for r in mine))

    def take(self, pbx: str, logins: Iterable[str], plan_id: str) -> None:
        """Lock the logins for the plan (a login locked already fails the commit)."""
        with self.session() as s:
            s.add_all(LockRow(pbx=pbx, login=login, plan_id=plan_id) for login in logins)
            self.commit(s)

    def release(self, plan_id: str) -> None:
        with self.session() as s:
            s.exec(delete(LockRow).where(col(LockRow.plan_id) == plan_id))
            self.commit(s)
