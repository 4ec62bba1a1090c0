"""Digest schedules (`DigestScheduleRow`), one a chat."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import col, select

from ..tables import DigestScheduleRow
from .base import Repo


class ScheduleRepo(Repo):
    def set(self, row: DigestScheduleRow) -> None:
        with self.session() as s:
            s.merge(row)
            self.commit(s)

    def get(self, chat_id: int) -> DigestScheduleRow | None:
        with self.session() as s:
            return s.get(DigestScheduleRow, chat_id)

    def all(self) -> list[DigestScheduleRow]:
        with self.session() as s:
            return list(s.exec(select(DigestScheduleRow)))

    def drop(self, chat_id: int) -> bool:
        with self.session() as s:
            result = s.exec(delete(DigestScheduleRow).where(col(DigestScheduleRow.chat_id) == chat_id))
            self.commit(s)
            return result.rowcount == 1
