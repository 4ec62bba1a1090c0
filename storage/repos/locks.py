"""Locks (`LockRow`): a login of a PBX is held by at most one open plan."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete
from sqlmodel import col, select

from ..tables import LockRow
from .base import Repo


class LockRepo(Repo):
    def holder(self, pbx: str, logins: Iterable[str]) -> str | None:
        """The id of a plan holding one of the logins, or None."""
        with self.session() as s:
            return s.exec(
                select(LockRow.plan_id).where(LockRow.pbx == pbx, col(LockRow.login).in_(list(logins)))
            ).first()

    def take(self, pbx: str, logins: Iterable[str], plan_id: str) -> None:
        """Lock the logins for the plan (a login locked already fails the commit)."""
        with self.session() as s:
            s.add_all(LockRow(pbx=pbx, login=login, plan_id=plan_id) for login in logins)
            self.commit(s)

    def release(self, plan_id: str) -> None:
        with self.session() as s:
            s.exec(delete(LockRow).where(col(LockRow.plan_id) == plan_id))
            self.commit(s)
