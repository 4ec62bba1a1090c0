"""The tables: plans, their approvals, the audit trail, locks, and secrets.

Times are aware UTC (stored as UTC where the database keeps no zone). JSON columns hold the plan's
steps and outcome; no column ever holds a secret in clear: `secrets.token` is
Fernet ciphertext, erased when the plan ends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class PlanRow(SQLModel, table=True):
    __tablename__ = "plans"

    id: str = Field(primary_key=True, max_length=16)
    pbx: str = Field(index=True, max_length=64)
    kind: str = Field(max_length=16)  # add | route | remove | undo
    status: str = Field(index=True, max_length=16)
    version: int = 1  # approvals belong to one version of a plan
    command: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    intent: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    proposer_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    proposer_name: str = Field(default="", max_length=128)
    chat_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    message_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    fingerprint: str = Field(max_length=64)
    host: str | None = Field(default=None, max_length=255)
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    notes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    needs_secret: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    results: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    outcome: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    undo_of: str | None = Field(default=None, max_length=16, index=True)
    replaced_by: str | None = Field(default=None, max_length=16)
    # While `applying`: the process applying it ("host:pid:nonce") and until when its
    # lease holds; it renews the lease as it goes. Recovery touches only an expired lease.
    lease_owner: str | None = Field(default=None, max_length=128)
    lease_until: datetime | None = Field(default=None)
    # The plan's card no longer shows its state (it ended in a process without Telegram).
    card_stale: bool = Field(default=False, index=True)


class ApprovalRow(SQLModel, table=True):
    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_plan_version", "plan_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    plan_id: str = Field(foreign_key="plans.id", max_length=16)
    version: int
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    user_name: str = Field(default="", max_length=128)
    decision: str = Field(max_length=16)  # approve | reject
    at: datetime = Field(default_factory=utcnow)


class AuditRow(SQLModel, table=True):
    """Append-only: the migration adds triggers that refuse UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    plan_id: str | None = Field(default=None, max_length=16, index=True)
    pbx: str | None = Field(default=None, max_length=64)
    actor_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    actor_name: str = Field(default="", max_length=128)
    event: str = Field(max_length=32)
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class LockRow(SQLModel, table=True):
    """One open plan per (PBX, login): the primary key is the lock."""

    __tablename__ = "locks"

    pbx: str = Field(primary_key=True, max_length=64)
    login: str = Field(primary_key=True, max_length=128)
    plan_id: str = Field(foreign_key="plans.id", max_length=16, index=True)
    at: datetime = Field(default_factory=utcnow)


class SecretRow(SQLModel, table=True):
    __tablename__ = "secrets"

    plan_id: str = Field(foreign_key="plans.id", primary_key=True, max_length=16)
    login: str = Field(primary_key=True, max_length=128)
    token: str = Field(sa_column=Column(Text, nullable=False))  # Fernet ciphertext
    at: datetime = Field(default_factory=utcnow)


class ChatRow(SQLModel, table=True):
    """A Telegram chat bound to a PBX (`/pbx NAME` by an admin, or a group's migration)."""

    __tablename__ = "chats"

    chat_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    pbx: str = Field(max_length=64)
    title: str = Field(default="", max_length=255)
    bound_by: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    at: datetime = Field(default_factory=utcnow)


class DigestScheduleRow(SQLModel, table=True):
    """A chat's routing digest: daily or weekly at a local time, optionally quiet."""

    __tablename__ = "digest_schedules"

    chat_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    pbx: str = Field(max_length=64)
    period: str = Field(max_length=8)  # daily | weekly
    weekday: int | None = None  # 0 = Monday, for weekly
    hour: int
    minute: int
    timezone: str = Field(max_length=64)
    quiet: bool = False  # post only when something changed or is wrong
    created_by: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    updated_at: datetime = Field(default_factory=utcnow)


class DigestRunRow(SQLModel, table=True):
    """One digest per (chat, period): the row is taken before posting, so two processes never both post."""

    __tablename__ = "digest_runs"
    __table_args__ = (UniqueConstraint("chat_id", "period_key", name="uq_digest_runs_chat_period"),)

    id: int | None = Field(default=None, primary_key=True)
    chat_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    period_key: str = Field(max_length=32)
    at: datetime = Field(default_factory=utcnow)
    posted: bool = False
    state: str = Field(default="", max_length=64)  # fingerprint of what the digest showed (quiet mode)


class SecretPromptRow(SQLModel, table=True):
    """Where a SIP password sent in a private chat goes: a question the bot asked
    (`ask`: a reply to message `message_id` is the password of `login`, or, with no
    login, of the plan's next missing login) or a deep link the user opened
    (`link`: their next password goes to the plan). No secret here."""

    __tablename__ = "secret_prompts"
    __table_args__ = (Index("ix_secret_prompts_user_message", "user_id", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=8)  # ask | link
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    message_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    plan_id: str = Field(foreign_key="plans.id", max_length=16, index=True)
    login: str | None = Field(default=None, max_length=128)
    at: datetime = Field(default_factory=utcnow)


class HeldSecretRow(SQLModel, table=True):
    """A password whose plan the user has yet to pick (several were waiting):
    Fernet ciphertext, erased when picked or after an hour. `choices` are
    [plan id, login] pairs, what the buttons under `message_id` offer."""

    __tablename__ = "held_secrets"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    token: str = Field(sa_column=Column(Text, nullable=False))  # Fernet ciphertext
    choices: list[list[str]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    message_id: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    at: datetime = Field(default_factory=utcnow)


class MirrorRow(SQLModel, table=True):
    """What the bot last read of one PBX record, and when: the PBX mirror.

    `kind` is `account` (one row an account, its details in full but the SIP
    password), or one row a list: `routes`, `destinations`, `registrations`
    (`key` empty, `data` `{"items": [...]}`). The bot's own writes update it
    from the PBX's answers; the refresher re-reads the oldest accounts first."""

    __tablename__ = "mirror"
    __table_args__ = (Index("ix_mirror_pbx_kind_read_at", "pbx", "kind", "read_at"),)

    pbx: str = Field(primary_key=True, max_length=64)
    kind: str = Field(primary_key=True, max_length=16)
    key: str = Field(primary_key=True, max_length=128)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    read_at: datetime = Field(default_factory=utcnow)
