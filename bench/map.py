"""The routing map at 20 and 1,000 numbers: time to make the map's model (the doctor
and a trace of every number) and draw the PNG once the PBX has been read.

    .venv/bin/python bench/map.py [--sizes 20,1000] [--runs 5]

The simulator (in this process) is seeded as in bench/plan.py (n logins on one host
under the recipe), with every 50th login's route removed so the map has numbers in
trouble to draw one by one. The PBX is read once (every account in full, the
registrations, the default route); what is timed is `diagnose` + `routing_map` +
`draw` (PNG), median and max over --runs, in a process where matplotlib is imported
already (its import, apart, is printed too). Target: <= 2 s at 1,000.
The last line is one JSON object, also saved to bench/results/map.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.plan import KEY, seed  # noqa: E402
from bot.plans.snapshot import SnapshotReader  # noqa: E402
from bot.routing.doctor import Evidence, diagnose  # noqa: E402
from bot.routing.routemap import routing_map  # noqa: E402
from bot.text.routemap import draw  # noqa: E402
from pbx.mikopbx import MikoPbxClient  # noqa: E402
from sandbox.demo import load_seed  # noqa: E402
from sandbox.mikopbx import MikoPbxSimulator  # noqa: E402


async def one_size(n: int, runs: int, data: Path) -> dict:
    state_file = data / f"state-{n}.json"
    seed(n, state_file)
    state = load_seed(str(state_file))
    state.settings["PBXRateLimitEnabled"] = "0"
    for rid in [r for r in state.routes if r % 50 == 0]:
        del state.routes[rid]
    async with MikoPbxSimulator(state, api_keys=[KEY]) as sim:
        async with MikoPbxClient(
            sim.url, api_key=KEY, rate_limit_per_min=10**9, burst=10**6, timeout=120
        ) as c:
            snapshot = await SnapshotReader(c).read(every_host=True)
            registration, default = await c.registration_statuses(), await c.default_route()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        findings = diagnose(snapshot, Evidence(registration, default=default))
        rmap = routing_map(snapshot, findings, default=default)
        png = draw(rmap, "ru")
        times.append(time.perf_counter() - started)
    return {
        "numbers": len(rmap.paths),
        "rows": len(rmap.lanes()),
        "errors": sum(1 for p in rmap.paths if p.severity is not None),
        "png_bytes": len(png),
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
    }


def matplotlib_import_s() -> float:
    code = "import time; t = time.perf_counter(); import matplotlib.figure, matplotlib.backends.backend_agg; "
    code += "print(time.perf_counter() - t)"
    return round(float(subprocess.check_output([sys.executable, "-c", code], text=True)), 3)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="20,1000")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    result: dict = {"matplotlib_import_s": matplotlib_import_s(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            figures = await one_size(n, args.runs, Path(tmp))
            result["sizes"][str(n)] = figures
            print(f"{n:>6} numbers: {figures}", flush=True)
    out = ROOT / "bench" / "results" / "map.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
