"""The first plan card after a start, in CPU time as well as wall time, for A/B
comparisons of two checkouts on a busy machine.

    .venv/bin/python bench/first_card_cpu.py TREE [NUMBERS]

TREE is a checkout of pbxbot (this one: `.`; another commit: a `git worktree`).
It runs that tree's bench/bot.py rig (simulator + Telegram double in this process,
the bot as its own process, limiter opened as bench/bot.py does) and prints, for
the first `/addnumber` on a host of NUMBERS accounts (1,000 by default): the wall
time to the card, the CPU time the bot process spent, and the CPU time this
process (simulator and Telegram double) spent. Wall time on a shared 2-CPU
machine moves with the load; CPU time much less. Alternate the trees run by run
and compare medians.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(root: Path, numbers: int) -> None:
    sys.path.insert(0, str(root))
    os.chdir(root)
    import bench.bot as bench_bot  # the tree's own rig

    with tempfile.TemporaryDirectory() as tmp:
        async with bench_bot.Rig(numbers, Path(tmp)) as rig:
            bot_before, here_before = process_cpu(rig.proc.pid), time.process_time()
            first = (await rig.command())[0]
            bot_cpu, here_cpu = process_cpu(rig.proc.pid) - bot_before, time.process_time() - here_before
            print(
                f"{root.name}: first card {first * 1000:.0f} ms wall, bot CPU {bot_cpu * 1000:.0f} ms,"
                f" simulator + Telegram double CPU {here_cpu * 1000:.0f} ms ({numbers} accounts)",
                flush=True,
            )


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]).resolve(), int(sys.argv[2]) if len(sys.argv) > 2 else 1000))
