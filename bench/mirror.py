"""Honest benches of what a PBX read costs the bot, as its users meet it (issue 12).

    .venv/bin/python bench/mirror.py [--scale 10] [--runs 3] [--sizes 50,200,1000] [--numbers 1000]
        [--big 5000] [--big-runs 1] [--latency-ms 20] [--only first,after_apply,...]

Everything goes through the bot's public path: the bot runs as its own process
(`pbxbot run` through bench/shifted.py, SQLite in a data directory the bench
keeps across restarts), people write to it through the local Telegram server,
and the MikoPBX simulator in this process counts and times every API call.
Nothing reaches into the bot's objects, so the bench needs no change whatever
keeps the bot's view of the PBX (kept details, a mirror in storage).

The simulator's nginx limit is ON: 180 requests + 20 burst per window per
client, then a block. The window is 60/--scale s and the bot's client is
configured at 165*scale calls a minute (its default 165/min, scale times
faster): read counts do not depend on the scale, times do (printed with each
table). [pbx] reload_wait = 0 (the simulator applies at once); Telegram limits off.

Scenarios (each in a fresh rig; "restart" = a new bot process over the same
data directory; every bot first proposes one card before anything is
measured, so a restart restarts a bot that has worked):
- first: first card after a restart at --sizes accounts: seconds from
  /addnumber to the card, PBX reads in between (and reads during start-up).
- after_apply: a plan applied (password, Approve), then at once /addnumber of
  another login: reads and time of that card.
- late_apply: a card and its password, then the bot's clocks moved 10 minutes
  forward (SIGUSR1 to bench/shifted.py: time.monotonic, time.time,
  storage.tables.utcnow), then Approve: reads before the first write.
- two: two operators send /addnumber at once right after a restart: both
  cards' times, reads in all.
- digest_card: right after a restart, `/digest`; while it reads, /addnumber
  again and again: the cards' times (p95 over all runs).
- digest: right after a restart, `/digest` at --numbers and --big numbers
  (3 inbound calls a number over the week): time to the last message, reads
  (CDR pages apart).
- overhead: --latency-ms added to each PBX call; warm /addnumber cards:
  seconds to the card / the union of the intervals in which a PBX call was in
  flight (as the simulator saw them), and / their sum (the old, flattering figure).
- memory: the bot process's RSS idle (started, nothing asked), after the first
  card at --big accounts, and after a digest at --big right after a restart.

Prints a table (medians over runs); the last line is one JSON object, also
saved to bench/results/mirror.json (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rig import BORIS, GROUPS, OLEG, OLGA, Rig, median, pct, union  # noqa: E402


def r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def count_reads(calls: list[Any]) -> dict[str, int]:
    cdr = sum(1 for c in calls if c.read and c.path.startswith("/cdr"))
    return {
        "reads": sum(1 for c in calls if c.read),
        "cdr_reads": cdr,
        "writes": sum(1 for c in calls if not c.read),
        "http_429": sum(1 for c in calls if c.status == 429),
    }


# ---------------------------------------------------------------------- scenarios


async def first(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        async with Rig(n, data / f"first-{n}", scale=args.scale) as rig:
            warm = await rig.addnumber()
            runs = []
            for _ in range(args.runs):
                await rig.restart()
                start_calls = rig.sim.calls(rig.started_at, time.monotonic())
                card = await rig.addnumber()
                runs.append((card, count_reads(start_calls)["reads"], count_reads(card.calls)["http_429"]))
            row = {
                "accounts": n,
                "runs": len(runs),
                "first_ever_card_s": r(warm.seconds),
                "first_ever_card_reads": warm.reads,
                "card_s_p50": r(median([c.seconds for c, _, _ in runs])),
                "card_reads_p50": median([c.reads for c, _, _ in runs]),
                "card_reads_all": [c.reads for c, _, _ in runs],
                "startup_reads_p50": median([s for _, s, _ in runs]),
                "http_429": sum(x for _, _, x in runs),
            }
        print(
            f"first card after a restart, {n} accounts: {row['card_s_p50']} s, {row['card_reads_p50']} reads"
            f" (runs {row['card_reads_all']}), start-up reads {row['startup_reads_p50']}",
            flush=True,
        )
        rows.append(row)
    return rows


async def after_apply(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    n = args.numbers
    async with Rig(n, data / "after-apply", scale=args.scale) as rig:
        await rig.addnumber()
        runs = []
        for _ in range(args.runs):
            applied = await rig.addnumber()
            await rig.give_password(applied)
            status, pressed, done = await rig.approve_and_wait(applied)
            apply_calls = rig.sim.calls(pressed, done)
            card = await rig.addnumber()
            runs.append((card, status, count_reads(apply_calls), done - pressed))
    row = {
        "accounts": n,
        "runs": len(runs),
        "statuses": [s for _, s, _, _ in runs],
        "card_s_p50": r(median([c.seconds for c, _, _, _ in runs])),
        "card_reads_p50": median([c.reads for c, _, _, _ in runs]),
        "card_reads_all": [c.reads for c, _, _, _ in runs],
        "apply_reads_p50": median([a["reads"] for _, _, a, _ in runs]),
        "apply_writes_p50": median([a["writes"] for _, _, a, _ in runs]),
        "apply_s_p50": r(median([s for _, _, _, s in runs])),
    }
    print(
        f"a propose right after an apply, {n} accounts: {row['card_reads_p50']} reads"
        f" (runs {row['card_reads_all']}), {row['card_s_p50']} s; the apply before it:"
        f" {row['apply_reads_p50']} reads, {row['apply_writes_p50']} writes ({row['statuses']})",
        flush=True,
    )
    return row


async def late_apply(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    n = args.numbers
    async with Rig(n, data / "late-apply", scale=args.scale) as rig:
        await rig.addnumber()
        runs = []
        for _ in range(args.runs):
            card = await rig.addnumber()
            await rig.give_password(card)
            await rig.move_clock()
            status, pressed, done = await rig.approve_and_wait(card)
            calls = rig.sim.calls(pressed, done)
            first_write = next((i for i, c in enumerate(calls) if not c.read), len(calls))
            before = calls[:first_write]
            writes = [c for c in calls if not c.read]
            runs.append(
                {
                    "status": status,
                    "reads_before_first_write": sum(1 for c in before if c.read),
                    "writes": len(writes),
                    "records_written": len({c.path for c in writes}),
                    "reads": sum(1 for c in calls if c.read),
                    "seconds": done - pressed,
                    "propose_reads": card.reads,
                }
            )
    row = {
        "accounts": n,
        "runs": len(runs),
        "clock": "the bot's clocks moved 600 s forward between the password and Approve (bench/shifted.py)",
        "statuses": [x["status"] for x in runs],
        "reads_before_first_write_p50": median([x["reads_before_first_write"] for x in runs]),
        "reads_before_first_write_all": [x["reads_before_first_write"] for x in runs],
        "writes_p50": median([x["writes"] for x in runs]),
        "apply_reads_p50": median([x["reads"] for x in runs]),
        "apply_s_p50": r(median([x["seconds"] for x in runs])),
        "propose_reads_p50": median([x["propose_reads"] for x in runs]),
    }
    print(
        f"an apply approved 10 min after its propose, {n} accounts: {row['reads_before_first_write_p50']}"
        f" reads before the first write (runs {row['reads_before_first_write_all']}), {row['writes_p50']}"
        f" writes, {row['apply_s_p50']} s ({row['statuses']})",
        flush=True,
    )
    return row


async def two(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    n = args.numbers
    async with Rig(n, data / "two", scale=args.scale) as rig:
        await rig.addnumber()
        runs = []
        for _ in range(args.runs):
            await rig.restart()
            a, b = rig.next_login(), rig.next_login()
            sent_a = rig.send_addnumber(a, user=OLGA)
            sent_b = rig.send_addnumber(b, user=OLEG)
            cards = await asyncio.gather(rig.card(a, *sent_a), rig.card(b, *sent_b))
            calls = rig.sim.calls(min(sent_a[2], sent_b[2]), max(c.at for c in cards))
            runs.append((cards, count_reads(calls)["reads"]))
    row = {
        "accounts": n,
        "runs": len(runs),
        "slower_card_s_p50": r(median([max(c.seconds for c in cs) for cs, _ in runs])),
        "faster_card_s_p50": r(median([min(c.seconds for c in cs) for cs, _ in runs])),
        "reads_p50": median([x for _, x in runs]),
        "reads_all": [x for _, x in runs],
    }
    print(
        f"two commands at once after a restart, {n} accounts: cards at {row['faster_card_s_p50']} and"
        f" {row['slower_card_s_p50']} s, {row['reads_p50']} reads in all (runs {row['reads_all']})",
        flush=True,
    )
    return row


async def run_digest(rig: Rig, *, user: int = BORIS) -> tuple[int, int, float]:
    """`/digest` in a group; (group, event index before, when sent)."""
    group = GROUPS[len(rig.tg.events) % len(GROUPS)]
    after = len(rig.tg.events)
    sent = time.monotonic()
    rig.tg.send(user, group, "/digest")
    return group, after, sent


async def digest_done(rig: Rig, group: int, after: int, limit_s: float = 1800) -> dict[str, Any]:
    """The digest's last message: the file of every number (more than 40 numbers)."""
    return await rig.tg.wait_for(
        lambda e: e["kind"] == "document" and e.get("chat_id") == group, after=after, timeout=limit_s
    )


async def digest_card(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    n = args.numbers
    async with Rig(n, data / "digest-card", scale=args.scale, cdr_per_number=3) as rig:
        await rig.addnumber()
        times, reads, digests = [], [], []
        for _ in range(args.runs):
            await rig.restart()
            group, after, sent = await run_digest(rig)
            done = asyncio.ensure_future(digest_done(rig, group, after))
            while len(rig.sim.calls(sent)) < 5 and not done.done():  # noqa: ASYNC110 (the digest is reading)
                await asyncio.sleep(0.01)
            cards = 0
            while not done.done() or cards < 3:
                card = await rig.addnumber()
                cards += 1
                times.append(card.seconds)
                reads.append(card.reads)
                await asyncio.sleep(0.2)
            event = await done
            digests.append(event["at"] - sent)
    row = {
        "accounts": n,
        "runs": args.runs,
        "cards": len(times),
        "card_s_p50": r(median(times)),
        "card_s_p95": r(pct(times, 0.95)),
        "card_s_max": r(max(times)),
        "card_reads_p50": median(reads),
        "digest_s_p50": r(median(digests)),
    }
    print(
        f"a card while a digest reads, {n} accounts: {row['cards']} cards, p50 {row['card_s_p50']} s,"
        f" p95 {row['card_s_p95']} s, max {row['card_s_max']} s (the digest took {row['digest_s_p50']} s)",
        flush=True,
    )
    return row


async def one_digest(rig: Rig) -> dict[str, Any]:
    await rig.restart()
    group, after, sent = await run_digest(rig)
    event = await digest_done(rig, group, after)
    return {"seconds": event["at"] - sent, **count_reads(rig.sim.calls(sent, event["at"]))}


def digest_row(n: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    row = {
        "numbers": n,
        "runs": len(runs),
        "digest_s_p50": r(median([x["seconds"] for x in runs])),
        "reads_p50": median([x["reads"] for x in runs]),
        "cdr_reads_p50": median([x["cdr_reads"] for x in runs]),
        "other_reads_p50": median([x["reads"] - x["cdr_reads"] for x in runs]),
        "http_429": sum(x["http_429"] for x in runs),
    }
    print(
        f"digest after a restart, {n} numbers: {row['digest_s_p50']} s, {row['reads_p50']} reads"
        f" ({row['cdr_reads_p50']} CDR pages, {row['other_reads_p50']} other)",
        flush=True,
    )
    return row


async def digest(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    n = args.numbers
    async with Rig(n, data / "digest", scale=args.scale, cdr_per_number=3) as rig:
        await rig.addnumber()
        runs = [await one_digest(rig) for _ in range(args.runs)]
    return digest_row(n, runs)


async def overhead(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    n = args.numbers
    async with Rig(n, data / "overhead", scale=args.scale, latency_ms=args.latency_ms) as rig:
        await rig.addnumber()
        ratios, summed_ratios, e2e, unions = [], [], [], []
        for _ in range(max(10, args.runs * 3)):
            card = await rig.addnumber()
            spans = [(c.start, c.end) for c in card.calls]
            pbx = union(spans, card.sent, card.at)
            summed = sum(b - a for a, b in spans)
            e2e.append(card.seconds)
            unions.append(pbx)
            if pbx > 0:
                ratios.append(card.seconds / pbx)
                summed_ratios.append(card.seconds / summed)
    row = {
        "accounts": n,
        "pbx_latency_ms": args.latency_ms,
        "cards": len(e2e),
        "e2e_ms_p50": r(median(e2e) * 1000, 1),
        "pbx_union_ms_p50": r(median(unions) * 1000, 1),
        "ratio_to_union_p50": r(median(ratios), 3),
        "ratio_to_union_max": r(max(ratios), 3),
        "ratio_to_sum_p50": r(median(summed_ratios), 3),
    }
    print(
        f"overhead with {args.latency_ms:g} ms a PBX call, {n} accounts, warm cards: end-to-end / union of"
        f" in-flight PBX time p50 {row['ratio_to_union_p50']} (max {row['ratio_to_union_max']});"
        f" e2e {row['e2e_ms_p50']} ms, union {row['pbx_union_ms_p50']} ms;"
        f" / sum of the calls {row['ratio_to_sum_p50']}",
        flush=True,
    )
    return row


async def big(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """At --big accounts: RSS idle, the first card ever, RSS; then restarts and digests."""
    n = args.big
    async with Rig(n, data / "big", scale=args.scale, cdr_per_number=3) as rig:
        await asyncio.sleep(2)
        idle = rig.rss()
        card = await rig.addnumber()
        after_card = rig.rss()
        runs = [await one_digest(rig) for _ in range(args.big_runs)]
        after_digest = rig.rss()
        warm = await rig.addnumber()
    memory = {
        "idle_mb": r(idle, 1),
        f"after_first_card_at_{n}_mb": r(after_card, 1),
        f"after_digest_at_{n}_mb": r(after_digest, 1),
    }
    print(
        f"{n} accounts: first card ever {card.seconds:.1f} s ({card.reads} reads); RSS idle {idle:.1f} MB,"
        f" after that card {after_card:.1f} MB, after a digest (restarted) {after_digest:.1f} MB;"
        f" a card after the digest: {warm.seconds:.2f} s, {warm.reads} reads",
        flush=True,
    )
    return {
        "memory": memory,
        "first_ever_card": {"accounts": n, "seconds": r(card.seconds), "reads": card.reads},
        "card_after_digest": {"seconds": r(warm.seconds), "reads": warm.reads},
        "digest": digest_row(n, runs),
    }


SCENARIOS = {
    "first": first,
    "after_apply": after_apply,
    "late_apply": late_apply,
    "two": two,
    "digest_card": digest_card,
    "digest": digest,
    "overhead": overhead,
    "big": big,
}


def table(result: dict[str, Any]) -> str:
    c = result["conditions"]
    s = result["scenarios"]
    out = [
        f"PBX rate limit {c['pbx_rate_limit']}; client {c['client']}; time scale 1/{c['scale']:g}"
        f" (times are the scaled ones); medians over {c['runs']} runs ({c['big_runs']} at {c['big']})",
        f"{'scenario':<58} {'reads':>8} {'time s':>8}  target",
    ]

    def line(name: str, reads: Any, seconds: Any, target: str) -> None:
        out.append(f"{name:<58} {reads!s:>8} {seconds!s:>8}  {target}")

    for row in s.get("first", []):
        target = "<= 10 reads, <= 3 s" if row["accounts"] == 1000 else ""
        name = f"first card after a restart, {row['accounts']} accounts"
        line(name, row["card_reads_p50"], row["card_s_p50"], target)
    if x := s.get("after_apply"):
        name = f"a propose right after an apply, {x['accounts']}"
        line(name, x["card_reads_p50"], x["card_s_p50"], "<= 10 reads")
    if x := s.get("late_apply"):
        line(
            f"apply approved 10 min later: reads before 1st write, {x['accounts']}",
            x["reads_before_first_write_p50"], x["apply_s_p50"], "<= 10 + records it writes",
        )  # fmt: skip
    if x := s.get("two"):
        name = f"two commands at once after a restart, {x['accounts']}"
        line(name, x["reads_p50"], x["slower_card_s_p50"], "")
    if x := s.get("digest_card"):
        name = f"a card while a digest reads, {x['accounts']}: p95"
        line(name, x["card_reads_p50"], x["card_s_p95"], "p95 <= 2 s")
    if x := s.get("digest"):
        line(
            f"digest, {x['numbers']} numbers (+{x['cdr_reads_p50']} CDR pages)",
            x["other_reads_p50"], x["digest_s_p50"], "<= 20 reads + CDR pages",
        )  # fmt: skip
    if x := s.get("big"):
        d = x["digest"]
        name = f"digest, {d['numbers']} numbers (+{d['cdr_reads_p50']} CDR pages)"
        line(name, d["other_reads_p50"], d["digest_s_p50"], "")
        f = x["first_ever_card"]
        line(f"first card ever (fresh bot), {f['accounts']} accounts", f["reads"], f["seconds"], "")
        m = x["memory"]
        rss = ", ".join(f"{k} {v}" for k, v in m.items())
        out.append(f"RSS of the bot process: {rss}  target idle <= 120, 5,000 <= 200")
    if x := s.get("overhead"):
        out.append(
            f"overhead, {x['pbx_latency_ms']:g} ms a PBX call, warm cards at {x['accounts']}: e2e / union"
            f" {x['ratio_to_union_p50']} (max {x['ratio_to_union_max']}), e2e / sum {x['ratio_to_sum_p50']}"
            "  target (union) <= 1.15"
        )
    return "\n".join(out)


async def main() -> None:
    p = argparse.ArgumentParser(description="honest PBX-read benches (see the module docstring)")
    p.add_argument("--scale", type=float, default=10.0, help="PBX window 60/scale s, client 165*scale/min")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--sizes", default="50,200,1000", help="accounts, for 'first'")
    p.add_argument("--numbers", type=int, default=1000, help="accounts of the other scenarios")
    p.add_argument("--big", type=int, default=5000)
    p.add_argument("--big-runs", type=int, default=1)
    p.add_argument("--latency-ms", type=float, default=20.0)
    p.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    chosen = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios {sorted(unknown)}")
    load = os.getloadavg()[0]
    scenarios: dict[str, Any] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pbxbot-bench-mirror-") as tmp:
        for name in chosen:
            scenarios[name] = await SCENARIOS[name](args, Path(tmp))
    result = {
        "bench": "mirror",
        "python": platform.python_version(),
        "conditions": {
            "pbx_rate_limit": f"on: 180 + 20 burst per {60 / args.scale:g} s window per client, then a block",
            "client": f"{round(165 * args.scale)}/min (the default 165/min at 1/{args.scale:g} time)",
            "scale": args.scale,
            "runs": args.runs,
            "big": args.big,
            "big_runs": args.big_runs,
            "reload_wait": 0,
            "telegram_limits": "off",
            "machine": f"{os.cpu_count()} CPUs, load average {load:.2f} at the start, shared",
            "ran_s": round(time.monotonic() - started),
        },
        "scenarios": scenarios,
    }
    print(table(result))
    out = args.out or Path(__file__).with_name("results") / "mirror.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
