"""Who is speaking, in which chat, on which PBX, in which language; checked
before any handler runs and before anything is read from the PBX.

Identity is the numeric user id (of the button presser for callbacks). A user
the config does not know gets one polite refusal and an audit row, then
silence. An anonymous group admin is asked to write as themselves. A group
that becomes a supergroup keeps its PBX.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware
from aiogram.client.session.middlewares.base import BaseRequestMiddleware
from aiogram.methods import GetUpdates
from aiogram.types import CallbackQuery, Message, TelegramObject

from bot.errors import expected
from bot.plans.changes import Actor
from bot.plans.policy import Action, may, role_of
from bot.services import Services
from bot.text.i18n import pick_language, t

ANONYMOUS_ADMIN_ID = 1087968824  # @GroupAnonymousBot
AHEAD_WAIT = 0.02  # s: the longest a command waits for its reads ahead to be written


def read_ahead(services: Services, message: Message) -> asyncio.Event | None:
    """The list calls of a change command (`Services.read_ahead`), begun before anything
    is looked up: for a message of someone who may propose, written as themselves."""
    user, chat, sender = message.from_user, message.chat, message.sender_chat
    if user is None or user.id == ANONYMOUS_ADMIN_ID or (sender is not None and sender.id == chat.id):
        return None
    if not may(services.settings.policy, user.id, Action.PROPOSE):
        return None
    return services.read_ahead_once(chat.id, message.message_id, message.text)


class ReadAhead(BaseRequestMiddleware):
    """A session middleware: the change commands a getUpdates answer brings begin their
    list calls as it arrives, before aiogram asks for the next updates and dispatches
    these (the access middleware would begin them ~0.6 ms later; it joins them). The
    answer goes on once the requests are written, or after AHEAD_WAIT at most (once
    for a whole batch)."""

    def __init__(self, services: Services):
        self.services = services

    async def __call__(self, make_request: Any, bot: Any, method: Any) -> Any:
        result = await make_request(bot, method)
        if isinstance(method, GetUpdates):
            begun = [
                written
                for update in result
                if update.message is not None and (written := read_ahead(self.services, update.message))
            ]
            if begun:  # all begun first; then one wait, whatever the batch
                waits = [asyncio.ensure_future(written.wait()) for written in begun]
                try:
                    await asyncio.wait(waits, timeout=AHEAD_WAIT)
                finally:
                    for wait in waits:
                        wait.cancel()
        return result


class Access(BaseMiddleware):
    def __init__(self, services: Services):
        self.services = services

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        services = self.services
        user = data.get("event_from_user")
        chat = data.get("event_chat")
        lang = pick_language(user.language_code if user else None, services.settings.default_language)
        data.update(services=services, lang=lang)
        if isinstance(event, Message) and (event.migrate_to_chat_id or event.migrate_from_chat_id):
            await self._migrate(event)
            return None
        if user is None:
            return None
        if isinstance(event, Message) and (
            user.id == ANONYMOUS_ADMIN_ID
            or (event.sender_chat is not None and chat and event.sender_chat.id == chat.id)
        ):
            if event.text and event.text.startswith("/"):
                await event.answer(t("tg.anonymous", lang))
            return None
        role = role_of(services.settings.policy, user.id)
        if role is None:
            await self._refuse(event, user.id, chat.id if chat else None, lang)
            return None
        private = chat is None or chat.type == "private"
        if isinstance(event, Message) and (written := read_ahead(services, event)) is not None:
            # the PBX answers while the chat's binding is read: once the requests are written
            # (the database's thread would hold them up), or a few ms at most (the budget may).
            # Polled, they left as the update came (`ReadAhead`): this joins them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(written.wait(), AHEAD_WAIT)
        pbx = await services.pbx_of_chat(chat.id, private=private) if chat else None
        data.update(actor=Actor(user.id, user.full_name), role=role, pbx=pbx, private=private)
        return await handler(event, data)

    async def _migrate(self, message: Message) -> None:
        if message.migrate_to_chat_id is not None:
            old, new = message.chat.id, message.migrate_to_chat_id
        elif message.migrate_from_chat_id is not None:  # the supergroup's side
            old, new = message.migrate_from_chat_id, message.chat.id
        else:  # not a migration (the caller checks)
            return
        await self.services.move_chat(old, new, message.chat.title or "")

    async def _refuse(self, event: TelegramObject, user_id: int, chat_id: int | None, lang: str) -> None:
        services = self.services
        kind = "callback" if isinstance(event, CallbackQuery) else "message"
        await services.changes.record("refused_unknown_user", Actor(user_id), chat=chat_id, kind=kind)
        if isinstance(event, CallbackQuery):
            await event.answer(t("tg.unknown_user", lang, id=user_id), show_alert=True)
            return
        if user_id in services.refused:
            return
        services.refused.add(user_id)
        if isinstance(event, Message):
            await event.answer(t("tg.unknown_user", lang, id=user_id))


class Observe(BaseMiddleware):
    """Counts updates by type and outcome, and times them (for /metrics). A refusal
    (bot/errors.py, or the PBX's) the error handler answers counts as handled."""

    def __init__(self, metrics: Any):
        self.metrics = metrics

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        kind = getattr(event, "event_type", "update")
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await handler(event, data)
            outcome = "handled"
            return result
        except Exception as exc:
            if expected(exc):
                outcome = "handled"
            raise
        finally:
            self.metrics.updates.labels(kind, outcome).inc()
            self.metrics.update_seconds.labels(kind).observe(time.perf_counter() - started)
