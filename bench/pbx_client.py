"""Throughput of the MikoPBX client against the simulator on loopback, and its
per-call overhead over a bare httpx request to the same endpoint.

    .venv/bin/python bench/pbx_client.py [--calls 2000] [--rounds 5]

Both sides make the same sequential GET /incoming-routes calls with keep-alive;
the simulator runs in its own process so that its CPU is not the client's.
The client runs with its limiter opened up (the bench measures the code, not
the 165/min budget). Prints medians over rounds; the last line is one JSON
object, also saved to bench/results/pbx_client.json.
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
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pbx.mikopbx import MikoPbxClient

KEY = secrets.token_hex(32)
ROOT = Path(__file__).resolve().parents[1]


async def start_simulator() -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.entry.cli", "simulator", "--port", "0", "--api-key", KEY,
        "--no-rate-limit", stdout=asyncio.subprocess.PIPE,
        cwd=str(ROOT),
    )  # fmt: skip
    line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
    url = re.search(r"(http://[0-9.:]+)/pbxcore", line).group(1)
    return proc, url


async def bare(url: str, calls: int) -> float:
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "application/json"}
    async with httpx.AsyncClient(base_url=url + "/pbxcore/api/v3", headers=headers) as http:
        await http.get("/incoming-routes")
        started = time.perf_counter()
        for _ in range(calls):
            response = await http.get("/incoming-routes")
            response.json()
        return time.perf_counter() - started


async def client(url: str, calls: int) -> float:
    async with MikoPbxClient(url, api_key=KEY, rate_limit_per_min=10**9, burst=10**6) as c:
        await c.list_routes()
        started = time.perf_counter()
        for _ in range(calls):
            await c.list_routes()
        return time.perf_counter() - started


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    proc, url = await start_simulator()
    try:
        bare_times, client_times = [], []
        for _ in range(args.rounds):  # interleaved, so drift hits both sides alike
            bare_times.append(await bare(url, args.calls))
            client_times.append(await client(url, args.calls))
    finally:
        proc.terminate()
        await proc.wait()
    bare_s, client_s = statistics.median(bare_times), statistics.median(client_times)
    result = {
        "bench": "pbx_client",
        "calls_per_round": args.calls,
        "rounds": args.rounds,
        "client_rps_median": round(args.calls / client_s, 1),
        "bare_httpx_rps_median": round(args.calls / bare_s, 1),
        "client_ms_per_call_median": round(client_s / args.calls * 1000, 3),
        "bare_ms_per_call_median": round(bare_s / args.calls * 1000, 3),
        "overhead_ratio": round(client_s / bare_s, 3),
        "target_overhead_ratio": 1.2,
        "python": platform.python_version(),
    }
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "pbx_client.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"client {result['client_rps_median']} req/s, bare httpx {result['bare_httpx_rps_median']} req/s")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
