"""The bot under load, as its users meet it: operators proposing numbers,
approvers approving, viewers reading, all at a human pace, for a few minutes.

    .venv/bin/python bench/load.py [--duration 180] [--users 50] [--groups 3]
        [--storage sqlite|postgresql] [--db-delay-ms 20] [--replicas 1|2] [--seed 1]

This process hosts the MikoPBX simulator (its nginx rate limit ON: 180/min +
20 burst, then a 300 s block; the bot's client at its default 165/min) and the
local Telegram Bot API server (Telegram's limits ON: 20 messages a minute per
group, 30 a second in all; --no-telegram-limits switches them off). The bot
runs as its own process (`pbxbot run`, long polling), or as --replicas 2
webhook processes on PostgreSQL + Redis behind the server, which delivers
updates to them round-robin as a load balancer would. With --storage
postgresql the bot reaches the database (127.0.0.1:5432, database `test`, a
schema of the bench's own, dropped after) through bench/dbdelay.py, a proxy
that delays every packet both ways by --db-delay-ms. Redis (127.0.0.1:6379)
is used in the first empty database of 10-15 (or --redis-db), flushed after.

The users (--users, spread over --groups groups; --roles operators:approvers:viewers
in per cent, default 20:20:60; every user an English speaker who has started the bot):
- an operator writes `/addnumber zadarma <a login of their own> → IVR` in the
  group, answers the bot's private request for the SIP password (a second or
  three after it comes), and waits for the plan to end (its card showing a
  final status, at most --outcome-timeout) before the next one;
- an approver presses Approve on a card of the group it has not yet pressed;
- a viewer sends /whoami, /plans or /numbers (40:35:25) in its private chat
  with the bot (--reads-in group: in the group, where they share its 20/min).
Answers are matched to what was sent by their form (the card shows its login,
/whoami its user id; /numbers and /plans first come, first served); an error
or refusal is taken as the answer to the oldest request still waiting in that
chat, so with --reads-in group the kind an error is counted under is a guess
(the totals are not). Each user waits for the answer to what they sent (at most --answer-timeout)
and then thinks for a random --think seconds (seeded by --seed) before acting
again. When --duration is over, operators and viewers stop; approvers go on
approving and operators answer password requests for at most --grace (120) seconds,
until every card shows a final status and every update has its answer.
Answers that come only while the bot drains on SIGTERM count as answers
(reported apart as late); the per-minute rows then say "(stop)".

Measured per minute (from the events of the Telegram server, the simulator's
calls and the audit trail): updates sent, cards posted, plans proposed,
applied and ended by status, /whoami latency (sent -> answer) p50/p95; PBX
calls and 429s, Telegram 429s. At the end, read from the storage and the PBX:
- double applies: plans with two `applying` audit events, or a login with two
  accounts on the PBX (must be 0; the details tell the plans whose every
  `applying` was followed by `apply_refused`, i.e. re-tries after nothing was written);
- lost approvals: presses answered "Counted" whose approval row is missing (0);
- plans that never ended: still proposed, approved or applying at the end of
  the grace period (ended only while the bot was stopping counts as never) (0);
- updates lost: updates sent that got no answer by the end, and webhook
  deliveries that never succeeded (0);
- cards dropped: a plan proposed in the audit trail without its card in the
  chat (0).

It prints a table and a verdict; the last line is one JSON object, also saved
to bench/results/load-<storage>-<replicas>.json (or --out). All traffic stays
on loopback; every wait has a timeout; the bot processes, the proxy, the
schema and the Redis database are cleaned up on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dbdelay import loopback  # noqa: E402
from bench.plan import seed as seed_pbx  # noqa: E402
from sandbox.demo import load_seed  # noqa: E402
from sandbox.mikopbx import MikoPbxSimulator  # noqa: E402
from sandbox.telegram import ApiError, TelegramSandbox  # noqa: E402

KEY = secrets.token_hex(32)
TOKEN = f"{710000000 + secrets.randbelow(10**6)}:{secrets.token_urlsafe(24)}"
WEBHOOK_SECRET = "wh-" + secrets.token_hex(8)
GROUP_BASE = -1003000000000
USER_BASE = 5_000_000
LOGIN_BASE = 600_000
GLOBAL_PER_SECOND = 30

PLAN_RE = re.compile(r"\bPlan ([0-9a-f]{6})\b")
STATUS_RE = re.compile(r"Status: (applied|rolled back|FAILED|cancelled|expired|stale)")
PROPOSER_RE = re.compile(r"Proposed by: (.+)")
WHOAMI_RE = re.compile(r"^id (\d+) · role")
ASK_RE = re.compile(r"SIP password of (\d+) \(plan ([0-9a-f]{6})\)")
RECEIVED_RE = re.compile(r"Password for (\d+) received")
FINAL = {"applied", "rolled back", "FAILED", "cancelled", "expired"}  # a login's journey is over
ENDED_EVENTS = ("applied", "rolled_back", "failed", "cancelled", "expired", "stale")


# ---------------------------------------------------------------------- the outside world


class LimitedTelegram(TelegramSandbox):
    """The sandbox with Telegram's global 30 messages a second on top of its 20 a
    minute per group, and a count of the 429s it gave."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._global: deque[float] = deque()
        self.limited_at: list[float] = []  # when a 429 was answered

    def _rate(self, chat: Any) -> None:
        if self.enforce_limits:
            now = time.monotonic()
            while self._global and now - self._global[0] >= 1.0:
                self._global.popleft()
            if len(self._global) >= GLOBAL_PER_SECOND:
                self.limited_at.append(now)
                raise ApiError(429, "Too Many Requests: retry after 1", retry_after=1)
        try:
            super()._rate(chat)
        except ApiError:
            self.limited_at.append(time.monotonic())
            raise
        if self.enforce_limits:
            self._global.append(time.monotonic())


class CountingSimulator(MikoPbxSimulator):
    """The simulator with a log of every API call: (when, HTTP status)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[float, int]] = []

    async def _api(self, request: Any) -> Any:
        response = await super()._api(request)
        self.calls.append((time.monotonic(), response.status))
        return response

    def blocked(self) -> bool:
        return any(w.blocked_until > 0 for w in self._windows.values())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000)


# ---------------------------------------------------------------------- users and what they wait for


@dataclass
class User:
    id: int
    name: str
    role: str  # operator | approver | viewer
    group: int
    rng: random.Random
    logins: list[str] = field(default_factory=list)
    pressed: set[str] = field(default_factory=set)  # callback data already pressed


@dataclass
class Request:
    """An update a user sent that calls for an answer."""

    kind: str  # whoami | plans | numbers | addnumber | password | press
    user: int
    chat: int
    sent: float
    login: str | None = None
    query: str | None = None
    data: str | None = None
    answered: float | None = None
    answer: str = ""
    expected: bool = True  # answered in the form asked for (not an error or a refusal)
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def resolve(self, at: float, text: str, *, expected: bool = True) -> None:
        if self.answered is None:
            self.answered, self.answer, self.expected = at, text, expected
            self.done.set_result(text)


class Load:
    def __init__(self, args: argparse.Namespace, data: Path):
        self.args = args
        self.data = data
        self.rng = random.Random(args.seed)
        self.groups = [GROUP_BASE - i for i in range(args.groups)]
        self.users: dict[int, User] = {}
        self.requests: list[Request] = []
        self.waiting: dict[tuple[int, str], deque[Request]] = defaultdict(deque)  # (chat, kind) -> FIFO
        self.whoami: dict[tuple[int, int], deque[Request]] = defaultdict(deque)  # (chat, user) -> FIFO
        self.presses: dict[str, Request] = {}
        self.logins = iter(range(LOGIN_BASE, LOGIN_BASE + 400_000))
        self.login_owner: dict[str, int] = {}
        self.plan_login: dict[str, str] = {}
        self.plan_status: dict[str, str] = {}  # the status a card last showed
        self.cards: dict[str, tuple[int, float]] = {}  # plan -> (chat, when first posted)
        self.card_events: list[tuple[float, str]] = []
        self.outcomes: dict[str, asyncio.Future] = {}  # login -> its journey's end
        self.asked: set[str] = set()  # logins whose password the bot asked for
        self.responders: set[asyncio.Task] = set()
        self.stop_users = asyncio.Event()
        self.procs: list[asyncio.subprocess.Process] = []
        self.proxy: asyncio.subprocess.Process | None = None
        self.schema: str | None = None
        self.redis_db: int | None = None
        self.lag: list[float] = []
        self.t0 = 0.0
        self.wall0 = 0.0
        self.end = 0.0
        self.grace_end = 0.0
        self.ended_at = 0.0
        self.stopped_at = 0.0
        self.seen = 0  # events handled

    # ------------------------------------------------------------------ set-up

    def make_users(self) -> None:
        op, ap, _ = (int(x) for x in self.args.roles.split(":"))
        members: dict[int, list[int]] = {g: [] for g in self.groups}
        for i in range(self.args.users):
            members[self.groups[i % len(self.groups)]].append(USER_BASE + i)
        for group, ids in members.items():
            n = len(ids)
            approvers = max(1, round(n * ap / 100))
            operators = max(1, round(n * op / 100))
            for k, uid in enumerate(ids):
                role = "approver" if k < approvers else "operator" if k < approvers + operators else "viewer"
                name = f"{role[:2].title()}{uid - USER_BASE}"
                self.users[uid] = User(uid, name, role, group, random.Random(self.args.seed * 100_003 + uid))

    def by_role(self, role: str) -> list[int]:
        return [u.id for u in self.users.values() if u.role == role]

    async def start_world(self) -> None:
        state_file = self.data / "pbx.json"
        seed_pbx(self.args.numbers, state_file)
        state = load_seed(str(state_file))
        state.settings["PBXRateLimitEnabled"] = "1"  # nginx's real limit: 180/min + 20, then a block
        self.sim = CountingSimulator(state, api_keys=[KEY])
        await self.sim.start()
        self.tg = LimitedTelegram(TOKEN, enforce_limits=self.args.telegram_limits)
        await self.tg.start()
        for user in self.users.values():
            self.tg.add_user(user.id, user.name, language_code="en")
            self.tg.started.add(user.id)
        for group in self.groups:
            ids = [u.id for u in self.users.values() if u.group == group]
            approvers = [u.id for u in self.users.values() if u.group == group and u.role == "approver"]
            self.tg.add_group(group, f"PBX admins {group}", ids, admins=approvers)

    async def start_storage(self) -> str | None:
        """The storage URL the bot gets (None: SQLite in its data_dir)."""
        if self.args.storage == "sqlite":
            return None
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from storage.db import make_engine, migrate

        base = make_url(self.args.pg_url)
        if not loopback(base.host or "127.0.0.1"):
            raise SystemExit(f"--pg-url must point at loopback, not {base.host}")
        self.schema = f"load_{secrets.token_hex(5)}"
        admin = make_engine(self.args.pg_url)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        admin.dispose()
        engine = make_engine(self.direct_url())
        migrate(engine)
        engine.dispose()
        url = base
        if self.args.db_delay_ms > 0:
            self.proxy = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "dbdelay.py"),
                "--target", f"{base.host or '127.0.0.1'}:{base.port or 5432}",
                "--delay-ms", str(self.args.db_delay_ms),
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            port = int((await asyncio.wait_for(self.proxy.stdout.readline(), 30)).decode())
            url = base.set(host="127.0.0.1", port=port)
        return f"{url.render_as_string(hide_password=False)}?options=-csearch_path%3D{self.schema}"

    def direct_url(self) -> str:
        return f"{self.args.pg_url}?options=-csearch_path%3D{self.schema}"

    async def pick_redis(self) -> str:
        import redis.asyncio as aioredis

        host = self.args.redis_host
        if not loopback(host):
            raise SystemExit(f"--redis-host must be loopback, not {host}")
        candidates = [self.args.redis_db] if self.args.redis_db is not None else list(range(10, 16))
        for db in candidates:
            r = aioredis.from_url(f"redis://{host}:6379/{db}")
            try:
                size = await asyncio.wait_for(r.dbsize(), 10)
            finally:
                await r.aclose()
            if size == 0 or self.args.redis_db is not None:
                self.redis_db = db
                return f"redis://{host}:6379/{db}"
        raise SystemExit("no empty Redis database among 10-15: pass --redis-db N")

    def config(self, i: int, storage_url: str | None, redis_url: str | None, ports: list[int]) -> Path:
        a = self.args
        lines = [
            'default_language = "en"',
            "[telegram]",
            f'token = "{TOKEN}"',
            f'api_base = "{self.tg.url}"',
            "groups = { " + ", ".join(f'"{g}" = "office"' for g in self.groups) + " }",
        ]
        if a.replicas > 1:
            lines += [
                'mode = "webhook"',
                f'webhook_url = "http://127.0.0.1:{ports[0]}/telegram"',
                f'webhook_secret = "{WEBHOOK_SECRET}"',
                "[server]",
                'host = "127.0.0.1"',
                f"port = {ports[i]}",
                "[redis]",
                f'url = "{redis_url}"',
            ]
        lines += ["[storage]", f'data_dir = "{self.data / f"data{i}"}"']
        if storage_url:
            lines.append(f'url = "{storage_url}"')
        if a.replicas > 1:
            lines.append(f'secret_key_file = "{self.data / "secret.key"}"')
        lines += [
            "[policy]",
            f"approvers = {self.by_role('approver')}",
            f"operators = {self.by_role('operator')}",
            f"viewers = {self.by_role('viewer')}",
            "[pbx.office]",
            f'url = "{self.sim.url}"',
            f'api_key = "{KEY}"',
        ]
        if a.reload_wait is not None:
            lines.append(f"reload_wait = {a.reload_wait}")
        path = self.data / f"bot{i}.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    async def start_bot(self) -> None:
        storage_url = await self.start_storage()
        redis_url = await self.pick_redis() if self.args.replicas > 1 else None
        ports = [free_port() for _ in range(self.args.replicas)]
        if self.args.replicas > 1:
            from cryptography.fernet import Fernet

            (self.data / "secret.key").write_bytes(Fernet.generate_key())
            (self.data / "secret.key").chmod(0o600)
            self.tg.webhook_targets = [f"http://127.0.0.1:{p}/telegram" for p in ports]
        for i in range(self.args.replicas):
            config = self.config(i, storage_url, redis_url, ports)
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot.entry.cli",
                    "--config",
                    str(config),
                    "run",
                    cwd=str(ROOT),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=(self.data / f"bot{i}.log").open("wb"),
                )
            )
        deadline = time.monotonic() + 120
        import httpx

        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                if any(p.returncode is not None for p in self.procs) or time.monotonic() > deadline:
                    raise RuntimeError("the bot did not start:\n" + self.logs_tail())
                if self.args.replicas == 1:
                    if self.tg.commands and self.tg.calls.get("getUpdates", 0) > 0:
                        return
                else:
                    try:
                        codes = [(await http.get(f"http://127.0.0.1:{p}/healthz")).status_code for p in ports]
                    except httpx.TransportError:
                        codes = []
                    if codes and all(c == 200 for c in codes) and self.tg.webhook is not None:
                        return
                await asyncio.sleep(0.2)

    def logs_tail(self, n: int = 3000) -> str:
        return "\n".join(
            (self.data / f"bot{i}.log").read_text(errors="replace")[-n:] for i in range(len(self.procs))
        )

    async def stop_bot(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def cleanup(self) -> None:
        await self.stop_bot()
        if self.proxy is not None and self.proxy.returncode is None:
            self.proxy.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proxy.wait(), 10)
        if self.schema is not None:
            from sqlalchemy import text

            from storage.db import make_engine

            admin = make_engine(self.args.pg_url)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            admin.dispose()
        if self.redis_db is not None:
            import redis.asyncio as aioredis

            r = aioredis.from_url(f"redis://{self.args.redis_host}:6379/{self.redis_db}")
            await asyncio.wait_for(r.flushdb(), 10)
            await r.aclose()
        with contextlib.suppress(Exception):
            await self.tg.stop()
        with contextlib.suppress(Exception):
            await self.sim.stop()

    # ------------------------------------------------------------------ what the bot did

    def expect(self, req: Request) -> Request:
        self.requests.append(req)
        if req.kind == "whoami":
            self.whoami[(req.chat, req.user)].append(req)
        elif req.kind == "press":
            self.presses[req.query] = req
        else:
            self.waiting[(req.chat, req.kind)].append(req)
        return req

    def _first(self, chat: int, kind: str, login: str | None = None) -> Request | None:
        queue = self.waiting.get((chat, kind))
        while queue and queue[0].answered is not None:
            queue.popleft()
        if not queue:
            return None
        if login is None:
            return queue[0]
        return next((r for r in queue if r.login == login and r.answered is None), None)

    def _on_card_text(self, chat: int, text: str, at: float, posted: bool) -> None:
        plan = PLAN_RE.search(text)
        if plan is None:
            return
        plan_id = plan.group(1)
        if plan_id not in self.plan_login:
            proposer = PROPOSER_RE.search(text)
            name = proposer.group(1).strip() if proposer else ""
            owner = next((u for u in self.users.values() if u.name == name), None)
            mine = reversed(owner.logins) if owner else self.login_owner.keys()
            login = next((lg for lg in mine if re.search(rf"\b{lg}\b", text)), None)
            if login is not None:
                self.plan_login[plan_id] = login
        if posted and plan_id not in self.cards:
            self.cards[plan_id] = (chat, at)
            self.card_events.append((at, plan_id))
        status = STATUS_RE.search(text)
        if status:
            self.plan_status[plan_id] = status.group(1)
            login = self.plan_login.get(plan_id)
            future = self.outcomes.get(login) if login else None
            if status.group(1) in FINAL and future is not None and not future.done():
                future.set_result(status.group(1))
        elif plan_id not in self.plan_status:
            self.plan_status[plan_id] = "open"

    def on_event(self, e: dict[str, Any]) -> None:
        kind, chat, text, at = e["kind"], e.get("chat_id"), e.get("text") or "", e["at"]
        if kind == "answer":
            req = self.presses.get(e["query_id"])
            if req is not None:
                req.resolve(at, text)
            return
        if kind == "edit" and chat in self.groups:
            self._on_card_text(chat, text, at, posted=False)
            return
        if kind not in ("send", "document", "photo"):
            return
        markup = e.get("markup") or {}
        is_card = any(
            (b.get("callback_data") or "").startswith("pl:")
            for row in markup.get("inline_keyboard", [])
            for b in row
        )
        if is_card or (PLAN_RE.search(text) and STATUS_RE.search(text)):  # a card, or one re-posted
            self._on_card_text(chat, text, at, posted=is_card)
            if chat in self.groups:
                self._card_answers(chat, text, at)
            return
        if kind != "send":
            return
        who = WHOAMI_RE.match(text)
        if who:
            queue = self.whoami.get((chat, int(who.group(1))))
            while queue and queue[0].answered is not None:
                queue.popleft()
            if queue:
                queue.popleft().resolve(at, text)
            return
        if text.startswith("PBX office:"):
            req = self._first(chat, "numbers")
            if req:
                req.resolve(at, text)
            return
        if text.startswith("Open plans ("):
            req = self._first(chat, "plans")
            if req:
                req.resolve(at, text)
            return
        ask = ASK_RE.search(text)
        if ask and chat in self.users:
            self.asked.add(ask.group(1))
            if not self.stop_users.is_set():
                self.respond(chat, ask.group(1))
            return
        received = RECEIVED_RE.search(text)
        if received and chat in self.users:
            req = self._first(chat, "password", received.group(1))
            if req:
                req.resolve(at, text)
            return
        # anything else (an error, a refusal): the /addnumber of the login it names, or
        # the oldest request still waiting in this chat
        req = self._card_answers(chat, text, at, resolve=False) or self._oldest(chat)
        if req is not None:
            req.resolve(at, text, expected=False)
            if req.kind == "addnumber":  # refused: the operator's journey for this login is over
                future = self.outcomes.get(req.login)
                if future is not None and not future.done():
                    future.set_result("refused")

    def _card_answers(self, chat: int, text: str, at: float, *, resolve: bool = True) -> Request | None:
        """The /addnumber waiting in this chat for the login the text shows (a card answers it)."""
        queue = self.waiting.get((chat, "addnumber")) or deque()
        req = next(
            (r for r in queue if r.answered is None and r.login and re.search(rf"\b{r.login}\b", text)), None
        )
        if req is not None and resolve:
            req.resolve(at, text)
        return req

    def _oldest(self, chat: int) -> Request | None:
        waiting = [
            r for (c, _kind), queue in self.waiting.items() if c == chat for r in queue if r.answered is None
        ]
        waiting += [
            r for (c, _u), queue in self.whoami.items() if c == chat for r in queue if r.answered is None
        ]
        return min(waiting, key=lambda r: r.sent, default=None)

    async def scan(self) -> None:
        """Follow the Telegram server's events as they happen."""
        while True:
            with contextlib.suppress(TimeoutError):
                await self.tg.wait_for(lambda e: True, after=self.seen, timeout=1.0)
            self.catch_up()

    def catch_up(self) -> None:
        events = self.tg.events
        while self.seen < len(events):
            self.on_event(events[self.seen])
            self.seen += 1

    async def watch_lag(self) -> None:
        """How late this process's event loop runs (the figures are only as good as this)."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            self.lag.append(time.monotonic() - before - 0.1)

    # ------------------------------------------------------------------ the users

    async def wait(self, future: asyncio.Future, timeout: float) -> Any:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        return None

    async def think(self, user: User) -> None:
        lo, hi = (float(x) for x in self.args.think.split(":"))
        await asyncio.sleep(user.rng.uniform(lo, hi))

    def respond(self, user_id: int, login: str) -> None:
        """The operator reads the bot's request and sends the password a moment later."""

        async def later() -> None:
            user = self.users[user_id]
            await asyncio.sleep(user.rng.uniform(1.0, 3.0))
            req = self.expect(Request("password", user_id, user_id, time.monotonic(), login=login))
            self.tg.send(user_id, user_id, f"Ld-{login}-{secrets.token_hex(4)}!")
            await self.wait(req.done, self.args.answer_timeout)

        task = asyncio.get_running_loop().create_task(later())
        self.responders.add(task)
        task.add_done_callback(self.responders.discard)

    async def operator(self, user: User) -> None:
        await asyncio.sleep(user.rng.uniform(0, 5))
        while time.monotonic() < self.end:
            login = str(next(self.logins))
            user.logins.append(login)
            self.login_owner[login] = user.id
            self.outcomes[login] = asyncio.get_running_loop().create_future()
            req = self.expect(Request("addnumber", user.id, user.group, time.monotonic(), login=login))
            self.tg.send(user.id, user.group, f"/addnumber zadarma {login} → IVR")
            await self.wait(req.done, self.args.answer_timeout)
            if req.answered is not None:
                await self.wait(self.outcomes[login], self.args.outcome_timeout)
            await self.think(user)

    def open_cards(self, group: int) -> list[tuple[int, str]]:
        found = []
        for message in self.tg.bot_messages(group):
            for row in (message.get("reply_markup") or {}).get("inline_keyboard", []):
                for button in row:
                    data = button.get("callback_data") or ""
                    if data.startswith("pl:a:"):
                        found.append((message["message_id"], data))
        return found

    async def approver(self, user: User) -> None:
        await asyncio.sleep(user.rng.uniform(0, 5))
        while not self.stop_users.is_set():
            cards = [(m, d) for m, d in self.open_cards(user.group) if d not in user.pressed]
            if not cards:
                await asyncio.sleep(0.5)  # a glance at the chat
                continue
            message_id, data = user.rng.choice(cards)
            user.pressed.add(data)
            try:
                query = self.tg.press(user.id, user.group, message_id, data)
            except KeyError:
                continue  # the card is gone
            req = self.expect(Request("press", user.id, user.group, time.monotonic(), query=query, data=data))
            if await self.wait(req.done, self.args.answer_timeout) is None:
                user.pressed.discard(data)  # no answer: a person would press again
            await self.think(user)

    async def viewer(self, user: User) -> None:
        await asyncio.sleep(user.rng.uniform(0, 5))
        while time.monotonic() < self.end:
            command = user.rng.choices(["whoami", "plans", "numbers"], weights=[40, 35, 25])[0]
            chat = user.group if self.args.reads_in == "group" else user.id
            req = self.expect(Request(command, user.id, chat, time.monotonic()))
            self.tg.send(user.id, chat, f"/{command}")
            await self.wait(req.done, self.args.answer_timeout)
            await self.think(user)

    def settled(self) -> bool:
        """Nothing more is due: every update answered, every card at a final status."""
        if self.responders:
            return False
        if any(r.answered is None for r in self.requests):
            return False
        if any(self.open_cards(g) for g in self.groups):
            return False
        return all(self.plan_status.get(p) in (*FINAL, "stale") for p in self.cards)

    async def run(self) -> None:
        self.make_users()
        await self.start_world()
        await self.start_bot()
        scanner = asyncio.create_task(self.scan())
        lag = asyncio.create_task(self.watch_lag())
        self.t0, self.wall0 = time.monotonic(), time.time()
        self.load_at_start = os.getloadavg()
        self.end = self.t0 + self.args.duration
        self.grace_end = self.end + self.args.grace
        roles = {"operator": self.operator, "approver": self.approver, "viewer": self.viewer}
        tasks = [asyncio.create_task(roles[u.role](u)) for u in self.users.values()]
        print(
            f"running {self.args.duration:g} s with {len(self.users)} users ...", file=sys.stderr, flush=True
        )
        await asyncio.sleep(self.args.duration)
        while time.monotonic() < self.grace_end and not self.settled():  # noqa: ASYNC110 (a deadline too)
            await asyncio.sleep(0.5)
        self.ended_at = time.monotonic()
        self.load_at_end = os.getloadavg()
        self.stop_users.set()
        for task in [*tasks, *self.responders]:
            task.cancel()
        await asyncio.gather(*tasks, *self.responders, return_exceptions=True)
        await asyncio.sleep(1.0)  # the last events in flight
        scanner.cancel()
        lag.cancel()
        await asyncio.gather(scanner, lag, return_exceptions=True)
        self.catch_up()
        self.pending_deliveries = len(self.tg._deliveries)
        await self.stop_bot()  # it may still answer while it drains: counted, but as late
        self.stopped_at = time.monotonic()
        self.catch_up()
        if self.args.dump_events:
            with self.args.dump_events.open("w") as f:
                for e in self.tg.events:
                    e = {k: v for k, v in e.items() if k not in ("content", "markup")}
                    f.write(json.dumps({**e, "at": round(e["at"] - self.t0, 3)}, default=str) + "\n")

    # ------------------------------------------------------------------ the figures

    def minute(self, at: float) -> int:
        return int((at - self.t0) // 60) + 1

    def minute_of(self, when: datetime) -> int:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return int((when.timestamp() - self.wall0) // 60) + 1

    def seconds_of(self, when: datetime) -> float:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return round(when.timestamp() - self.wall0, 1)

    def store(self) -> Any:
        from storage.db import make_engine
        from storage.repos import Repos

        if self.args.storage == "sqlite":
            return Repos(make_engine(f"sqlite:///{self.data / 'data0' / 'pbxbot.db'}"))
        return Repos(make_engine(self.direct_url()))

    def figures(self) -> dict[str, Any]:
        a = self.args
        store = self.store()
        audit = store.audit.trail(limit=10_000_000)
        plans = {p.id: p for p in store.plans.find(limit=10_000_000)}
        minutes = list(range(1, self.minute(self.stopped_at) + 1))
        ran = self.ended_at - self.t0

        def mid(m: int) -> float:  # a minute is labelled by where its middle falls: run, grace, stop
            return (m - 0.5) * 60

        per: dict[int, dict[str, Any]] = {m: defaultdict(int) for m in minutes}
        ended_by: dict[int, Counter] = {m: Counter() for m in minutes}

        def bucket(m: int) -> dict[str, Any]:
            return per.setdefault(m, defaultdict(int))

        for r in self.requests:
            bucket(self.minute(r.sent))["updates"] += 1
        for at, _ in self.card_events:
            bucket(self.minute(at))["cards"] += 1
        applying: Counter = Counter()
        api_calls: Counter = Counter()  # PBX calls the audit trail holds per plan
        ended_plans: set[str | None] = set()
        for ev in audit:
            m = self.minute_of(ev.at)
            if ev.event == "proposed":
                bucket(m)["proposed"] += 1
            elif ev.event == "applying":
                applying[ev.plan_id] += 1
            elif ev.event == "api_call" and ev.plan_id:
                api_calls[ev.plan_id] += 1
            if ev.event in ENDED_EVENTS and ev.plan_id not in ended_plans:  # a plan ends once
                ended_plans.add(ev.plan_id)  # (a stale plan has two: the executor's and the lifecycle's)
                ended_by.setdefault(m, Counter())[ev.event] += 1
                if ev.event == "applied":
                    bucket(m)["applied"] += 1
        for at, status in self.sim.calls:
            if at >= self.t0:
                bucket(self.minute(at))["pbx_calls"] += 1
                if status == 429:
                    bucket(self.minute(at))["pbx_429"] += 1
        for at in self.tg.limited_at:
            if at >= self.t0:
                bucket(self.minute(at))["tg_429"] += 1
        whoami: dict[int, list[float]] = defaultdict(list)
        for r in self.requests:
            if r.kind == "whoami" and r.answered is not None:
                whoami[self.minute(r.sent)].append(r.answered - r.sent)
        all_whoami = [x for xs in whoami.values() for x in xs]
        asked_whoami = sum(1 for r in self.requests if r.kind == "whoami")

        rows = []
        for m in sorted(per):
            row = {
                "minute": m if mid(m) <= a.duration else f"{m} (grace)" if mid(m) <= ran else f"{m} (stop)",
                "updates": per[m]["updates"],
                "cards": per[m]["cards"],
                "proposed": per[m]["proposed"],
                "applied": per[m]["applied"],
                "ended": dict(ended_by.get(m, {})),
                "whoami_n": len(whoami.get(m, [])),
                "whoami_p50_ms": ms(pct(whoami.get(m, []), 0.5)),
                "whoami_p95_ms": ms(pct(whoami.get(m, []), 0.95)),
                "pbx_calls": per[m]["pbx_calls"],
                "pbx_429": per[m]["pbx_429"],
                "tg_429": per[m]["tg_429"],
            }
            rows.append(row)

        # --- the end checks
        double = sorted(p for p, n in applying.items() if n > 1)
        story: dict[str, list[str]] = defaultdict(list)  # what happened around each second `applying`
        for ev in audit:
            if ev.plan_id in double and ev.event in ("applying", "apply_refused", *ENDED_EVENTS):
                story[ev.plan_id].append(ev.event)
        accounts = Counter(
            (str(p.get("host", "")).lower(), str(p.get("username", "")))
            for p in self.sim.state.providers.values()
        )
        twins = sorted(f"{u}@{h}" for (h, u), n in accounts.items() if n > 1)
        lost_approvals = []
        counted = [r for r in self.requests if r.kind == "press" and r.answer.startswith("Counted")]
        for r in counted:
            _, _, plan_id, version = r.data.split(":")
            rows_ = store.approvals.of(plan_id, int(version))
            if not any(x.user_id == r.user and x.decision == "approve" for x in rows_):
                lost_approvals.append(f"{plan_id}:{r.user}")
        open_status = ("proposed", "approved", "applying")
        grace_wall = self.wall0 + (self.ended_at - self.t0)
        ended_at_wall = {}
        for ev in audit:
            if ev.event in ENDED_EVENTS and ev.plan_id not in ended_at_wall:
                when = ev.at if ev.at.tzinfo else ev.at.replace(tzinfo=UTC)
                ended_at_wall[ev.plan_id] = when.timestamp()
        never_ended = sorted(
            p.id
            for p in plans.values()
            if p.status in open_status or ended_at_wall.get(p.id, float("inf")) > grace_wall
        )
        unanswered = Counter(r.kind for r in self.requests if r.answered is None)
        late = Counter(r.kind for r in self.requests if r.answered is not None and r.answered > self.ended_at)
        tried: dict[int, list[int]] = defaultdict(list)
        for update_id, _target, status in self.tg.delivered:
            tried[update_id].append(status)
        undelivered = sorted(u for u, sts in tried.items() if 200 not in sts)
        failed_attempts = sum(1 for _u, _t, s in self.tg.delivered if s != 200)
        proposed_ids = {ev.plan_id for ev in audit if ev.event == "proposed" and ev.plan_id}
        texts: dict[int, list[str]] = defaultdict(list)
        for e in self.tg.events:
            if e["kind"] in ("send", "document") and e.get("chat_id") in self.groups:
                texts[e["chat_id"]].append(e.get("text") or "")
        dropped = []
        for plan_id in sorted(proposed_ids):
            row = plans.get(plan_id)
            chat = row.chat_id if row else None
            if chat is None or not any(re.search(rf"\bPlan {plan_id}\b", t) for t in texts[chat]):
                dropped.append(plan_id)
        status_now = Counter(p.status for p in plans.values())
        answered = [r for r in self.requests if r.answered is not None]
        by_kind = {}
        for kind in ("whoami", "plans", "numbers", "addnumber", "password", "press"):
            lat = [r.answered - r.sent for r in answered if r.kind == kind]
            by_kind[kind] = {
                "sent": sum(1 for r in self.requests if r.kind == kind),
                "answered": len(lat),
                "of_them_errors": sum(1 for r in answered if r.kind == kind and not r.expected),
                "p50_ms": ms(pct(lat, 0.5)),
                "p95_ms": ms(pct(lat, 0.95)),
            }
        press_answers = Counter(
            re.sub(
                r"\b[0-9a-f]{6}\b",
                "<id>",
                r.answer.split(":")[0] if r.answer.startswith("Counted") else r.answer,
            )[:70]
            for r in self.requests
            if r.kind == "press" and r.answered is not None
        )
        logs = self.logs_tail(10**9)
        retries = [
            p
            for p in double
            if all(
                b == "apply_refused" for a, b in zip(story[p], story[p][1:], strict=False) if a == "applying"
            )
        ]
        checks = {
            "double_applies": len(double) + len(twins),
            "lost_approvals": len(lost_approvals),
            "plans_never_ended": len(never_ended),
            "updates_lost": sum(unanswered.values()) + len(undelivered),
            "cards_dropped": len(dropped),
        }
        return {
            "bench": "load",
            "python": sys.version.split()[0],
            "conditions": {
                "duration_s": a.duration,
                "grace_s": a.grace,
                "ran_s": round(self.ended_at - self.t0, 1),
                "bot_stop_s": round(self.stopped_at - self.ended_at, 1),
                "bot_exit_codes": [p.returncode for p in self.procs],
                "users": len(self.users),
                "roles": dict(Counter(u.role for u in self.users.values())),
                "groups": a.groups,
                "storage": a.storage,
                "db_delay_ms": a.db_delay_ms if a.storage == "postgresql" else 0,
                "replicas": a.replicas,
                "mode": "webhook" if a.replicas > 1 else "polling",
                "redis_db": self.redis_db,
                "pbx_rate_limit": "on: 180/min + 20 burst per client, 300 s block"
                + (
                    "; the replicas reach it from one address, as containers behind a host's NAT do"
                    if a.replicas > 1
                    else ""
                ),
                "bot_pbx_client": "default 165/min",
                "telegram_limits": "on: 20/min per group, 30/s" if a.telegram_limits else "off",
                "reads_in": a.reads_in,
                "think_s": a.think,
                "answer_timeout_s": a.answer_timeout,
                "outcome_timeout_s": a.outcome_timeout,
                "reload_wait_s": a.reload_wait if a.reload_wait is not None else "default (15)",
                "pbx_numbers_at_start": a.numbers,
                "seed": a.seed,
                "machine": f"{os.cpu_count()} CPUs, load average {self.load_at_start[0]:.2f} at the start,"
                f" {self.load_at_end[0]:.2f} at the end (shared with other work)",
            },
            "per_minute": rows,
            "whoami": {
                "sent": asked_whoami,
                "answered": len(all_whoami),
                "p50_ms": ms(pct(all_whoami, 0.5)),
                "p95_ms": ms(pct(all_whoami, 0.95)),
                "max_ms": ms(max(all_whoami)) if all_whoami else None,
            },
            "requests": by_kind,
            "press_answers": dict(press_answers.most_common(8)),
            "plans": {
                "total": len(plans),
                "by_status": dict(status_now),
                "cards_posted": len(self.cards),
            },
            "pbx": {
                "calls": sum(1 for at, _ in self.sim.calls if at >= self.t0),
                "429": sum(1 for at, s in self.sim.calls if at >= self.t0 and s == 429),
                "blocked": self.sim.blocked(),
                "accounts_at_end": len(self.sim.state.providers),
                "audited_calls_per_applied_plan_p50": pct(
                    [api_calls[p.id] for p in plans.values() if p.status == "applied"], 0.5
                ),
                "calls_by_endpoint": dict(self.sim.stats.most_common(12)),
            },
            "telegram": {
                "429": len(self.tg.limited_at),
                "webhook_failed_attempts": failed_attempts,
                "webhook_undelivered": len(undelivered),
                "webhook_pending_at_end": getattr(self, "pending_deliveries", 0),
            },
            "checks": checks,
            "late_answers": sum(late.values()),
            "details": {
                "double_applying": {p: " > ".join(story[p]) for p in double[:20]},
                "double_applying_only_retries_after_apply_refused": len(retries),
                "duplicate_accounts": twins[:20],
                "lost_approvals": lost_approvals[:20],
                "never_ended": {
                    p: f"{plans[p].status}, proposed at {self.seconds_of(plans[p].created_at)} s"
                    + (f", ended at {ended_at_wall[p] - self.wall0:.1f} s" if p in ended_at_wall else "")
                    for p in never_ended[:20]
                },
                "unanswered": dict(unanswered),
                "answered_only_while_the_bot_stopped": dict(late),
                "cards_dropped": dropped[:20],
            },
            "bot_log": {
                "errors": len(re.findall(r"\bERROR\b", logs)),
                "tracebacks": logs.count("Traceback"),
                "top_errors": dict(
                    Counter(
                        re.sub(r"\b[0-9a-f]{6}\b|\d+", "#", line.split("ERROR", 1)[1])[:160].strip()
                        for line in logs.splitlines()
                        if "ERROR" in line
                    ).most_common(5)
                ),
            },
            "bench_loop_lag_ms": {"p99": ms(pct(self.lag, 0.99)), "max": ms(max(self.lag, default=0))},
        }


def table(result: dict[str, Any]) -> str:
    c, w, pl, pbx, tg = (result[k] for k in ("conditions", "whoami", "plans", "pbx", "telegram"))
    roles = ", ".join(f"{v} {k}s" for k, v in c["roles"].items())
    out = [
        f"load: {c['users']} users ({roles}) in {c['groups']} groups for {c['duration_s']:g} s"
        f" (+ up to {c['grace_s']:g} s grace; ran {c['ran_s']} s, then the bot took {c['bot_stop_s']} s"
        f" to stop, exit {c['bot_exit_codes']}); storage {c['storage']},"
        f" db delay {c['db_delay_ms']:g} ms, {c['replicas']} replica(s) ({c['mode']});"
        f" PBX rate limit {c['pbx_rate_limit']}, client {c['bot_pbx_client']};"
        f" Telegram limits {c['telegram_limits']}; reads in {c['reads_in']}; think {c['think_s']} s;"
        f" reload_wait {c['reload_wait_s']}; {c['machine']}",
        "",
        f"{'minute':>11} {'updates':>7} {'cards':>5} {'prop':>4} {'appl':>4}  {'whoami p50/p95 ms':>21}"
        f" {'pbx':>4} {'429':>3} {'tg429':>5}  ended",
    ]
    for r in result["per_minute"]:
        p50, p95 = (r[k] if r[k] is not None else "-" for k in ("whoami_p50_ms", "whoami_p95_ms"))
        lat = f"{p50}/{p95} (n={r['whoami_n']})"
        ended = ", ".join(f"{k} {v}" for k, v in sorted(r["ended"].items())) or "-"
        out.append(
            f"{r['minute']!s:>11} {r['updates']:>7} {r['cards']:>5} {r['proposed']:>4} {r['applied']:>4}"
            f"  {lat:>21} {r['pbx_calls']:>4} {r['pbx_429']:>3} {r['tg_429']:>5}  {ended}"
        )
    answers = "; ".join(
        f"{k} {v['answered']}/{v['sent']} ({v['of_them_errors']} errors)"
        f" p50 {v['p50_ms']} p95 {v['p95_ms']} ms"
        for k, v in result["requests"].items()
    )
    lag = result["bench_loop_lag_ms"]
    out += [
        "",
        f"/whoami overall: {w['answered']} of {w['sent']} answered, p50 {w['p50_ms']} ms,"
        f" p95 {w['p95_ms']} ms, max {w['max_ms']} ms",
        f"answered (sent -> answer): {answers}",
        f"answers that came only while the bot was stopping: {result['late_answers']}",
        f"plans: {pl['total']} {pl['by_status']}, cards {pl['cards_posted']}; PBX calls {pbx['calls']},"
        f" 429s {pbx['429']}, blocked {pbx['blocked']}, audited calls per applied plan p50"
        f" {pbx['audited_calls_per_applied_plan_p50']}; Telegram 429s {tg['429']};"
        f" webhook failed attempts {tg['webhook_failed_attempts']}, undelivered {tg['webhook_undelivered']}",
        f"PBX calls by endpoint: {pbx['calls_by_endpoint']}",
        f"press answers: {result['press_answers']}",
        f"bot log: {result['bot_log']['errors']} ERROR lines, {result['bot_log']['tracebacks']} tracebacks"
        f" {result['bot_log']['top_errors']};"
        f" bench loop lag p99 {lag['p99']} ms, max {lag['max']} ms",
        "",
    ]
    for name, value in result["checks"].items():
        out.append(f"{name:>18}: {value:>5}  {'ok' if value == 0 else 'FAIL (must be 0)'}")
    details = {k: v for k, v in result["details"].items() if v}
    if details:
        out.append(f"details: {json.dumps(details)[:2000]}")
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="pbxbot under a realistic load (see the module docstring)")
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--grace", type=float, default=120.0, help="seconds after it for plans to end (120)")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--groups", type=int, default=3)
    p.add_argument("--roles", default="20:20:60", help="operators:approvers:viewers, per cent")
    p.add_argument("--storage", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--db-delay-ms", type=float, default=0.0, help="added to each packet to/from PostgreSQL")
    p.add_argument("--replicas", type=int, choices=[1, 2], default=1)
    p.add_argument(
        "--pg-url",
        default=os.environ.get("PBXBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    p.add_argument("--redis-host", default="127.0.0.1")
    p.add_argument("--redis-db", type=int, default=None, help="default: the first empty one of 10-15")
    p.add_argument("--no-telegram-limits", dest="telegram_limits", action="store_false")
    p.add_argument("--reads-in", choices=["private", "group"], default="private")
    p.add_argument("--think", default="3:10", help="seconds between a user's actions, uniform lo:hi")
    p.add_argument("--answer-timeout", type=float, default=60.0)
    p.add_argument("--outcome-timeout", type=float, default=120.0)
    p.add_argument("--reload-wait", type=float, default=None, help="the bot's [pbx] reload_wait (default 15)")
    p.add_argument("--numbers", type=int, default=20, help="logins on the PBX at start")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--dump-events", type=Path, default=None, help="write the bot's Telegram events here")
    args = p.parse_args(argv)
    if args.replicas > 1 and args.storage != "postgresql":
        p.error("--replicas 2 needs --storage postgresql (and Redis)")
    if args.duration <= 0 or args.duration > 3600 or args.grace < 0 or args.grace > 1800:
        p.error("--duration must be in (0, 3600] and --grace in [0, 1800]")
    return args


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pbxbot-bench-load-") as tmp:
        load = Load(args, Path(tmp))
        try:
            # a hard bound on the whole run, set-up and teardown aside
            await asyncio.wait_for(load.run(), args.duration + args.grace + 300)
            result = load.figures()
        except BaseException:
            with contextlib.suppress(Exception):
                print(load.logs_tail(), file=sys.stderr)
            raise
        finally:
            await asyncio.shield(load.cleanup())
    print(table(result))
    out = args.out or Path(__file__).with_name("results") / f"load-{args.storage}-{args.replicas}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PBXBOT_LANG", "en")
    sys.exit(asyncio.run(main()))
