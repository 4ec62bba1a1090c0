"""The routing digest at 1,000 and 5,000 numbers: time to build and render it
once the PBX has been read, the messages it makes, and peak memory.

    .venv/bin/python bench/digest.py [--sizes 1000,5000] [--runs 10] [--calls-per-number 3]

The simulator (in this process) is seeded as in bench/plan.py, with CDR: a few
inbound calls per number over the last week. The PBX is read once (every
account in full, registrations, the default route, the CDR); what is timed is
`compose` (the doctor, a trace of every number, calls per number, the audit
trail) + `render` + the split into Telegram messages (+ the file of every
number a PBX of more than 40 gets), as medians over --runs,
plus the weekly chart apart. Peak memory: tracemalloc's peak over one
compose+render+chart, and the process's max RSS. Target: <= 1 s at 5,000.
The last line is one JSON object, also saved to bench/results/digest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import secrets
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plan import seed  # noqa: E402
from bot.plans.snapshot import SnapshotReader  # noqa: E402
from bot.routing import digest as digests  # noqa: E402
from bot.routing.rules import normalise_phone  # noqa: E402
from bot.text.render import split_text  # noqa: E402
from pbx.mikopbx import MikoPbxClient  # noqa: E402
from sandbox.demo import load_seed  # noqa: E402
from sandbox.mikopbx import MikoPbxSimulator  # noqa: E402
from storage.db import make_engine, migrate  # noqa: E402
from storage.repos import Repos  # noqa: E402
from storage.tables import utcnow  # noqa: E402

KEY = secrets.token_hex(32)
TZ = ZoneInfo("Europe/Moscow")


def with_calls(state, per_number: int, now: datetime) -> None:
    rng = random.Random(7)
    logins = [p["username"] for p in state.providers.values()]
    for login in logins:
        for _ in range(per_number):
            start = (now - timedelta(minutes=rng.randrange(7 * 24 * 60))).astimezone(TZ)
            stamp = f"{start:%Y-%m-%d %H:%M:%S}"
            state.cdr.append(
                {
                    "id": str(len(state.cdr) + 1),
                    "start": stamp,
                    "answer": stamp,
                    "endtime": stamp,
                    "src_num": "+74951234567",
                    "dst_num": "2200",
                    "did": login,
                    "disposition": "ANSWERED",
                    "duration": 30,
                    "billsec": 25,
                    "linkedid": f"b-{len(state.cdr)}",
                    "from_account": "",
                    "to_account": "",
                }
            )


async def one_size(n: int, runs: int, per_number: int, data: Path) -> dict:
    state_file = data / f"state-{n}.json"
    seed(n, state_file)
    state = load_seed(str(state_file))
    state.settings["PBXRateLimitEnabled"] = "0"
    now = utcnow()
    with_calls(state, per_number, now)
    engine = make_engine(f"sqlite:///{data / f'digest-{n}.db'}")
    migrate(engine)
    store = Repos(engine)
    since, until = now - timedelta(days=7), now
    async with MikoPbxSimulator(state, api_keys=[KEY]) as sim:
        async with MikoPbxClient(
            sim.url, api_key=KEY, rate_limit_per_min=10**9, burst=10**6, timeout=120
        ) as c:
            started = time.perf_counter()
            readings = await digests.read(c, SnapshotReader(c), since=since, until=until, tz=TZ)
            read_s = time.perf_counter() - started
    times, chart_times, parts = [], [], []
    for _ in range(runs):
        normalise_phone.cache_clear()  # every run starts cold: no number parsed before
        started = time.perf_counter()
        built = digests.compose(readings, store, "bench", since=since, until=until)
        parts = split_text(digests.render(built, "ru", TZ))
        table = digests.numbers_table(built, "ru") if len(built.numbers) > digests.COMPACT_OVER else b""
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        chart = digests.chart_png(built)
        chart_times.append(time.perf_counter() - started)
    tracemalloc.start()
    built = digests.compose(readings, store, "bench", since=since, until=until)
    split_text(digests.render(built, "ru", TZ))
    digests.chart_png(built)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    engine.dispose()
    row = {
        "numbers": n,
        "cdr_records": len(readings.records),
        "read_s": round(read_s, 2),
        "build_render_p50_s": round(statistics.median(times), 3),
        "build_render_max_s": round(max(times), 3),
        "chart_p50_s": round(statistics.median(chart_times), 3),
        "messages": len(parts),
        "files": 1 if table else 0,
        "chart_bytes": len(chart or b""),
        "peak_python_mb": round(peak / 2**20, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(
        f"{n} numbers ({row['cdr_records']} calls): build+render p50 {row['build_render_p50_s']} s"
        f" (max {row['build_render_max_s']}), chart {row['chart_p50_s']} s, {row['messages']} messages,"
        f" peak {row['peak_python_mb']} MB traced, max RSS {row['max_rss_mb']} MB;"
        f" PBX read {row['read_s']} s",
        flush=True,
    )
    return row


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls-per-number", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbxbot-bench-digest-") as tmp:
        rows = [
            await one_size(int(n), args.runs, args.calls_per_number, Path(tmp)) for n in args.sizes.split(",")
        ]
    result = {"bench": "digest", "python": sys.version.split()[0], "runs": args.runs, "sizes": rows}
    out = Path(__file__).with_name("results")
    out.mkdir(exist_ok=True)
    (out / "digest.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
