"""`pbxbot` with a clock the bench can move: `python bench/shifted.py <pbxbot arguments>`.

Each SIGUSR1 moves the process's clocks forward by $BENCH_SHIFT_STEP seconds
(default 600): `time.monotonic` (and with it the event loop's time), `time.time`
and `storage.tables.utcnow` (the bot's one wall clock for rows). They are
replaced before anything of the bot is imported, so default arguments such as
`clock=time.monotonic` bind the moved clock too. `time.perf_counter` is left
alone (durations only). This is how bench/mirror.py makes an apply run "as 10
minutes after its propose" without waiting 10 minutes: whatever the bot keeps
(kept account details, a mirror's refresh times) ages by the step at once.

A mirror that reads the time some other way (`datetime.now` directly, say)
would not see the move: it must read it through one of the clocks above.

Timers pending at the moment of a move fire at once (the event loop's time
jumped): the long poll to Telegram times out and aiogram polls again. The bench
moves the clock while no command is under way.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

STEP = float(os.environ.get("BENCH_SHIFT_STEP", "600"))
_offset = [0.0]
_monotonic, _time = time.monotonic, time.time


def shift() -> float:
    return _offset[0]


def _moved(_signum: int, _frame: object) -> None:
    _offset[0] += STEP


def install() -> None:
    time.monotonic = lambda: _monotonic() + _offset[0]
    time.time = lambda: _time() + _offset[0]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import storage.tables as tables

    def utcnow() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=_bench_shift())  # noqa: F821 (in tables' globals)

    # the function object stays (defaults and `from ... import utcnow` done already keep
    # working); its code reads the shift through its own module's globals
    tables.__dict__["_bench_shift"] = shift
    tables.__dict__.setdefault("timedelta", timedelta)
    tables.utcnow.__code__ = utcnow.__code__
    signal.signal(signal.SIGUSR1, _moved)


if __name__ == "__main__":
    install()
    from bot.entry.cli import main

    sys.exit(main(sys.argv[1:]))
