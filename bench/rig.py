"""What the benches share: the simulator that logs every API call, the bot as a
process of its own (restartable, with a clock the bench can move), the local
Telegram server and its people, and the arithmetic (percentiles, the union of
intervals, RSS).

    rig = Rig(numbers=1000, data=tmp, scale=10)
    async with rig:                       # simulator + Telegram here, the bot in its own process
        card = await rig.addnumber()      # /addnumber -> card: seconds, PBX reads, ...
        await rig.restart()               # a new bot process over the same data directory

The simulator keeps MikoPBX's nginx limit ON (180 requests + 20 burst per
window, then a block) unless `rate_limit=False`. With `scale` > 1 the window is
60/scale s and the bot's client allows 165*scale calls a minute: the same shape
scale times faster. Read counts do not depend on the scale; times do.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import signal
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plan import seed  # noqa: E402
from sandbox.demo import load_seed  # noqa: E402
from sandbox.mikopbx import MikoPbxSimulator  # noqa: E402
from sandbox.telegram import TelegramSandbox  # noqa: E402

KEY = secrets.token_hex(32)
TOKEN = f"{720000000 + secrets.randbelow(10**6)}:{secrets.token_urlsafe(24)}"
CLIENT_PER_MIN = 165  # the bot's default budget
OLGA, OLEG, BORIS = 3, 4, 2  # operators Olga and Oleg, approver Boris
GROUPS = [-1001000000900 - i for i in range(12)]  # Telegram's 20 messages/min per group: spread the cards
CARD_RE = re.compile(r"(Plan|План) ([0-9a-f]{6})")
FINAL_RE = re.compile(r"Status: (applied|rolled back|FAILED|cancelled|expired|stale)")


# ---------------------------------------------------------------------- arithmetic


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def union(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of the intervals, clipped to [lo, hi]."""
    total, end = 0.0, lo
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------- the PBX


@dataclass(frozen=True)
class Call:
    start: float  # monotonic, when the simulator got it
    end: float  # when it answered
    method: str
    path: str
    status: int

    @property
    def read(self) -> bool:
        return self.method == "GET"


class CountingSimulator(MikoPbxSimulator):
    """The simulator with a log of every API call (sandbox controls aside)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.log: list[Call] = []

    async def _api(self, request: Any) -> Any:
        started = time.monotonic()
        response = await super()._api(request)
        path = request.path.split("/api/v3", 1)[-1]
        self.log.append(Call(started, time.monotonic(), request.method, path, response.status))
        return response

    def calls(self, lo: float, hi: float = float("inf")) -> list[Call]:
        return [c for c in self.log if lo <= c.start <= hi]

    def blocked(self) -> bool:
        return any(w.blocked_until > 0 for w in self._windows.values())


def pbx_state(numbers: int, path: Path, *, rate_limit: bool = True, cdr_per_number: int = 0) -> Any:
    """bench/plan.py's PBX (`numbers` logins on sip.zadarma.com under the recipe),
    with a few inbound calls a number over the last week when asked."""
    seed(numbers, path)
    state = load_seed(str(path))
    state.settings["PBXRateLimitEnabled"] = "1" if rate_limit else "0"
    state.registrar.delay = 0.05
    if cdr_per_number:
        from bench.digest import with_calls
        from storage.tables import utcnow

        with_calls(state, cdr_per_number, utcnow())
    return state


# ---------------------------------------------------------------------- the rig


@dataclass
class Card:
    plan: str
    chat: int
    message_id: int
    seconds: float
    reads: int
    writes: int
    calls: list[Call]
    sent: float
    at: float


class Rig:
    """Simulator + Telegram server in this process; the bot (`pbxbot run`, SQLite in
    `data`) in a process of its own, through bench/shifted.py."""

    def __init__(
        self,
        numbers: int,
        data: Path,
        *,
        scale: float = 1.0,
        rate_limit: bool = True,
        cdr_per_number: int = 0,
        latency_ms: float = 0.0,
        client_per_min: float | None = None,
    ):
        self.numbers = numbers
        self.data = data
        self.scale = scale
        self.rate_limit = rate_limit
        self.cdr_per_number = cdr_per_number
        self.latency_ms = latency_ms
        self.client_per_min = client_per_min or CLIENT_PER_MIN * scale
        self.proc: asyncio.subprocess.Process | None = None
        self.login = 847900
        self.log = data / f"bot-{numbers}.log"
        self.ready_at = 0.0
        self.started_at = 0.0

    async def __aenter__(self) -> Rig:
        self.data.mkdir(parents=True, exist_ok=True)
        state = pbx_state(
            self.numbers,
            self.data / f"state-{self.numbers}.json",
            rate_limit=self.rate_limit,
            cdr_per_number=self.cdr_per_number,
        )
        self.sim = CountingSimulator(state, api_keys=[KEY], rate_window=60.0 / self.scale)
        self.sim.latency = self.latency_ms / 1000
        await self.sim.start()
        self.tg = TelegramSandbox(TOKEN)
        await self.tg.start()
        self.tg.add_user(OLGA, "Olga", username="olga", language_code="en")
        self.tg.add_user(OLEG, "Oleg", username="oleg", language_code="en")
        self.tg.add_user(BORIS, "Boris", username="boris", language_code="en")
        for group in GROUPS:
            self.tg.add_group(group, "PBX admins", [OLGA, OLEG, BORIS], admins=[BORIS])
        self.tg.started.update({OLGA, OLEG})  # the bot asks them for SIP passwords in private
        self.config = self.data / f"bot-{self.numbers}.toml"
        self.config.write_text(
            'default_language = "en"\n'
            f'[telegram]\ntoken = "{TOKEN}"\napi_base = "{self.tg.url}"\n'
            "groups = { " + ", ".join(f'"{g}" = "office"' for g in GROUPS) + " }\n"
            f'[storage]\ndata_dir = "{self.data / f"db-{self.numbers}"}"\n'
            f"[policy]\napprovers = [{BORIS}]\noperators = [{OLGA}, {OLEG}]\n"
            f'[pbx.office]\nurl = "{self.sim.url}"\napi_key = "{KEY}"\n'
            f"rate_limit_per_min = {round(self.client_per_min)}\nreload_wait = 0\ntimeout = 60\n",
            encoding="utf-8",
        )
        await self.start_bot()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_bot()
        await self.tg.stop()
        await self.sim.stop()

    # ------------------------------------------------------------------ the bot process

    async def start_bot(self) -> None:
        """A new bot process; returns when it polls. `started_at`/`ready_at` bound its start-up."""
        self.started_at = time.monotonic()
        polls = self.tg.calls.get("getUpdates", 0)
        commands_set = self.tg.calls.get("setMyCommands", 0)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "bench" / "shifted.py"), "--config", str(self.config), "run",
            cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env={**os.environ, "PBXBOT_LANG": "en"},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        calls = self.tg.calls
        while calls.get("setMyCommands", 0) == commands_set or calls.get("getUpdates", 0) <= polls:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the bot did not start: " + self.log.read_text(errors="replace")[-3000:])
            await asyncio.sleep(0.02)
        self.ready_at = time.monotonic()

    async def stop_bot(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 120)
        self.proc = None

    async def restart(self) -> None:
        await self.stop_bot()
        await self.start_bot()

    async def move_clock(self) -> None:
        """The bot's clocks jump forward by bench/shifted.py's step (600 s); returns once it polls again."""
        assert self.proc is not None
        polls = self.tg.calls.get("getUpdates", 0)
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 60
        # the server's counter: nothing to wait on but a look now and then
        while self.tg.calls.get("getUpdates", 0) <= polls + 1 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)

    def rss(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)

    # ------------------------------------------------------------------ people

    def next_login(self) -> str:
        self.login += 1
        return str(self.login)

    def send_addnumber(self, login: str, *, user: int = OLGA) -> tuple[int, int, float]:
        """`user` writes /addnumber in a group; (group, event index before, when sent)."""
        group = GROUPS[int(login) % len(GROUPS)]
        after = len(self.tg.events)
        sent = time.monotonic()
        self.tg.send(user, group, f"/addnumber zadarma {login} → IVR")
        return group, after, sent

    async def card(self, login: str, group: int, after: int, sent: float, limit_s: float = 900) -> Card:
        """The plan card for `login` in `group`, posted after event `after` (sent, or written
        over the "reading N accounts" notice a long read posts first)."""
        event = await self.tg.wait_for(
            lambda e: (
                e["kind"] in ("send", "edit")
                and e["chat_id"] == group
                and login in (e.get("text") or "")
                and CARD_RE.search(e.get("text") or "") is not None
            ),
            after=after,
            timeout=limit_s,
        )
        calls = self.sim.calls(sent, event["at"])
        return Card(
            plan=CARD_RE.search(event["text"]).group(2),
            chat=group,
            message_id=event["message_id"],
            seconds=event["at"] - sent,
            reads=sum(1 for c in calls if c.read),
            writes=sum(1 for c in calls if not c.read),
            calls=calls,
            sent=sent,
            at=event["at"],
        )

    async def addnumber(self, *, user: int = OLGA, login: str | None = None) -> Card:
        login = login or self.next_login()
        group, after, sent = self.send_addnumber(login, user=user)
        card = await self.card(login, group, after, sent)
        # the command is over when the bot has also asked for the password in private
        asked = lambda e: e["kind"] == "send" and e["chat_id"] == user  # noqa: E731
        await self.tg.wait_for(asked, after=after, timeout=60)
        return card

    async def give_password(self, card: Card, *, user: int = OLGA) -> None:
        """`user` answers the bot's private request for this plan's SIP password (as a reply to
        it: other plans of theirs may be waiting for one too)."""
        asks = [
            e
            for e in self.tg.events
            if e["kind"] == "send" and e["chat_id"] == user and f"(plan {card.plan})" in (e.get("text") or "")
        ]
        if not asks:
            raise LookupError(f"the bot did not ask {user} for the password of plan {card.plan}")
        after = len(self.tg.events)
        self.tg.send(user, user, f"Bench-{secrets.token_hex(6)}!", reply_to=asks[-1]["message_id"])
        await self.tg.wait_for(
            lambda e: e["kind"] == "send" and e["chat_id"] == user and "received" in (e.get("text") or ""),
            after=after,
            timeout=60,
        )

    def approve_button(self, card: Card) -> str:
        for button in self.tg.buttons(card.chat, card.message_id):
            data = button.get("callback_data") or ""
            if data.startswith(f"pl:a:{card.plan}:"):
                return data
        buttons = self.tg.buttons(card.chat, card.message_id)
        raise LookupError(f"no Approve button under plan {card.plan}: {buttons}")

    async def approve_and_wait(self, card: Card, limit_s: float = 900) -> tuple[str, float, float]:
        """Boris presses Approve; (the final status the card shows, when pressed, when shown)."""
        data = self.approve_button(card)
        pressed = time.monotonic()
        self.tg.press(BORIS, card.chat, card.message_id, data)

        def final(e: dict[str, Any]) -> bool:
            if e.get("chat_id") != card.chat or e["kind"] not in ("send", "edit"):
                return False
            text = e.get("text") or ""
            return card.plan in text and FINAL_RE.search(text) is not None

        event = await self.tg.wait_for(final, timeout=limit_s)
        return FINAL_RE.search(event["text"]).group(1), pressed, event["at"]
