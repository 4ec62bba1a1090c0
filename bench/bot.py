"""The bot through its real polling loop: command -> plan card latency, its
overhead over a slow PBX, and the bot process's resident memory.

    .venv/bin/python bench/bot.py [--runs 30] [--numbers 1000] [--big 5000] [--latency-ms 20]

This process hosts the MikoPBX simulator (seeded with N logins on
sip.zadarma.com under the recipe, as bench/plan.py does) and the local
Telegram Bot API server; the bot runs as its own process (`pbxbot run`),
configured to reach both on loopback, with SQLite storage.

1. Latency: an operator sends `/addnumber zadarma <login> → IVR` in the group;
   the time until the plan card is sent. The first command reads every account
   of the host (3 + N calls) and is reported apart; the rest are the bot's
   usual, warm, case. Medians and p95 over --runs.
2. Overhead: the same with --latency-ms added to every PBX call; the
   end-to-end time divided by the PBX time (the union of the intervals during
   which a PBX call was in flight, measured by the simulator). Target <= 1.15.
3. Memory: VmRSS of the bot process idle (started, nothing asked) and after
   proposing on a PBX with --big numbers (its kept account details included).

The last line is one JSON object, also saved to bench/results/bot.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plan import seed  # noqa: E402
from bench.rig import pct, rss_mb, union  # noqa: E402
from sandbox.demo import load_seed  # noqa: E402
from sandbox.mikopbx import MikoPbxSimulator  # noqa: E402
from sandbox.telegram import TelegramSandbox  # noqa: E402

GROUPS = [-1001000000700 - i for i in range(12)]  # Telegram allows 20 messages/min per group: spread the runs
OLGA = 3
KEY = secrets.token_hex(32)
TOKEN = f"{700000000 + secrets.randbelow(10**6)}:{secrets.token_urlsafe(24)}"


class Rig:
    """Simulator + Telegram server here, the bot in a process of its own."""

    def __init__(self, numbers: int, data: Path):
        self.numbers = numbers
        self.data = data
        self.sim: MikoPbxSimulator | None = None
        self.tg: TelegramSandbox | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.login = 847900
        self.log = data / f"bot-{numbers}.log"

    async def __aenter__(self) -> Rig:
        state_file = self.data / f"state-{self.numbers}.json"
        seed(self.numbers, state_file)
        state = load_seed(str(state_file))
        state.settings["PBXRateLimitEnabled"] = "0"
        state.registrar.delay = 0.05
        self.sim = MikoPbxSimulator(state, api_keys=[KEY])
        await self.sim.start()
        self.tg = TelegramSandbox(TOKEN)
        await self.tg.start()
        self.tg.add_user(OLGA, "Olga", username="olga", language_code="en")
        self.tg.add_user(2, "Boris", username="boris", language_code="en")
        for group in GROUPS:
            self.tg.add_group(group, "PBX admins", [OLGA, 2], admins=[2])
        self.tg.started.add(OLGA)  # she has a private chat with the bot: it asks her for the password there
        config = self.data / f"bot-{self.numbers}.toml"
        config.write_text(
            'default_language = "en"\n'
            f'[telegram]\ntoken = "{TOKEN}"\napi_base = "{self.tg.url}"\n'
            "groups = { " + ", ".join(f'"{g}" = "office"' for g in GROUPS) + " }\n"
            f'[storage]\ndata_dir = "{self.data / f"db-{self.numbers}"}"\n'
            f"[policy]\napprovers = [2]\noperators = [{OLGA}]\n"
            f'[pbx.office]\nurl = "{self.sim.url}"\napi_key = "{KEY}"\nrate_limit_per_min = 100000\n'
            "timeout = 60\n",
            encoding="utf-8",
        )
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot.entry.cli",
            "--config",
            str(config),
            "run",
            cwd=str(ROOT),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )
        # started: the command menus are set after getMe, just before polling begins
        deadline = time.monotonic() + 120
        while not self.tg.commands or self.tg.calls.get("getUpdates", 0) == 0:
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError("the bot did not start: " + self.log.read_text(errors="replace")[-2000:])
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await asyncio.wait_for(self.proc.wait(), 60)
        await self.tg.stop()
        await self.sim.stop()

    async def command(self) -> tuple[float, float, float]:
        """One /addnumber: seconds to the card, and the PBX time in between, summed
        over the calls and as the union of their intervals (calls overlap)."""
        self.login += 1
        group = GROUPS[self.login % len(GROUPS)]
        after = len(self.tg.events)
        self.sim.timeline = []
        sent = time.monotonic()
        self.tg.send(OLGA, group, f"/addnumber zadarma {self.login} → IVR")
        card = await self.tg.wait_for(
            lambda e: (
                e["kind"] in ("send", "edit")  # a long read's notice becomes the card
                and e["chat_id"] == group
                and re.search(r"(Plan|План) \w{6}", e["text"] or "")
            ),
            after=after,
            timeout=600,
        )
        calls = [(a, b) for a, b in self.sim.timeline if a >= sent and b <= card["at"]]
        summed = sum(b - a for a, b in calls)
        pbx = union(self.sim.timeline, sent, card["at"])
        self.sim.timeline = None
        # the command is done when the bot has also asked for the password in private
        await self.tg.wait_for(
            lambda e: e["kind"] == "send" and e["chat_id"] == OLGA, after=after, timeout=60
        )
        return card["at"] - sent, summed, pbx


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--numbers", type=int, default=1000)
    parser.add_argument("--big", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    result: dict = {"bench": "bot", "python": sys.version.split()[0], "runs": args.runs}
    with tempfile.TemporaryDirectory(prefix="pbxbot-bench-bot-") as tmp:
        data = Path(tmp)
        async with Rig(args.numbers, data) as rig:
            first = (await rig.command())[0]
            fast = [(await rig.command())[0] * 1000 for _ in range(args.runs)]
            rig.sim.latency = args.latency_ms / 1000
            slow = [await rig.command() for _ in range(max(10, args.runs // 3))]
            ratios = [e2e / summed for e2e, summed, _ in slow if summed > 0]
            strict = [e2e / pbx for e2e, _, pbx in slow if pbx > 0]
            result["latency"] = {
                "numbers": args.numbers,
                "first_ms": round(first * 1000, 1),
                "p50_ms": round(statistics.median(fast), 1),
                "p95_ms": round(pct(fast, 0.95), 1),
            }
            result["overhead"] = {
                "pbx_latency_ms": args.latency_ms,
                "e2e_p50_ms": round(statistics.median(e for e, _, _ in slow) * 1000, 1),
                "pbx_summed_p50_ms": round(statistics.median(s for _, s, _ in slow) * 1000, 1),
                "pbx_union_p50_ms": round(statistics.median(p for _, _, p in slow) * 1000, 1),
                "ratio_p50": round(statistics.median(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "ratio_to_union_p50": round(statistics.median(strict), 3),
            }
            lat, over = result["latency"], result["overhead"]
            print(
                f"{args.numbers} numbers: first card {lat['first_ms']} ms (reads every account),"
                f" then p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms; with {args.latency_ms:g} ms"
                f" per PBX call: e2e / summed PBX time p50 {over['ratio_p50']} (max {over['ratio_max']}),"
                f" e2e / union of PBX time p50 {over['ratio_to_union_p50']}",
                flush=True,
            )
        async with Rig(args.big, data) as rig:
            idle = rss_mb(rig.proc.pid)
            for _ in range(5):
                await rig.command()
            busy = rss_mb(rig.proc.pid)
            result["memory"] = {"idle_mb": round(idle, 1), f"at_{args.big}_numbers_mb": round(busy, 1)}
            print(f"bot process RSS: idle {idle:.1f} MB, after proposing at {args.big} numbers {busy:.1f} MB")
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "bot.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("PBXBOT_LANG", "en")
    asyncio.run(main())
