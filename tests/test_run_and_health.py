"""An operator's first deploy: `pbxbot health` (the Docker HEALTHCHECK) passes in
polling mode while the bot works and fails when it does not; `pbxbot run` says in
one line what stops it (a malformed token) or what it waits out (Telegram
unreachable, another poller on the token)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import subprocess
import sys
from pathlib import Path

from bot.entry.app import running
from bot.entry.cli import main
from bot.entry.health import STALE, heartbeat_finding
from sandbox.telegram import TelegramSandbox
from tests.conftest import API_KEY, fast_client
from tests.test_ops import TOKEN, settings_for

ROOT = Path(__file__).resolve().parents[1]


def write_config(tmp_path: Path, *, token: str = TOKEN, api_base: str = "http://127.0.0.1:9") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[telegram]\ntoken = "{token}"\napi_base = "{api_base}"\n'
        f'[pbx.office]\nurl = "http://127.0.0.1:9"\napi_key = "{API_KEY}"\n'
        f'[storage]\ndata_dir = "{tmp_path}"\n',
        encoding="utf-8",
    )
    return config


async def test_health_passes_while_a_polling_bot_runs_and_fails_after(sim, tmp_path, capsys):
    config = write_config(tmp_path)
    async with TelegramSandbox(TOKEN) as tg:
        settings = settings_for(sim.url, tg.url, tmp_path)
        assert settings.telegram.mode == "polling"
        async with fast_client(sim.url, name="office") as client:
            async with running(settings, clients={"office": client}, polling_timeout=1):
                assert await asyncio.to_thread(main, ["--config", str(config), "--lang", "en", "health"]) == 0
                out = capsys.readouterr().out
                assert "✓ database: reachable" in out and "✓ bot: alive (polling;" in out
    assert await asyncio.to_thread(main, ["--config", str(config), "health", "--lang", "en"]) == 1
    assert "✗ bot: not running here" in capsys.readouterr().out


def test_a_stale_heartbeat_is_unhealthy(tmp_path):
    path = tmp_path / "heartbeat-x.json"
    path.write_text(json.dumps({"at": 1000.0, "mode": "polling"}), encoding="utf-8")
    assert heartbeat_finding(path, now=1000.0 + STALE - 1).ok
    stale = heartbeat_finding(path, now=1000.0 + STALE + 1)
    assert not stale.ok and stale.key == "stale"
    path.write_text("{", encoding="utf-8")
    assert heartbeat_finding(path).key == "bad_heartbeat"


def test_a_malformed_token_is_one_line_and_exit_2(tmp_path, capsys):
    config = write_config(tmp_path, token="not-a-token")
    assert main(["run", "--config", str(config), "--lang", "en"]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "token is malformed" in err
    assert not list(tmp_path.glob("*.db"))  # stopped before the database was touched


def test_telegram_unreachable_is_retried_one_line_each(tmp_path):
    config = write_config(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.entry.cli", "--config", str(config), "--lang", "en", "run"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        retries = []
        for line in process.stderr:  # event: the next line the bot writes
            if "Telegram is unreachable" in line:
                retries.append(line)
                if len(retries) == 2:
                    break
        process.send_signal(signal.SIGTERM)
        rest = process.stderr.read()
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "retrying in 1 s" in retries[0] and "retrying in 2 s" in retries[1]
    assert "Traceback" not in rest


async def test_a_second_poller_on_the_token_is_one_line(sim, tmp_path, caplog):
    seen = asyncio.Event()

    class Conflict(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "another process is polling" in record.getMessage():
                seen.set()

    handler = Conflict()
    logging.getLogger("pbxbot.app").addHandler(handler)
    caplog.set_level(logging.INFO)
    try:
        async with TelegramSandbox(TOKEN) as tg:
            settings = settings_for(sim.url, tg.url, tmp_path)
            other = settings_for(sim.url, tg.url, tmp_path / "other")
            async with fast_client(sim.url, name="office") as client:
                async with running(settings, clients={"office": client}, polling_timeout=1):
                    async with running(other, clients={"office": client}, polling_timeout=1):
                        await asyncio.wait_for(seen.wait(), 60)
                        calls = tg.calls["getUpdates"]
                        async with tg._changed:  # six more getUpdates of the two pollers fighting
                            await asyncio.wait_for(
                                tg._changed.wait_for(lambda: tg.calls["getUpdates"] >= calls + 6), 60
                            )
    finally:
        logging.getLogger("pbxbot.app").removeHandler(handler)
    lines = [r.getMessage() for r in caplog.records]
    conflicts = [m for m in lines if "another process is polling" in m]
    assert 1 <= len(conflicts) <= 2  # once per process at most
    assert not [m for m in lines if m.startswith(("Failed to fetch updates", "Sleep for"))]
    assert not [r for r in caplog.records if r.exc_info]
