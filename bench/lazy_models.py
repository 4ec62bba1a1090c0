"""What bot/entry/lazy_models.py saves: resident memory of a process that imports the bot's app.

    .venv/bin/python bench/lazy_models.py [--runs 5]

Each run is a fresh interpreter that imports `bot.entry.app` (aiogram, its ~300 Telegram
types, the handlers) and reads its VmRSS; then it validates one Update with a text
message in a group, as the bot's first update does, and reads VmRSS again. "with"
runs import bot/entry/lazy_models.py as the app does; "without" runs put an empty module
in its place first, so aiogram builds every type at import. Medians over --runs.

The last line is one JSON object, also saved to bench/results/lazy_models.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, types
if sys.argv[1] == "without":
    # the app imports nothing
    sys.modules["bot.entry.lazy_models"] = types.ModuleType("bot.entry.lazy_models")
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import bot.entry.app
from aiogram.types import Update
imported = rss_mb()
Update.model_validate({"update_id": 1, "message": {
    "message_id": 1, "date": 0, "text": "/numbers",
    "chat": {"id": -100, "type": "supergroup", "title": "PBX"},
    "from": {"id": 7, "is_bot": False, "first_name": "Olga"}}})
print(imported, rss_mb())
"""


def run(mode: str) -> tuple[float, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    mb: dict[str, float] = {}
    for mode in ("with", "without"):
        samples = [run(mode) for _ in range(args.runs)]
        imported = mb[f"{mode}_imported_mb"] = round(statistics.median(s[0] for s in samples), 1)
        first = mb[f"{mode}_first_update_mb"] = round(statistics.median(s[1] for s in samples), 1)
        print(f"{mode:>7} lazy_models: {imported} MB imported, {first} MB after the first update")
    mb["saved_mb"] = round(mb["without_first_update_mb"] - mb["with_first_update_mb"], 1)
    line = json.dumps({"runs": args.runs, **mb})
    print(line)
    (ROOT / "bench" / "results" / "lazy_models.json").write_text(line + "\n")


if __name__ == "__main__":
    main()
