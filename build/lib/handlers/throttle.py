"""Outbound limits: stay under Telegram's rates and honour its 429s.

Telegram allows about 20 messages a minute in a group and 30 a second in all;
a 429 says how long to wait (`retry_after`). Sends to a group wait for room in
a sliding one-minute window; every call waits for the global bucket; a 429 is
waited out and retried (three times), never turned into a lost message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import (
    DeleteMessage,
    EditMessageReplyMarkup,
    EditMessageText,
    SendDocument,
    SendMessage,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType

log = logging.getLogger("pbxbot.telegram")
_OUTGOING = (SendMessage, SendDocument, EditMessageText, EditMessageReplyMarkup, DeleteMessage)


class Throttle(BaseRequestMiddleware):
    def __init__(self, *, group_per_minute: int = 20, global_per_second: float = 30.0, retries: int = 3):
        self.group_per_minute = group_per_minute
        self.global_per_second = global_per_second
        self.retries = retries
        self._sent: dict[int, deque[float]] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._next_global = 0.0
        self._global_lock = asyncio.Lock()
        self.waited = 0.0  # seconds spent waiting, for tests and figures

    async def _global(self) -> None:
        async with self._global_lock:
            now = time.monotonic()
            wait = self._next_global - now
            self._next_global = max(now, self._next_global) + 1.0 / self.global_per_second
        if wait > 0:
            self.waited += wait
            await asyncio.sleep(wait)

    async def _group(self, chat_id: int) -> None:
        lock = self._locks.setdefault(chat_id, asyncio.Lock())
        async with lock:
            sent = self._sent.setdefault(chat_id, deque())
            now = time.monotonic()
            while sent and now - sent[0] >= 60:
                sent.popleft()
            if len(sent) >= self.group_per_minute:
                wait = 60 - (now - sent[0]) + 0.01
                self.waited += wait
                await asyncio.sleep(wait)
                sent.popleft()
            sent.append(time.monotonic())

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        chat_id: Any = getattr(method, "chat_id", None)
        if isinstance(method, SendMessage | SendDocument) and isinstance(chat_id, int) and chat_id < 0:
            await self._group(chat_id)
        for attempt in range(self.retries + 1):
            if isinstance(method, _OUTGOING):  # messages count; polling and answers do not
                await self._global()
            try:
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                if attempt >= self.retries:
                    raise
                log.warning("telegram asked to wait %s s (%s)", exc.retry_after, type(method).__name__)
                self.waited += exc.retry_after
                await asyncio.sleep(exc.retry_after)
        raise AssertionError("unreachable")
