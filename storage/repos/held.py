"""Held passwords (`HeldSecretRow`): sealed, waiting for their user to pick the plan."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlmodel import col, select

from ..tables import HeldSecretRow
from .base import Repo


class HeldSecretRepo(Repo):
    def hold(self, user_id: int, token: str, choices: list[list[str]]) -> int:
        """Hold a sealed password; returns its id."""
        row = HeldSecretRow(user_id=user_id, token=token, choices=choices)
        with self.session() as s:
            s.add(row)
            self.commit(s)
            assert row.id is not None  # the database numbered it on commit
            return row.id

    def set_message(self, hold_id: int, message_id: int) -> None:
        with self.session() as s:
            s.exec(
                update(HeldSecretRow).where(col(HeldSecretRow.id) == hold_id).values(message_id=message_id)
            )
            self.commit(s)

    def get(self, hold_id: int) -> HeldSecretRow | None:
        with self.session() as s:
            return s.get(HeldSecretRow, hold_id)

    def take(self, hold_id: int, user_id: int) -> HeldSecretRow | None:
        """Remove and return the user's held password; None when it is gone (picked, by
        another press or process, or purged) or not theirs."""
        with self.session() as s:
            row = s.exec(
                select(HeldSecretRow).where(HeldSecretRow.id == hold_id, HeldSecretRow.user_id == user_id)
            ).first()
            if row is None:
                return None
            result = s.exec(delete(HeldSecretRow).where(col(HeldSecretRow.id) == hold_id))
            self.commit(s)
            return row if result.rowcount == 1 else None

    def purge(self, before: datetime) -> int:
        with self.session() as s:
            result = s.exec(delete(HeldSecretRow).where(col(HeldSecretRow.at) < before))
            self.commit(s)
            return result.rowcount
