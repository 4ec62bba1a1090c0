"""Is the running bot alive: `pbxbot health` (the Docker HEALTHCHECK) in both modes.

The running bot writes a heartbeat file in `[storage] data_dir`, one per host (a
container is a host), every `BEAT` seconds while it works: in polling mode only
while Telegram answers its getUpdates, in webhook mode while its server runs.
`pbxbot health` reads that file and pings the database, as /healthz does, and
exits 0 (healthy) or 1, one line per item.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import Settings
from storage.db import database_url, make_engine
from storage.repos import Repos

BEAT = 10.0  # seconds between heartbeats
STALE = 60.0  # a heartbeat older than this: the bot is not working (or not running)


def heartbeat_path(settings: Settings) -> Path:
    return settings.storage.data_dir / f"heartbeat-{socket.gethostname()}.json"


def write_heartbeat(path: Path, **facts: Any) -> None:
    """Replace the heartbeat atomically: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"at": time.time(), "pid": os.getpid(), **facts}), encoding="utf-8")
    tmp.replace(path)


def remove_heartbeat(path: Path) -> None:
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Finding:
    ok: bool
    name: str
    key: str  # i18n: health.<key>
    params: dict[str, Any]


def heartbeat_finding(path: Path, now: float | None = None) -> Finding:
    try:
        beat = json.loads(path.read_text(encoding="utf-8"))
        age = (now if now is not None else time.time()) - float(beat["at"])
    except FileNotFoundError:
        return Finding(False, "bot", "no_heartbeat", {"path": path})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return Finding(False, "bot", "bad_heartbeat", {"path": path, "error": exc})
    if age > STALE:
        return Finding(False, "bot", "stale", {"seconds": int(age), "mode": beat.get("mode", "?")})
    return Finding(True, "bot", "alive", {"seconds": max(0, int(age)), "mode": beat.get("mode", "?")})


def database_finding(settings: Settings) -> Finding:
    """A plain `SELECT 1`: no migration, no lock (the check runs every 30 s)."""
    engine = make_engine(database_url(settings.storage.url, settings.storage.data_dir))
    try:
        Repos(engine).ping()
    except Exception as exc:
        return Finding(False, "database", "database_down", {"error": type(exc).__name__})
    finally:
        engine.dispose()
    return Finding(True, "database", "database_ok", {})


def check_health(settings: Settings, now: float | None = None) -> list[Finding]:
    return [database_finding(settings), heartbeat_finding(heartbeat_path(settings), now)]
