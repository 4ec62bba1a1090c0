"""Plans against the simulator on loopback: propose latency, API calls per
/addnumber, and a 500-number CSV applied under MikoPBX's rate limit.

    .venv/bin/python bench/plan.py [--sizes 10,100,1000,5000] [--runs 30] [--csv 500] [--scale 10]

1. Propose latency (reads + plan, what `/addnumber` costs before the card is
   shown) on a PBX with N numbers, all of them logins on sip.zadarma.com under
   the recipe (the worst case: every account on the plan's host must be read).
   "cold": a fresh reader, so 3 + N reads; "warm": the reader the bot keeps,
   whose account details are reused while their list entries are unchanged.
   The simulator's rate limit is off here: this measures our code and loopback.
2. API calls per /addnumber, counted by the simulator: reads of a cold and a
   warm propose, then the apply's reads and writes.
3. A 500-number CSV proposed and applied (storage, audit and all) with the
   simulator's nginx limit ON and the client at its default 165/min. The
   window is scaled by --scale (180 requests per 60/scale s) so the run takes
   under a minute instead of six; rates are reported per real minute of the
   PBX's window. Target: >= 90 % of 180/min, no 429.

The simulator runs in its own process. Prints medians; the last line is one
JSON object, also saved to bench/results/plan.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.config import PolicySettings  # noqa: E402
from bot.plans.changes import LOCAL_ADMIN, PbxHandle  # noqa: E402
from bot.plans.commands import parse, parse_csv  # noqa: E402
from bot.plans.service import Changes  # noqa: E402
from bot.plans.vault import Vault  # noqa: E402
from bot.routing.rules import merge_recipe  # noqa: E402
from pbx.mikopbx import MikoPbxClient  # noqa: E402
from sandbox.demo import DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION, PROVIDER_DEFAULTS, demo_state  # noqa: E402
from storage.db import make_engine, migrate  # noqa: E402
from storage.repos import Repos  # noqa: E402

KEY = secrets.token_hex(32)
HOST = "sip.zadarma.com"
MIKOPBX_LIMIT = 180


def seed(n: int, path: Path) -> None:
    """The demo PBX grown to n logins on sip.zadarma.com, all under the recipe."""
    state = demo_state()
    recipe = merge_recipe("")
    state.providers[DEMO_PROVIDER_ID]["manualattributes"] = recipe
    state.routes[2].update(number="847706", provider=None)
    for i in range(1, n):
        pid = f"SIP-TRUNK-{i:08X}"
        login = str(900000 + i)
        state.providers[pid] = {
            **PROVIDER_DEFAULTS,
            "id": pid,
            "description": f"Zadarma {login}",
            "username": login,
            "secret": f"pw-{i}",
            "host": HOST,
            "transport": "udp",
            "manualattributes": recipe,
            "additionalHosts": [],
        }
        state.routes[2 + i] = {
            "id": 2 + i,
            "rulename": f"Zadarma {login}",
            "number": login,
            "provider": None,
            "priority": 1 + i,
            "timeout": 120,
            "extension": DEMO_QUEUE_EXTENSION,
            "audio_message_id": None,
            "note": "",
        }
    state.save(path)


async def start_simulator(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.entry.cli", "simulator", "--port", "0", "--api-key", KEY,
        "--registration-delay", "0.05", *args,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )  # fmt: skip
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=120)).decode()
    return proc, re.search(r"(http://[0-9.:]+)/pbxcore", line).group(1)


async def stop(proc: asyncio.subprocess.Process) -> None:
    proc.terminate()
    await proc.wait()


class Counter:
    """The simulator's own count of API calls (`/sandbox/stats`)."""

    def __init__(self, url: str):
        self.http = httpx.AsyncClient(base_url=url + "/sandbox")

    async def reset(self) -> None:
        await self.http.delete("/stats")

    async def read(self) -> tuple[int, int]:
        data = (await self.http.get("/stats")).json()["data"]
        return data["reads"], data["writes"]


def changes_for(client: MikoPbxClient, data: Path, **handle) -> Changes:
    data.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{data / 'bench.db'}")
    migrate(engine)
    policy = PolicySettings(self_approve=True)
    pbx = {client.name: PbxHandle.of(client, reload_wait=0, verify_timeout=10, verify_interval=0.1, **handle)}
    return Changes(Repos(engine), policy, Vault.from_file(data / "secret.key"), pbx)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def propose_bench(n: int, runs: int, data: Path) -> dict:
    state_file = data / f"state-{n}.json"
    seed(n, state_file)
    proc, url = await start_simulator("--seed", str(state_file), "--no-rate-limit")
    counter = Counter(url)
    intent = parse("/addnumber zadarma 847900 → IVR")
    try:
        async with MikoPbxClient(
            url, api_key=KEY, rate_limit_per_min=10**9, burst=10**6, name="bench"
        ) as client:
            changes = changes_for(client, data / f"db-{n}")
            reader = changes.pbxs["bench"].reader
            cold, warm = [], []
            cold_runs = max(3, min(runs, 2000 // max(n, 1)))
            for _ in range(cold_runs):
                reader.clear()
                await counter.reset()
                started = time.perf_counter()
                plan, _ = await changes.plan("bench", intent)
                cold.append((time.perf_counter() - started) * 1000)
                cold_reads, _ = await counter.read()
            for _ in range(runs):
                await counter.reset()
                started = time.perf_counter()
                plan, _ = await changes.plan("bench", intent)
                warm.append((time.perf_counter() - started) * 1000)
                warm_reads, _ = await counter.read()
            await counter.reset()
            proposal = await changes.propose(LOCAL_ADMIN, "bench", intent, secrets={"847900": "pw"})
            outcome = await changes.apply(LOCAL_ADMIN, proposal.row.id, at_once=True)
            apply_reads, apply_writes = await counter.read()
            assert outcome.row.status == "applied", outcome.row.outcome
    finally:
        await counter.http.aclose()
        await stop(proc)
    row = {
        "numbers": n,
        "cold_p50_ms": round(statistics.median(cold), 1),
        "cold_p95_ms": round(pct(cold, 0.95), 1),
        "warm_p50_ms": round(statistics.median(warm), 1),
        "warm_p95_ms": round(pct(warm, 0.95), 1),
        "reads_cold": cold_reads,
        "reads_warm": warm_reads,
        "reads_bound": 3 + n,
        "steps": len(plan.steps),
        "apply_reads": apply_reads,
        "apply_writes": apply_writes,
    }
    print(
        f"{n:>5} numbers  propose cold p50 {row['cold_p50_ms']:>7} ms p95 {row['cold_p95_ms']:>7} ms"
        f" ({cold_reads} reads)  warm p50 {row['warm_p50_ms']:>6} ms p95 {row['warm_p95_ms']:>6} ms"
        f" ({warm_reads} reads)  apply: {apply_reads} reads, {apply_writes} writes for {row['steps']} steps",
        flush=True,
    )
    return row


async def csv_bench(rows: int, scale: float, data: Path) -> dict:
    window = 60.0 / scale
    proc, url = await start_simulator("--seed", "demo", "--rate-window", str(window))
    counter = Counter(url)
    text = "login,password,destination\n" + "".join(f"{700000 + i},pw-{i},IVR\n" for i in range(rows))
    intent, passwords = parse_csv(text, "zadarma")
    statuses: list[int | None] = []
    try:
        # the default profile: 165 calls per (scaled) minute
        async with MikoPbxClient(url, api_key=KEY, rate_limit_per_min=165 * scale, name="bench") as client:
            client.listeners.append(lambda record: statuses.append(record.status))
            changes = changes_for(client, data / "db-csv")
            started = time.perf_counter()
            proposal = await changes.propose(LOCAL_ADMIN, "bench", intent, secrets=passwords, command="CSV")
            proposed = time.perf_counter()
            outcome = await changes.apply(LOCAL_ADMIN, proposal.row.id, at_once=True)
            elapsed = time.perf_counter() - started
            reads, writes = await counter.read()
            audit_rows = changes.store.audit.count()
    finally:
        await counter.http.aclose()
        await stop(proc)
    calls = len(statuses)
    per_window = calls / elapsed * window
    row = {
        "rows": rows,
        "status": outcome.row.status,
        "steps": len(proposal.plan.steps),
        "calls": calls,
        "reads": reads,
        "writes": writes,
        "http_429": statuses.count(429),
        "seconds": round(elapsed, 2),
        "propose_seconds": round(proposed - started, 2),
        "scale": scale,
        "real_minutes_equivalent": round(elapsed * scale / 60, 2),
        "calls_per_pbx_minute": round(per_window, 1),
        "share_of_limit": round(per_window / MIKOPBX_LIMIT, 3),
        "audit_rows": audit_rows,
    }
    print(
        f"CSV of {rows}: {row['status']}, {row['steps']} steps, {calls} calls ({writes} writes) in"
        f" {row['seconds']} s at 1/{scale:g} time = {row['calls_per_pbx_minute']}/min of the PBX's window"
        f" ({row['share_of_limit']:.1%} of {MIKOPBX_LIMIT}/min), 429s: {row['http_429']}",
        flush=True,
    )
    return row


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--csv", type=int, default=500)
    parser.add_argument("--scale", type=float, default=10.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbxbot-bench-") as tmp:
        data = Path(tmp)
        propose = [await propose_bench(int(n), args.runs, data) for n in args.sizes.split(",")]
        bulk = await csv_bench(args.csv, args.scale, data) if args.csv else None
    result = {
        "bench": "plan",
        "python": platform.python_version(),
        "runs": args.runs,
        "propose": propose,
        "csv_apply": bulk,
    }
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "plan.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
