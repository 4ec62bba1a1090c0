"""Digest runs (`DigestRunRow`): one a chat and period, whichever process claims it first."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..tables import DigestRunRow
from .base import Repo


class DigestRepo(Repo):
    def claim(self, chat_id: int, period_key: str) -> int | None:
        """Take the (chat, period) row; None when another run (or process) has it already.
        Its own transaction always (the insert may fail)."""
        row = DigestRunRow(chat_id=chat_id, period_key=period_key)
        with Session(self.engine, expire_on_commit=False) as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return None
            return row.id

    def finish(self, run_id: int, *, posted: bool, state: str) -> None:
        with self.session() as s:
            s.exec(
                update(DigestRunRow).where(col(DigestRunRow.id) == run_id).values(posted=posted, state=state)
            )
            self.commit(s)

    def last(self, chat_id: int, *, before: int | None = None) -> DigestRunRow | None:
        """The newest earlier run of this chat (the one before `before`)."""
        query = (
            select(DigestRunRow).where(DigestRunRow.chat_id == chat_id).order_by(col(DigestRunRow.id).desc())
        )
        if before is not None:
            query = query.where(col(DigestRunRow.id) < before)
        with self.session() as s:
            return s.exec(query.limit(1)).first()
