"""Repositories: the only code that reads or writes the tables.

Each method is one short transaction. State changes of a plan are
compare-and-set (`transition`), so two processes approving or applying one
plan at once cannot both win.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, delete, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from .tables import (
    ApprovalRow,
    AuditRow,
    ChatRow,
    DigestRunRow,
    DigestScheduleRow,
    HeldSecretRow,
    LockRow,
    PlanRow,
    SecretPromptRow,
    SecretRow,
    utcnow,
)

PLAN_ID_BYTES = 3  # six hex digits: short enough to type in `/undo 7f3a2c`


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ------------------------------------------------------------------ plans

    def add_plan(self, row: PlanRow, logins: Iterable[str] = ()) -> str | None:
        """Insert the plan with a fresh id and lock its logins, all or nothing.
        Returns None, or the id of the open plan that holds one of the logins."""
        logins = sorted(set(logins))
        for _ in range(20):
            row.id = secrets.token_hex(PLAN_ID_BYTES)
            with self.session() as s:
                if s.get(PlanRow, row.id) is not None:
                    continue
                holder = s.exec(
                    select(LockRow.plan_id).where(LockRow.pbx == row.pbx, col(LockRow.login).in_(logins))
                ).first()
                if holder is not None:
                    return holder
                s.add(row)
                s.flush()
                s.add_all(LockRow(pbx=row.pbx, login=login, plan_id=row.id) for login in logins)
                try:
                    s.commit()
                except IntegrityError:
                    s.rollback()
                    holder = self.lock_holder(row.pbx, logins)
                    if holder is not None:
                        return holder
                    continue  # an id collision with a concurrent insert: draw again
                return None
        raise RuntimeError("could not draw a free plan id")

    def lock_holder(self, pbx: str, logins: Iterable[str]) -> str | None:
        with self.session() as s:
            return s.exec(
                select(LockRow.plan_id).where(LockRow.pbx == pbx, col(LockRow.login).in_(list(logins)))
            ).first()

    def release_locks(self, plan_id: str) -> None:
        with self.session() as s:
            s.exec(delete(LockRow).where(col(LockRow.plan_id) == plan_id))
            s.commit()

    def get_plan(self, plan_id: str) -> PlanRow | None:
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
            s.commit()
            return result.rowcount == 1

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
            s.commit()
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
            s.commit()
            return result.rowcount == 1

    def update_plan(self, plan_id: str, **fields: Any) -> None:
        with self.session() as s:
            s.exec(update(PlanRow).where(col(PlanRow.id) == plan_id).values(updated_at=utcnow(), **fields))
            s.commit()

    def plans(
        self,
        *,
        pbx: str | None = None,
        status: Iterable[str] | None = None,
        proposer: int | None = None,
        card_stale: bool | None = None,
        limit: int = 50,
    ) -> list[PlanRow]:
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

    # ------------------------------------------------------------------ approvals

    def add_approval(self, row: ApprovalRow) -> None:
        with self.session() as s:
            s.add(row)
            s.commit()

    def approvals(self, plan_id: str, version: int) -> list[ApprovalRow]:
        with self.session() as s:
            return list(
                s.exec(
                    select(ApprovalRow)
                    .where(ApprovalRow.plan_id == plan_id, ApprovalRow.version == version)
                    .order_by(col(ApprovalRow.id))
                )
            )

    # ------------------------------------------------------------------ audit

    def audit(self, *events: AuditRow) -> None:
        with self.session() as s:
            s.add_all(events)
            s.commit()

    def audit_trail(self, *, plan_id: str | None = None, limit: int = 1000) -> list[AuditRow]:
        query = select(AuditRow).order_by(col(AuditRow.id)).limit(limit)
        if plan_id is not None:
            query = query.where(AuditRow.plan_id == plan_id)
        with self.session() as s:
            return list(s.exec(query))

    def count_audit(self) -> int:
        with self.session() as s:
            return s.exec(select(func.count()).select_from(AuditRow)).one()

    # ------------------------------------------------------------------ secrets

    def put_secrets(self, plan_id: str, tokens: Mapping[str, str]) -> None:
        with self.session() as s:
            s.add_all(SecretRow(plan_id=plan_id, login=login, token=token) for login, token in tokens.items())
            s.commit()

    def secrets(self, plan_id: str) -> dict[str, str]:
        with self.session() as s:
            rows = s.exec(select(SecretRow).where(SecretRow.plan_id == plan_id))
            return {row.login: row.token for row in rows}

    def move_secrets(self, from_plan: str, to_plan: str) -> None:
        with self.session() as s:
            s.exec(update(SecretRow).where(col(SecretRow.plan_id) == from_plan).values(plan_id=to_plan))
            s.commit()

    def erase_secrets(self, plan_id: str) -> int:
        with self.session() as s:
            result = s.exec(delete(SecretRow).where(col(SecretRow.plan_id) == plan_id))
            s.commit()
            return result.rowcount

    def put_secret(self, plan_id: str, login: str, token: str, *, replace: bool) -> bool | None:
        """One login's sealed password. Without `replace`: None when the login has one already
        (the insert is the check, so two processes never both win). With it: True when an
        earlier password was replaced."""
        with self.session() as s:
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

    def erase_secret(self, plan_id: str, login: str) -> bool:
        with self.session() as s:
            result = s.exec(
                delete(SecretRow).where(col(SecretRow.plan_id) == plan_id, col(SecretRow.login) == login)
            )
            s.commit()
            return result.rowcount == 1

    # ------------------------------------------------------------------ where a password goes

    def add_prompt(self, user_id: int, plan_id: str, login: str | None, message_id: int) -> None:
        """The bot asked `user_id` in message `message_id` for the password of `login` (None: the plan's)."""
        with self.session() as s:
            s.add(
                SecretPromptRow(
                    kind="ask", user_id=user_id, message_id=message_id, plan_id=plan_id, login=login
                )
            )
            s.commit()

    def prompt(self, user_id: int, message_id: int) -> SecretPromptRow | None:
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
            s.commit()

    def link(self, user_id: int) -> str | None:
        with self.session() as s:
            return s.exec(
                select(SecretPromptRow.plan_id)
                .where(SecretPromptRow.kind == "link", SecretPromptRow.user_id == user_id)
                .order_by(col(SecretPromptRow.id).desc())
            ).first()

    def drop_prompts(self, plan_id: str) -> int:
        with self.session() as s:
            result = s.exec(delete(SecretPromptRow).where(col(SecretPromptRow.plan_id) == plan_id))
            s.commit()
            return result.rowcount

    def hold_secret(self, user_id: int, token: str, choices: list[list[str]]) -> int:
        """A sealed password waiting for its user to pick the plan; returns its id."""
        row = HeldSecretRow(user_id=user_id, token=token, choices=choices)
        with self.session() as s:
            s.add(row)
            s.commit()
            assert row.id is not None  # the database numbered it on commit
            return row.id

    def set_hold_message(self, hold_id: int, message_id: int) -> None:
        with self.session() as s:
            s.exec(
                update(HeldSecretRow).where(col(HeldSecretRow.id) == hold_id).values(message_id=message_id)
            )
            s.commit()

    def held(self, hold_id: int) -> HeldSecretRow | None:
        with self.session() as s:
            return s.get(HeldSecretRow, hold_id)

    def take_held(self, hold_id: int, user_id: int) -> HeldSecretRow | None:
        """Remove and return the user's held password; None when it is gone (picked, by
        another press or process, or purged) or not theirs."""
        with self.session() as s:
            row = s.exec(
                select(HeldSecretRow).where(HeldSecretRow.id == hold_id, HeldSecretRow.user_id == user_id)
            ).first()
            if row is None:
                return None
            result = s.exec(delete(HeldSecretRow).where(col(HeldSecretRow.id) == hold_id))
            s.commit()
            return row if result.rowcount == 1 else None

    def purge_held(self, before: datetime) -> int:
        with self.session() as s:
            result = s.exec(delete(HeldSecretRow).where(col(HeldSecretRow.at) < before))
            s.commit()
            return result.rowcount

    # ------------------------------------------------------------------ chats

    def bind_chat(self, chat_id: int, pbx: str, *, title: str = "", by: int | None = None) -> None:
        with self.session() as s:
            row = s.get(ChatRow, chat_id)
            if row is None:
                s.add(ChatRow(chat_id=chat_id, pbx=pbx, title=title, bound_by=by))
            else:
                row.pbx, row.title, row.bound_by, row.at = pbx, title or row.title, by, utcnow()
                s.add(row)
            s.commit()

    def chat_pbx(self, chat_id: int) -> str | None:
        with self.session() as s:
            row = s.get(ChatRow, chat_id)
            return row.pbx if row else None

    def chats_of(self, pbx: str) -> list[int]:
        with self.session() as s:
            return list(s.exec(select(ChatRow.chat_id).where(ChatRow.pbx == pbx, ChatRow.chat_id < 0)))

    # ------------------------------------------------------------------ digests

    def set_schedule(self, row: DigestScheduleRow) -> None:
        with self.session() as s:
            s.merge(row)
            s.commit()

    def schedule(self, chat_id: int) -> DigestScheduleRow | None:
        with self.session() as s:
            return s.get(DigestScheduleRow, chat_id)

    def schedules(self) -> list[DigestScheduleRow]:
        with self.session() as s:
            return list(s.exec(select(DigestScheduleRow)))

    def drop_schedule(self, chat_id: int) -> bool:
        with self.session() as s:
            result = s.exec(delete(DigestScheduleRow).where(col(DigestScheduleRow.chat_id) == chat_id))
            s.commit()
            return result.rowcount == 1

    def claim_digest(self, chat_id: int, period_key: str) -> int | None:
        """Take the (chat, period) row; None when another run (or process) has it already."""
        row = DigestRunRow(chat_id=chat_id, period_key=period_key)
        with self.session() as s:
            s.add(row)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return None
            return row.id

    def finish_digest(self, run_id: int, *, posted: bool, state: str) -> None:
        with self.session() as s:
            s.exec(
                update(DigestRunRow).where(col(DigestRunRow.id) == run_id).values(posted=posted, state=state)
            )
            s.commit()

    def last_digest(self, chat_id: int, *, before: int | None = None) -> DigestRunRow | None:
        """The newest earlier run of this chat (the one before `before`)."""
        query = (
            select(DigestRunRow).where(DigestRunRow.chat_id == chat_id).order_by(col(DigestRunRow.id).desc())
        )
        if before is not None:
            query = query.where(col(DigestRunRow.id) < before)
        with self.session() as s:
            return s.exec(query.limit(1)).first()

    def audit_since(self, pbx: str, since: datetime, events: Iterable[str]) -> list[AuditRow]:
        with self.session() as s:
            return list(
                s.exec(
                    select(AuditRow)
                    .where(AuditRow.pbx == pbx, AuditRow.at >= since, col(AuditRow.event).in_(list(events)))
                    .order_by(col(AuditRow.id))
                )
            )

    # ------------------------------------------------------------------ health

    def ping(self) -> bool:
        with self.session() as s:
            return s.exec(select(1)).one() == 1

    def plans_by_status(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.exec(select(PlanRow.status, func.count()).group_by(PlanRow.status))
            return {status: n for status, n in rows}
