"""The PBX's call budget: one per PBX, shared by everything the bot does, and by
its replicas, served by priority.

MikoPBX's nginx (unified-security.lua) counts a client's requests in a fixed
60-second window: past 180 + 20 it answers 429 and blocks the address for 5
minutes (10, 20 … for a repeat offence). Replicas behind one address are one
client. A token bucket of `per_minute` (165) and `burst` (10) never lets more
than 175 calls into any 60 seconds, so neither can every process together when
they take from one bucket.

Not everything is as urgent: an admin waiting for a card comes first, an
approved apply next, reports (digest, doctor) after them, and the background
refresh of the mirror only with what is left. The priority travels with the
task (a context variable), so code between the caller and the client needs no
extra argument:

    with priority(Priority.BACKGROUND):
        await reader.refresh(...)

How a budget serves its waiters (`Budget`):
- a process keeps one queue per PBX: the most urgent waiter first, first come
  first served within a priority; only the head asks for a token, so a queue of
  background reads delays a command by one token at most;
- BACKGROUND takes a token only when no one else waits, and at most
  `background_share` of the rate (a second bucket of share x rate), so the
  bucket stays full for the next command;
- a read shared by several callers (single flight) waits with the most urgent
  of them: a `Claim` that joiners raise.

`LocalBudget` is one process's bucket. `RedisBudget` keeps the bucket in Redis
(one Lua script, on Redis's clock), shared by every replica. Across processes
the priority is kept with a list of who waits: a process whose head was refused
writes its priority there (until shortly after it will ask again), and a
process asking at a lower priority is refused while a more urgent one waits
elsewhere. Redis not answering: each process falls back to a local bucket of
`fallback_share` of the rate (1/N for N replicas) until Redis answers again; it
never stops PBX calls, and never lets N processes take the whole rate each.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import itertools
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger("pbxbot.pbx")
P = ParamSpec("P")
T = TypeVar("T")


class Priority(IntEnum):
    """Lower value, served first."""

    COMMAND = 0  # an admin is waiting for an answer
    APPLY = 1  # an approved plan writing and verifying
    REPORT = 2  # digest, doctor, scheduled summaries
    BACKGROUND = 3  # the mirror's refresher: spare budget only


_current: contextvars.ContextVar[Priority] = contextvars.ContextVar("pbx_priority", default=Priority.COMMAND)
_claim: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("pbx_claim", default=None)


def current_priority() -> Priority:
    claim = _claim.get()
    return claim.level if claim is not None else _current.get()


def at(level: Priority) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """The PBX calls of every run of the decorated coroutine function take `level`:
    `@at(Priority.APPLY)` on what applies a plan, `@at(Priority.REPORT)` on a digest."""

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def run(*args: P.args, **kwargs: P.kwargs) -> T:
            with priority(level):
                return await fn(*args, **kwargs)

        return run

    return wrap


@contextmanager
def priority(level: Priority) -> Iterator[Priority]:
    """PBX calls made inside this block (and by tasks started inside it) take `level`."""
    token = _current.set(level)
    claim_token = _claim.set(None)  # a claim set outside is not this block's
    try:
        yield level
    finally:
        _claim.reset(claim_token)
        _current.reset(token)


class Claim:
    """The priority of work that several callers wait on (one read for all):
    the most urgent of them. A caller that joins the work raises it; a budget
    where the work waits re-sorts it at once."""

    __slots__ = ("_watchers", "level")

    def __init__(self, level: Priority | None = None):
        self.level = current_priority() if level is None else Priority(level)
        self._watchers: list[Callable[[], None]] = []

    def raise_to(self, level: Priority) -> None:
        if level < self.level:
            self.level = Priority(level)
            for watcher in list(self._watchers):
                watcher()

    def __repr__(self) -> str:
        return f"Claim({self.level.name})"


def current_claim() -> Claim:
    """The claim of the work this task does (see `claimed`), or a new one at its priority."""
    claim = _claim.get()
    return claim if claim is not None else Claim(_current.get())


@contextmanager
def claimed(claim: Claim) -> Iterator[Claim]:
    """PBX calls made inside this block wait as `claim`: the body of a task that other
    callers join (they call `claim.raise_to(current_priority())`)."""
    token = _claim.set(claim)
    try:
        yield claim
    finally:
        _claim.reset(token)


@dataclass(eq=False)
class _Ticket:
    claim: Claim
    future: asyncio.Future[None]
    level: Priority  # where it sits in the queue
    seq: int
    done: bool = False
    watcher: Callable[[], None] | None = field(default=None, repr=False)


class Budget:
    """A token bucket of `per_minute` and `burst`, its waiters served by priority.

    Subclasses say whether a token can be had now (`_take`); the queue, the order
    and the waits are here."""

    def __init__(self, per_minute: float, burst: int = 10, *, background_share: float = 0.2):
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        if not 0 < background_share <= 1:
            raise ValueError("background_share must be in (0, 1]")
        self.per_minute = float(per_minute)
        self.rate = per_minute / 60.0  # tokens a second
        self.capacity = float(max(1, burst))
        self.background_share = background_share
        self.background_capacity = max(1.0, background_share * self.capacity)
        self._heap: list[tuple[int, int, _Ticket]] = []
        self._waiting: Counter[Priority] = Counter()
        self._seq = itertools.count()
        self._pump: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self.granted: Counter[Priority] = Counter()  # tokens handed out, by priority (figures, tests)

    # ------------------------------------------------------------------ what subclasses give

    async def _take(self, level: Priority, more: int) -> float:
        """A token for a caller at `level` (with `more` waiting behind it at that level
        in this process): 0 when taken, else the seconds before asking again."""
        raise NotImplementedError

    def _take_now(self, level: Priority) -> float | None:
        """The same without waiting for I/O, when the budget can (None: it cannot)."""
        return None

    async def aclose(self) -> None:
        return None

    # ------------------------------------------------------------------ the queue

    def waiting(self) -> dict[Priority, int]:
        return {level: n for level, n in self._waiting.items() if n}

    async def acquire(self, claim: Claim | None = None) -> None:
        """Wait for a token at the claim's priority (the calling task's when none)."""
        claim = claim if claim is not None else current_claim()
        if not self._heap and self._pump is None and self._take_now(claim.level) == 0:
            self.granted[claim.level] += 1
            return
        loop = asyncio.get_running_loop()
        ticket = _Ticket(claim, loop.create_future(), claim.level, next(self._seq))
        ticket.watcher = lambda: self._raised(ticket)
        claim._watchers.append(ticket.watcher)
        self._push(ticket)
        try:
            await ticket.future
        finally:
            claim._watchers.remove(ticket.watcher)
            if not ticket.done:  # cancelled while waiting
                ticket.done = True
                self._waiting[ticket.level] -= 1

    def _push(self, ticket: _Ticket) -> None:
        head = self._head()
        heapq.heappush(self._heap, (ticket.level, ticket.seq, ticket))
        self._waiting[ticket.level] += 1
        if self._pump is None:
            self._wake = asyncio.Event()
            self._pump = asyncio.ensure_future(self._serve())
        elif head is None or ticket.level < head.level:
            assert self._wake is not None
            self._wake.set()  # a more urgent head: ask for it now, not when the old head's wait ends

    def _raised(self, ticket: _Ticket) -> None:
        if ticket.done or ticket.claim.level >= ticket.level:
            return
        self._waiting[ticket.level] -= 1
        ticket.level = ticket.claim.level
        ticket.seq = next(self._seq)  # the old entry is stale now
        self._push(ticket)

    def _head(self) -> _Ticket | None:
        while self._heap:
            level, seq, ticket = self._heap[0]
            if ticket.future.done() and not ticket.done:  # cancelled; its task has not run yet to say so
                ticket.done = True
                self._waiting[ticket.level] -= 1
            if not ticket.done and ticket.seq == seq and ticket.level == level:
                return ticket
            heapq.heappop(self._heap)
        return None

    async def _serve(self) -> None:
        try:
            while (head := self._head()) is not None:
                level = head.level
                wait = await self._take(level, self._waiting[level] - 1)
                if wait <= 0:
                    head = self._head()  # the one asked for may have been cancelled meanwhile
                    if head is None:
                        break
                    heapq.heappop(self._heap)
                    head.done = True
                    self._waiting[head.level] -= 1
                    self.granted[head.level] += 1
                    head.future.set_result(None)
                    continue
                assert self._wake is not None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
        except Exception as exc:  # a budget that cannot answer: its waiters hear why
            while (head := self._head()) is not None:
                heapq.heappop(self._heap)
                head.done = True
                self._waiting[head.level] -= 1
                head.future.set_exception(exc)
        finally:
            self._pump = None


class _Bucket:
    """Two token buckets on a clock: all calls, and the background's share of them."""

    def __init__(self, rate: float, capacity: float, share: float, bg_capacity: float, clock, *, full: bool):
        self.rate, self.capacity = rate, capacity
        self.bg_rate, self.bg_capacity = rate * share, bg_capacity
        self.clock = clock
        self.updated = clock()
        self.tokens = capacity if full else 0.0
        self.bg_tokens = bg_capacity if full else 0.0

    def take(self, level: Priority) -> float:
        now = self.clock()
        elapsed = max(0.0, now - self.updated)
        self.updated = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.bg_tokens = min(self.bg_capacity, self.bg_tokens + elapsed * self.bg_rate)
        if level == Priority.BACKGROUND:
            if self.tokens >= 1 and self.bg_tokens >= 1:
                self.tokens -= 1
                self.bg_tokens -= 1
                return 0.0
            return max((1 - self.tokens) / self.rate, (1 - self.bg_tokens) / self.bg_rate, 0.001)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return max((1 - self.tokens) / self.rate, 0.001)


class LocalBudget(Budget):
    """The budget of one process: no Redis configured, or one client alone."""

    def __init__(
        self,
        per_minute: float,
        burst: int = 10,
        *,
        background_share: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        full: bool = True,
    ):
        super().__init__(per_minute, burst, background_share=background_share)
        self.bucket = _Bucket(
            self.rate, self.capacity, background_share, self.background_capacity, clock, full=full
        )

    def _take_now(self, level: Priority) -> float:
        return self.bucket.take(level)

    async def _take(self, level: Priority, more: int) -> float:
        return self.bucket.take(level)


# KEYS[1]: the bucket (hash), KEYS[2]: who waits (zset of "priority:process" -> until, ms).
# ARGV: rate (tokens/ms), capacity, background rate, background capacity, priority,
# process, more waiting at this priority in the process, the background priority, grace (ms).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local rate, cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local bg_rate, bg_cap = tonumber(ARGV[3]), tonumber(ARGV[4])
local prio, me, more = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local background, grace = tonumber(ARGV[8]), tonumber(ARGV[9])
local s = redis.call('HMGET', KEYS[1], 'tokens', 'bg', 'at')
local at = tonumber(s[3]) or now
local elapsed = math.max(0, now - at)
local tokens = math.min(cap, (tonumber(s[1]) or cap) + elapsed * rate)
local bg = math.min(bg_cap, (tonumber(s[2]) or bg_cap) + elapsed * bg_rate)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local member = prio .. ':' .. me
local ahead = false
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local p, who = string.match(m, '^(%d+):(.*)$')
  if tonumber(p) < prio and who ~= me then ahead = true end
end
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate end
if prio == background and bg < 1 then wait = math.max(wait, (1 - bg) / bg_rate) end
if ahead then wait = math.max(wait, 1 / rate) end
if wait > 0 then
  if prio ~= background then redis.call('ZADD', KEYS[2], now + wait + grace, member) end
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'bg', bg, 'at', now)
else
  tokens = tokens - 1
  if prio == background then bg = bg - 1 end
  redis.call('HSET', KEYS[1], 'tokens', tokens, 'bg', bg, 'at', now)
  if more > 0 and prio ~= background then
    redis.call('ZADD', KEYS[2], now + 1 / rate + grace, member)
  else
    redis.call('ZREM', KEYS[2], member)
  end
end
local ttl = math.ceil(cap / rate + 60000)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
return tostring(wait / 1000)
"""


class RedisBudget(Budget):
    """The budget every replica shares: the bucket in Redis under `key` (one per PBX).

    Redis not answering (refused, timed out): a local bucket of `fallback_share` of
    the rate, starting empty, for `retry_after` seconds, then Redis again."""

    def __init__(
        self,
        url: str,
        key: str,
        per_minute: float,
        burst: int = 10,
        *,
        background_share: float = 0.2,
        fallback_share: float = 0.5,
        retry_after: float = 5.0,
        grace: float = 0.25,
        prefix: str = "pbxbot:pbx:",
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(per_minute, burst, background_share=background_share)
        if not 0 < fallback_share <= 1:
            raise ValueError("fallback_share must be in (0, 1]")
        self.url = url
        self.keys = [f"{prefix}{key}:bucket", f"{prefix}{key}:waiting"]
        self.fallback_share = fallback_share
        self.retry_after = retry_after
        self.grace = grace
        self.clock = clock
        self.process = f"{os.getpid()}-{time.time_ns() % 10**9}-{id(self) % 10**6}"
        self._redis: Any = None
        self._script: Any = None
        self._fallback: _Bucket | None = None
        self._down_until = 0.0

    @property
    def degraded(self) -> bool:
        """True while Redis does not answer and this process uses its own bucket."""
        return self._fallback is not None and self.clock() < self._down_until

    def _client(self) -> Any:
        if self._redis is None:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=1.0, socket_timeout=1.0, max_connections=4
            )
            self._script = self._redis.register_script(_TAKE)
        return self._redis

    async def _take(self, level: Priority, more: int) -> float:
        if self.clock() < self._down_until and self._fallback is not None:
            return self._fallback.take(level)
        try:
            self._client()
            wait = await self._script(
                keys=self.keys,
                args=[
                    repr(self.rate / 1000),
                    repr(self.capacity),
                    repr(self.rate * self.background_share / 1000),
                    repr(self.background_capacity),
                    int(level),
                    self.process,
                    max(0, more),
                    int(Priority.BACKGROUND),
                    int(self.grace * 1000),
                ],
            )
        except Exception as exc:  # redis's errors and OSError alike: the PBX calls go on
            return self._degrade(exc, level)
        if self._fallback is not None:
            log.warning("PBX budget in Redis answers again: shared with the other replicas")
            self._fallback = None
        return float(wait)

    def _degrade(self, exc: Exception, level: Priority) -> float:
        if self._fallback is None:
            log.warning(
                "PBX budget in Redis unavailable (%s): this process takes %d%% of the rate alone",
                type(exc).__name__,
                round(self.fallback_share * 100),
            )
            self._fallback = _Bucket(
                self.rate * self.fallback_share,
                max(1.0, self.capacity * self.fallback_share),
                self.background_share,
                self.background_capacity,
                self.clock,
                full=False,  # no burst of its own on top of what the others may take
            )
        self._down_until = self.clock() + self.retry_after
        return self._fallback.take(level)

    async def aclose(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await redis.aclose()
