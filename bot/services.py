"""What the Telegram handlers (and the scheduler) are given: the settings, the
change service, storage, and which PBX a chat works on. Free of aiogram."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bot.errors import UsageError
from bot.plans.commands import parse
from bot.plans.service import Changes
from pbx.base import Pbx
from storage.aio import AsyncRepos
from storage.repos import Repos
from storage.tables import DigestScheduleRow

from .config import Settings

if TYPE_CHECKING:  # the entry layer builds the scheduler and hands it over: no import at run time
    from bot.entry.scheduler import Scheduler


_AHEAD_REMEMBERED = 1024  # messages: far more than one getUpdates answer brings (100)


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
    # the PBX each chat was last found to work on, here: where a change command's reads
    # begin while its binding is looked up (`read_ahead`); never where anything is written
    last_pbx: dict[int, str] = field(default_factory=dict)
    # the messages whose reads began ahead, newest last: asked again (the access middleware
    # after the session's), a message's reads are not begun or counted twice
    _ahead: OrderedDict[tuple[int, int], asyncio.Event | None] = field(default_factory=OrderedDict)

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
        pbx = await self._pbx_of_chat(chat_id, private=private)
        if pbx is None:
            self.last_pbx.pop(chat_id, None)
        else:
            self.last_pbx[chat_id] = pbx
        return pbx

    async def _pbx_of_chat(self, chat_id: int, *, private: bool) -> str | None:
        bound = await self.db.chats.pbx_of(chat_id)
        if bound is not None and bound in self.changes.pbxs:
            return bound
        configured = self.settings.telegram.groups.get(chat_id)
        if configured is not None:
            return configured
        if private and len(self.changes.pbxs) == 1:
            return next(iter(self.changes.pbxs))
        return None

    def read_ahead_once(self, chat_id: int, message_id: int, text: str | None) -> asyncio.Event | None:
        """`read_ahead` for a message, once: asked again, what the first asking began."""
        key = (chat_id, message_id)
        if key in self._ahead:
            return self._ahead[key]
        begun = self._ahead[key] = self.read_ahead(chat_id, text)
        if len(self._ahead) > _AHEAD_REMEMBERED:
            self._ahead.popitem(last=False)
        return begun

    def read_ahead(self, chat_id: int, text: str | None) -> asyncio.Event | None:
        """A change command's list calls, begun before the chat's binding is looked up:
        on the PBX the chat was last found to work on here (or, not seen yet, the one the
        config gives it). The command joins them once it knows its PBX.
        - Only for a command that parses: a typo costs no PBX read.
        - A chat rebound meanwhile by another process costs three reads of the old PBX's
          budget and nothing else: the command reads, plans and writes on the PBX looked up.
        None: nothing begun; else an event set once the requests are written."""
        pbx = self.last_pbx.get(chat_id) or self.settings.telegram.groups.get(chat_id)
        if pbx is None and chat_id > 0 and len(self.changes.pbxs) == 1:
            pbx = next(iter(self.changes.pbxs))  # a private chat, one PBX
        if pbx is None or not text or not text.startswith("/"):
            return None
        command, _, mention = text.split(maxsplit=1)[0].partition("@")
        if mention and mention.lower() != self.bot_username.lower():
            return None  # another bot's command
        if command != command.lower():
            return None  # no handler takes it: a command matches in its case (parse takes any)
        try:
            intent = parse(text)
        except UsageError:
            return None
        return self.changes.read_ahead(pbx, intent)

    async def bind_chat(self, chat_id: int, pbx: str, *, title: str = "", by: int | None = None) -> None:
        """`/pbx`: the chat works on this PBX from now on."""
        await self.db.chats.bind(chat_id, pbx, title=title, by=by)
        self.last_pbx[chat_id] = pbx

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
