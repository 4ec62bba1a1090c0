"""What the Telegram handlers (and the scheduler) are given: the settings, the
change service, storage, and which PBX a chat works on. Free of aiogram."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bot.plans.service import Changes
from pbx.base import Pbx
from storage.aio import AsyncRepos
from storage.repos import Repos
from storage.tables import DigestScheduleRow

from .config import Settings

if TYPE_CHECKING:  # the entry layer builds the scheduler and hands it over: no import at run time
    from bot.entry.scheduler import Scheduler


@dataclass
class Services:
    settings: Settings
    changes: Changes
    store: Repos
    bot_username: str = ""
    refused: set[int] = field(default_factory=set)  # users and chats told "no" once already
    scheduler: Scheduler | None = None  # once the app has started
    # what each card shows, as this process last sent it: (chat, message) -> digest of text and
    # buttons, so a card is never edited to what it already shows (one process; replicas: None)
    shown: dict[tuple[int, int], str] | None = field(default_factory=dict)
    card_locks: dict[str, asyncio.Lock] = field(default_factory=dict)  # plan id -> one card edit at a time

    @property
    def db(self) -> AsyncRepos:
        """The store, awaited: its calls run off the event loop."""
        return self.changes.db

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.timezone)

    async def tz_of(self, chat_id: int | None) -> ZoneInfo:
        """A chat's time zone: its digest schedule's (`/digest tz`), else the configured one,
        so cards, /plans, /history and digests of one chat tell the same time."""
        if chat_id is not None:
            row = await self.db.schedules.get(chat_id)
            if row is not None and row.timezone:
                return ZoneInfo(row.timezone)
        return self.tz

    def client(self, pbx: str) -> Pbx:
        return self.changes.pbxs[pbx].client

    async def pbx_of_chat(self, chat_id: int, *, private: bool) -> str | None:
        """A chat's PBX: its binding (`/pbx`), the config's groups, or, for a
        private chat, the only PBX there is. None: an unknown chat."""
        bound = await self.db.chats.pbx_of(chat_id)
        if bound is not None and bound in self.changes.pbxs:
            return bound
        configured = self.settings.telegram.groups.get(chat_id)
        if configured is not None:
            return configured
        if private and len(self.changes.pbxs) == 1:
            return next(iter(self.changes.pbxs))
        return None

    async def bind_chat(self, chat_id: int, pbx: str, *, title: str = "", by: int | None = None) -> None:
        """`/pbx`: the chat works on this PBX from now on."""
        await self.db.chats.bind(chat_id, pbx, title=title, by=by)

    async def move_chat(self, old: int, new: int, title: str = "") -> None:
        """A group became a supergroup (a new id): the new chat keeps the old one's PBX,
        unless it has one of its own."""
        pbx = await self.pbx_of_chat(old, private=False)
        if pbx is not None and await self.pbx_of_chat(new, private=False) is None:
            await self.db.chats.bind(new, pbx, title=title)
            await self.changes.record("chat_migrated", None, pbx=pbx, **{"from": old, "to": new})

    async def schedule_of(self, chat_id: int) -> DigestScheduleRow | None:
        """The chat's digest schedule, if it has one."""
        return await self.db.schedules.get(chat_id)

    async def approval_chats(self, pbx: str) -> list[int]:
        """Groups where plans of this PBX are approved."""
        chats = [cid for cid, name in self.settings.telegram.groups.items() if name == pbx]
        return chats + [cid for cid in await self.db.chats.groups_of(pbx) if cid not in chats]


def local_time(moment: datetime, tz: tzinfo) -> datetime:
    """A stored time in `tz`; the database may hand it back naive, and naive means UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(tz)
