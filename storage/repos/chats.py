"""Chats bound to a PBX (`ChatRow`) with `/pbx`."""

from __future__ import annotations

from sqlmodel import select

from ..tables import ChatRow, utcnow
from .base import Repo


class ChatRepo(Repo):
    def bind(self, chat_id: int, pbx: str, *, title: str = "", by: int | None = None) -> None:
        with self.session() as s:
            row = s.get(ChatRow, chat_id)
            if row is None:
                s.add(ChatRow(chat_id=chat_id, pbx=pbx, title=title, bound_by=by))
            else:
                row.pbx, row.title, row.bound_by, row.at = pbx, title or row.title, by, utcnow()
                s.add(row)
            self.commit(s)

    def pbx_of(self, chat_id: int) -> str | None:
        with self.session() as s:
            row = s.get(ChatRow, chat_id)
            return row.pbx if row else None

    def groups_of(self, pbx: str) -> list[int]:
        """The group chats bound to the PBX."""
        with self.session() as s:
            return list(s.exec(select(ChatRow.chat_id).where(ChatRow.pbx == pbx, ChatRow.chat_id < 0)))
