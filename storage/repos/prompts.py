"""Where a password sent in private goes (`SecretPromptRow`): the question the bot
asked (`ask`, answered by a reply) or the plan whose deep link the user opened (`link`)."""

from __future__ import annotations

from sqlalchemy import delete
from sqlmodel import col, select

from ..tables import SecretPromptRow
from .base import Repo


class PromptRepo(Repo):
    def ask(self, user_id: int, plan_id: str, login: str | None, message_id: int) -> None:
        """The bot asked `user_id` in message `message_id` for the password of `login` (None: the plan's)."""
        with self.session() as s:
            s.add(
                SecretPromptRow(
                    kind="ask", user_id=user_id, message_id=message_id, plan_id=plan_id, login=login
                )
            )
            self.commit(s)

    def asked(self, user_id: int, message_id: int) -> SecretPromptRow | None:
        """The question of message `message_id` to this user, if the bot asked one there."""
        with self.session() as s:
            return s.exec(
                select(SecretPromptRow).where(
                    SecretPromptRow.kind == "ask",
                    SecretPromptRow.user_id == user_id,
                    SecretPromptRow.message_id == message_id,
                )
            ).first()

    def set_link(self, user_id: int, plan_id: str) -> None:
        """The user opened the deep link of `plan_id`: their next password goes there (one link a user)."""
        with self.session() as s:
            s.exec(
                delete(SecretPromptRow).where(
                    col(SecretPromptRow.kind) == "link", col(SecretPromptRow.user_id) == user_id
                )
            )
            s.add(SecretPromptRow(kind="link", user_id=user_id, plan_id=plan_id))
            self.commit(s)

    def link(self, user_id: int) -> str | None:
        with self.session() as s:
            return s.exec(
                select(SecretPromptRow.plan_id)
                .where(SecretPromptRow.kind == "link", SecretPromptRow.user_id == user_id)
                .order_by(col(SecretPromptRow.id).desc())
            ).first()

    def drop(self, plan_id: str) -> int:
        """Every question and link of the plan."""
        with self.session() as s:
            result = s.exec(delete(SecretPromptRow).where(col(SecretPromptRow.plan_id) == plan_id))
            self.commit(s)
            return result.rowcount
