"""Sealed SIP passwords of open plans (`SecretRow`), one a login."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..tables import SecretRow, utcnow
from .base import Repo


class SecretRepo(Repo):
    def put_all(self, plan_id: str, tokens: Mapping[str, str]) -> None:
        with self.session() as s:
            s.add_all(SecretRow(plan_id=plan_id, login=login, token=token) for login, token in tokens.items())
            self.commit(s)

    def of(self, plan_id: str) -> dict[str, str]:
        """login -> sealed password."""
        with self.session() as s:
            rows = s.exec(select(SecretRow).where(SecretRow.plan_id == plan_id))
            return {row.login: row.token for row in rows}

    def move(self, from_plan: str, to_plan: str) -> None:
        with self.session() as s:
            s.exec(update(SecretRow).where(col(SecretRow.plan_id) == from_plan).values(plan_id=to_plan))
            self.commit(s)

    def erase_all(self, plan_id: str) -> int:
        with self.session() as s:
            result = s.exec(delete(SecretRow).where(col(SecretRow.plan_id) == plan_id))
            self.commit(s)
            return result.rowcount

    def put(self, plan_id: str, login: str, token: str, *, replace: bool) -> bool | None:
        """One login's sealed password. Without `replace`: None when the login has one already
        (the insert is the check, so two processes never both win). With it: True when an
        earlier password was replaced. Its own transaction always (the insert may fail)."""
        with Session(self.engine, expire_on_commit=False) as s:
            s.add(SecretRow(plan_id=plan_id, login=login, token=token))
            try:
                s.commit()
                return False
            except IntegrityError:
                s.rollback()
            if not replace:
                return None
            s.exec(
                update(SecretRow)
                .where(col(SecretRow.plan_id) == plan_id, col(SecretRow.login) == login)
                .values(token=token, at=utcnow())
            )
            s.commit()
            return True

    def erase(self, plan_id: str, login: str) -> bool:
        with self.session() as s:
            result = s.exec(
                delete(SecretRow).where(col(SecretRow.plan_id) == plan_id, col(SecretRow.login) == login)
            )
            self.commit(s)
            return result.rowcount == 1
