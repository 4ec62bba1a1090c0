"""Two bot processes in webhook mode behind a (round-robin) load balancer, on
one PostgreSQL database and one Redis, all on loopback: updates spread over
both are handled once; concurrent approvals on the two replicas apply a plan
once; a scheduled digest posts once; killing the scheduler owner moves the
schedules to the other. Waits are for events (a message, a state), with
generous timeouts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from sandbox.telegram import TelegramSandbox
from storage.db import make_engine, migrate
from storage.repos import Repos
from tests.conftest import API_KEY, PG_URL
from tests.personas import ANNA, BORIS, GROUP_ADMINS, OLGA, meet

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "987654321:AAH_replica-test-token-xyz"
SECRET = "wh-" + secrets.token_hex(8)
GROUP = -1002000000001
PASSWORD = "Replica-pw-847900"
REDIS_URL = os.environ.get("PBXBOT_TEST_REDIS", "redis://127.0.0.1:6379/9")

pytestmark = pytest.mark.skipif(os.environ.get("PBXBOT_TEST_NO_PG") == "1", reason="needs PostgreSQL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_until(check, *, timeout: float = 60, what: str = "") -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def cluster(sim, tmp_path):
    schema = f"r_{secrets.token_hex(5)}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    engine = make_engine(url)
    migrate(engine)
    import redis.asyncio as aioredis

    r = aioredis.from_url(REDIS_URL)
    await r.flushdb()
    await r.aclose()
    procs: list[asyncio.subprocess.Process] = []
    # Telegram's group limit on, scaled to 6 messages per 2 s: the replicas share one budget
    async with TelegramSandbox(TOKEN, enforce_limits=True, group_limit=6, group_window=2.0) as tg:
        meet(tg, ANNA, BORIS, OLGA, profiles=False)
        tg.add_group(GROUP, "PBX admins", [ANNA, BORIS, OLGA], admins=GROUP_ADMINS)
        tg.started.add(OLGA)
        ports = [free_port(), free_port()]
        tg.webhook_targets = [f"http://127.0.0.1:{p}/telegram" for p in ports]
        key = tmp_path / "secret.key"
        for i, port in enumerate(ports):
            config = tmp_path / f"replica{i}.toml"
            config.write_text(
                f'default_language = "ru"\n'
                f'[telegram]\ntoken = "{TOKEN}"\napi_base = "{tg.url}"\nmode = "webhook"\n'
                f'webhook_url = "http://127.0.0.1:{ports[0]}/telegram"\nwebhook_secret = "{SECRET}"\n'
                f'groups = {{ "{GROUP}" = "office" }}\ngroup_limit = 6\ngroup_window = 2.0\n'
                f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
                "leader_interval = 0.5\nhousekeeping_seconds = 1\n"
                f'[redis]\nurl = "{REDIS_URL}"\n'
                f'[storage]\nurl = "{url}"\ndata_dir = "{tmp_path / f"data{i}"}"\n'
                f'secret_key_file = "{key}"\n'
                f"[policy]\nadmins = [{ANNA}]\napprovers = [{BORIS}]\noperators = [{OLGA}]\n"
                f'[pbx.office]\nurl = "{sim.url}"\napi_key = "{API_KEY}"\nreload_wait = 0\n',
                encoding="utf-8",
            )
        from cryptography.fernet import Fernet

        key.write_bytes(Fernet.generate_key())
        for i in range(2):
            log = (tmp_path / f"replica{i}.log").open("wb")
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot.entry.cli",
                    "--config",
                    str(tmp_path / f"replica{i}.toml"),
                    "run",
                    cwd=str(ROOT),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=log,
                )
            )
        async with httpx.AsyncClient() as http:

            async def healthy() -> bool:
                for port in ports:
                    try:
                        if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code != 200:
                            return False
                    except httpx.TransportError:
                        return False
                return tg.webhook is not None

            await wait_until(healthy, timeout=120, what="both replicas healthy")
            yield tg, ports, procs, Repos(engine), http, tmp_path
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 120)
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def sends(tg, pattern: str, chat: int = GROUP) -> list[dict]:
    regex = re.compile(pattern, re.S)
    return [
        e for e in tg.events if e["kind"] == "send" and e["chat_id"] == chat and regex.search(e["text"] or "")
    ]


async def test_two_webhook_replicas_share_the_work_and_act_once(cluster, sim):
    tg, ports, procs, store, http, tmp_path = cluster

    # 1. updates spread over both replicas, each handled once, within one group budget for both
    for i in range(24):
        tg.send((ANNA, BORIS, OLGA)[i % 3], GROUP, "/whoami")
    await tg.wait_for(lambda e: len(sends(tg, "роль")) >= 24, timeout=60)
    targets = {target for _, target, status in tg.delivered if status == 200}
    assert len(targets) == 2
    assert len(sends(tg, "роль")) == 24
    assert tg.limited == []  # 12 answers each, 6 per 2 s together: Telegram never had to refuse one

    # 2. concurrent approvals landing on the two replicas apply the plan once
    mark = len(tg.events)
    tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    card = await tg.wait_for(
        lambda e: e["kind"] == "send" and e["chat_id"] == GROUP and "План" in (e["text"] or ""),
        after=mark,
        timeout=60,
    )
    plan_id = re.search(r"План (\w{6})", card["text"]).group(1)
    await tg.wait_for(lambda e: e["kind"] == "send" and e["chat_id"] == OLGA, after=mark, timeout=60)
    tg.send(OLGA, OLGA, PASSWORD)
    await tg.wait_for(
        lambda e: e["kind"] == "send" and "получен" in (e["text"] or ""), after=mark, timeout=60
    )
    button = tg.buttons(GROUP, card["message_id"])[0]["callback_data"]
    tg.press(ANNA, GROUP, card["message_id"], button)
    tg.press(BORIS, GROUP, card["message_id"], button)
    await tg.wait_for(
        lambda e: e["kind"] == "edit" and "Состояние: применён" in (e["text"] or ""), after=mark, timeout=120
    )
    trail = [e.event for e in store.audit.trail(plan_id=plan_id)]
    assert trail.count("applying") == 1 and trail.count("applied") == 1
    assert [p["username"] for p in sim.state.providers.values()].count("847900") == 1
    assert sim.simulate_call("sip.zadarma.com", "847900")["destination"] == "2000"

    # 3. a scheduled digest is posted once, by the scheduler owner
    now = datetime.now(ZoneInfo("Europe/Moscow"))
    at = now + timedelta(minutes=1 if now.second < 45 else 2)
    mark = len(tg.events)
    tg.send(ANNA, GROUP, f"/digest daily {at:%H:%M}")
    await tg.wait_for(lambda e: "Сводка: каждый день" in (e.get("text") or ""), after=mark, timeout=60)
    await tg.wait_for(lambda e: "Сводка маршрутизации" in (e.get("text") or ""), after=mark, timeout=200)
    tg.send(ANNA, GROUP, "/whoami")  # a later event: a second digest for the minute would be in by then
    await tg.wait_for(lambda e: len(sends(tg, "роль")) >= 25, timeout=60)
    assert len(sends(tg, "Сводка маршрутизации")) == 1

    # 4. killing the scheduler owner moves the schedules to the other replica
    owners = []
    for port in ports:
        owners.append((await http.get(f"http://127.0.0.1:{port}/healthz")).json()["scheduler_owner"])
    assert sorted(owners) == [False, True]
    owner = owners.index(True)
    procs[owner].kill()
    await procs[owner].wait()
    other = ports[1 - owner]

    async def took_over() -> bool:  # the lock is taken (healthz), then its housekeeping runs, then the gauge
        if not (await http.get(f"http://127.0.0.1:{other}/healthz")).json()["scheduler_owner"]:
            return False
        return "pbxbot_scheduler_owner 1.0" in (await http.get(f"http://127.0.0.1:{other}/metrics")).text

    await wait_until(took_over, timeout=60, what="the other replica to own the schedules")
    metrics = (await http.get(f"http://127.0.0.1:{other}/metrics")).text
    assert 'pbxbot_plans{state="applied"} 1.0' in metrics
    assert "pbxbot_updates_total" in metrics

    # a wrong webhook secret is refused
    forged = await http.post(
        f"http://127.0.0.1:{other}/telegram",
        json={"update_id": 999},
        headers={"X-Telegram-Bot-Api-Secret-Token": "nope"},
    )
    assert forged.status_code == 401

    # no secret in either replica's log
    logs = "".join((tmp_path / f"replica{i}.log").read_text(errors="replace") for i in range(2))
    for secret in (TOKEN, TOKEN.split(":")[1], API_KEY, PASSWORD, SECRET):
        assert secret not in logs
    assert json.dumps(tg.webhook) and tg.webhook["secret_token"] == SECRET
