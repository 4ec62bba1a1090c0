"""Outbound limits: one Telegram budget per group, shared by every replica, and
Telegram's 429s honoured.

Telegram allows about 20 messages a minute in a group and 30 a second in all; a
429 says how long to wait (`retry_after`). Every attempt at a message, a retry
included, takes a slot: one in its group's window (sendMessage, sendDocument,
sendPhoto to a group) and one in the global window (every message, edit or
deletion). Slots are handed out in order from a sliding-window log: a sender
learns when its slot is and sleeps till then, so waiting senders never race
(a group's slots first come first served; the global slot is taken at send
time, so a busy group never delays the others). When the answer is back the
slot moves to that moment, never earlier than Telegram counted the message.
A 429 holds its chat for every sender, on every replica, for `retry_after`; the
message is retried until the waits 429s asked of it add up to more than `patience`.

With `[redis] url` the windows and holds live in Redis (Lua scripts on Redis's
clock), so two replicas share 20 a minute instead of taking 20 each; otherwise
they live in this process (`LocalBudget`). A Redis that does not answer falls
back to the local budget rather than losing the message.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any, Protocol

from aiogram import Bot
from aiogram.client.session.middlewares.base import BaseRequestMiddleware, NextRequestMiddlewareType
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import (
    DeleteMessage,
    EditMessageReplyMarkup,
    EditMessageText,
    SendDocument,
    SendMessage,
    SendPhoto,
    TelegramMethod,
)
from aiogram.methods.base import Response, TelegramType

log = logging.getLogger("pbxbot.telegram")
_OUTGOING = (SendMessage, SendDocument, SendPhoto, EditMessageText, EditMessageReplyMarkup, DeleteMessage)
_TO_GROUP = (SendMessage, SendDocument, SendPhoto)  # what Telegram's 20 a minute per group counts
GLOBAL_WINDOW = 1.0


class Budget(Protocol):
    async def reserve(
        self, key: str, limit: int, window: float, holds: list[str]
    ) -> tuple[float, str | None]:
        """A slot in `key`'s window: (seconds until it, its id); or, while one of `holds`
        is on, (seconds it lasts, None) and nothing reserved."""

    async def confirm(self, key: str, slot: str, limit: int, window: float) -> float:
        """At the slot's time: 0 (and the slot moves to now) when fewer than `limit`
        other messages went out in the last `window` seconds, as Telegram counts them
        (a message counts from when its answer came back); else the seconds to wait."""

    async def settle(self, keys: list[str], slot: str) -> None:
        """The message went out (or failed): its slot moves to now."""

    async def hold(self, key: str, seconds: float) -> None:
        """Nothing to this chat (or at all) for `seconds`."""

    async def close(self) -> None: ...


class LocalBudget:
    """The budget of one process (no Redis)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._log: dict[str, dict[str, float]] = {}
        self._holds: dict[str, float] = {}
        self._ids = itertools.count(1)

    async def reserve(
        self, key: str, limit: int, window: float, holds: list[str]
    ) -> tuple[float, str | None]:
        now = self.clock()
        held = max((self._holds.get(h, 0.0) for h in holds), default=0.0)
        if held > now:
            return held - now, None
        entries = self._log.setdefault(key, {})
        for slot, at in list(entries.items()):
            if at <= now - window:
                del entries[slot]
        times = sorted(entries.values())
        at = now
        if len(times) >= limit:
            at = max(at, times[len(times) - limit] + window)
        if times:
            at = max(at, times[-1])
        slot = f"l{next(self._ids)}"
        entries[slot] = at
        return at - now, slot

    async def confirm(self, key: str, slot: str, limit: int, window: float) -> float:
        now = self.clock()
        entries = self._log.setdefault(key, {})
        times = sorted(at for s, at in entries.items() if s != slot and now - window < at <= now)
        if len(times) >= limit:
            return times[len(times) - limit] + window - now
        entries[slot] = now
        return 0.0

    async def settle(self, keys: list[str], slot: str) -> None:
        now = self.clock()
        for key in keys:
            entries = self._log.get(key, {})
            if slot in entries:
                entries[slot] = max(entries[slot], now)

    async def hold(self, key: str, seconds: float) -> None:
        self._holds[key] = max(self._holds.get(key, 0.0), self.clock() + seconds)

    def used(self, key: str, window: float) -> int:
        """Slots taken in the last `window` seconds (and ahead): for tests and figures."""
        now = self.clock()
        return sum(1 for at in self._log.get(key, {}).values() if at > now - window)

    async def close(self) -> None:
        return None


_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 2, #KEYS do
  local h = tonumber(redis.call('GET', KEYS[i]) or '0')
  if h > now then return {1, h - now} end
end
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
local at = now
if n >= limit then
  local e = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  at = math.max(at, tonumber(e[2]) + window)
end
if n > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  at = math.max(at, tonumber(last[2]))
end
redis.call('ZADD', KEYS[1], at, ARGV[3])
redis.call('PEXPIRE', KEYS[1], at - now + window + 1000)
return {0, at - now}
"""
_CONFIRM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local e = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - window), now, 'WITHSCORES')
local times = {}
for i = 1, #e, 2 do
  if e[i] ~= ARGV[3] then table.insert(times, tonumber(e[i + 1])) end
end
if #times >= limit then return {1, math.max(1, times[#times - limit + 1] + window - now)} end
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[3])
return {0, 0}
"""
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do redis.call('ZADD', KEYS[i], 'XX', 'GT', now, ARGV[1]) end
return 1
"""
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ms = tonumber(ARGV[1])
local h = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + ms > h then redis.call('SET', KEYS[1], now + ms, 'PX', ms + 1000) end
return 1
"""


class RedisBudget:
    """The budget every replica shares: windows and holds in Redis, on Redis's clock.
    Its own blocking connection pool; a Redis that fails falls back to `LocalBudget`."""

    def __init__(self, url: str, *, max_connections: int = 16, prefix: str = "pbxbot:tg:"):
        self.url = url
        self.max_connections = max_connections
        self.prefix = prefix
        self.local = LocalBudget()
        self._redis: Any = None
        self._scripts: dict[str, Any] = {}
        self._ids = itertools.count(1)
        self._tag = f"{os.getpid()}-{time.time_ns() % 10**9}"

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis  # only replicas pay for the redis client

            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=self.max_connections, timeout=20
            )
            self._redis = aioredis.Redis(connection_pool=pool)
            self._scripts = {
                name: self._redis.register_script(body)
                for name, body in (
                    ("reserve", _RESERVE),
                    ("confirm", _CONFIRM),
                    ("settle", _SETTLE),
                    ("hold", _HOLD),
                )
            }
        return self._redis

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self._client()
        return await self._scripts[name](keys=[self.prefix + k for k in keys], args=args)

    async def reserve(
        self, key: str, limit: int, window: float, holds: list[str]
    ) -> tuple[float, str | None]:
        slot = f"{self._tag}-{next(self._ids)}"
        try:
            held, ms = await self._run("reserve", [key, *holds], [limit, int(window * 1000), slot])
        except Exception as exc:  # (Redis unreachable: this process's budget, not a lost message)
            log.warning("telegram budget in Redis unavailable (%s): using this process's", type(exc).__name__)
            return await self.local.reserve(key, limit, window, holds)
        return int(ms) / 1000, None if held else slot

    async def confirm(self, key: str, slot: str, limit: int, window: float) -> float:
        if slot.startswith("l"):
            return await self.local.confirm(key, slot, limit, window)
        try:
            _, ms = await self._run("confirm", [key], [limit, int(window * 1000), slot])
        except Exception as exc:
            log.warning("telegram budget in Redis unavailable (%s)", type(exc).__name__)
            return 0.0
        return int(ms) / 1000

    async def settle(self, keys: list[str], slot: str) -> None:
        if slot.startswith("l"):
            await self.local.settle(keys, slot)
            return
        try:
            await self._run("settle", keys, [slot])
        except Exception as exc:
            log.warning("telegram budget in Redis unavailable (%s)", type(exc).__name__)

    async def hold(self, key: str, seconds: float) -> None:
        await self.local.hold(key, seconds)
        try:
            await self._run("hold", [key], [int(seconds * 1000)])
        except Exception as exc:
            log.warning("telegram budget in Redis unavailable (%s)", type(exc).__name__)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class Throttle(BaseRequestMiddleware):
    def __init__(
        self,
        budget: Budget | None = None,
        *,
        group_limit: int = 20,
        group_window: float = 60.0,
        global_limit: int = 30,
        patience: float = 600.0,
    ):
        self.budget: Budget = budget or LocalBudget()
        self.group_limit = group_limit
        self.group_window = group_window
        self.global_limit = global_limit
        self.patience = patience
        self.waited = 0.0  # seconds spent waiting, for tests and figures
        self.retried = 0  # 429s answered by waiting and sending again

    async def _slot(self, key: str, limit: int, window: float, holds: list[str], *, confirm: bool) -> str:
        while True:
            delay, slot = await self.budget.reserve(key, limit, window, holds)
            await self._sleep(delay)
            if slot is not None:
                break
        while confirm:  # the messages before it may have reached Telegram later than planned
            delay = await self.budget.confirm(key, slot, limit, window)
            if delay <= 0:
                break
            await self._sleep(delay)
        return slot

    async def _sleep(self, delay: float) -> None:
        if delay > 0:
            self.waited += delay
            await asyncio.sleep(delay)

    async def __call__(
        self,
        make_request: NextRequestMiddlewareType[TelegramType],
        bot: Bot,
        method: TelegramMethod[TelegramType],
    ) -> Response[TelegramType]:
        outgoing = isinstance(method, _OUTGOING)  # (a flag: narrowing `method` would lose its result type)
        if not outgoing:  # polling, answers to buttons and the like: not counted
            return await make_request(bot, method)
        chat: Any = getattr(method, "chat_id", None)
        chat = chat if isinstance(chat, int) else None
        group = chat is not None and chat < 0 and isinstance(method, _TO_GROUP)
        prefix = f"{bot.id}:"
        chat_key, all_key = f"{prefix}chat:{chat}", f"{prefix}all"
        holds = [f"{prefix}hold", *([f"{prefix}hold:{chat}"] if chat is not None else [])]
        held = 0.0  # seconds this message was told to wait by 429s (its own budget wait is not counted)
        while True:
            taken: list[tuple[str, str]] = []
            try:
                if group:  # every attempt, a retry included, takes its slot in the group's minute
                    slot = await self._slot(chat_key, self.group_limit, self.group_window, [], confirm=True)
                    taken.append((chat_key, slot))
                slot = await self._slot(all_key, self.global_limit, GLOBAL_WINDOW, holds, confirm=False)
                taken.append((all_key, slot))
                return await make_request(bot, method)
            except TelegramRetryAfter as exc:
                await self.budget.hold(holds[-1], exc.retry_after)  # every sender to this chat waits
                self.retried += 1
                held += exc.retry_after
                if held > self.patience:
                    raise
                log.warning("telegram asked to wait %s s (%s)", exc.retry_after, type(method).__name__)
            finally:
                for key, slot in taken:
                    await self.budget.settle([key], slot)
