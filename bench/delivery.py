"""Nothing owed is dropped: webhook replicas on PostgreSQL + Redis under load,
with Telegram's group limit on.

    .venv/bin/python bench/delivery.py [--users 50] [--groups 3] [--replicas 2] [--window 60]

This process hosts the MikoPBX simulator (the demo PBX under the recipe, so a
new login locks only itself) and the local Telegram Bot API server with its
group limit on (20 messages per group per --window seconds; 60 is Telegram's,
6 runs ten times faster with the same shape); the replicas run as processes
behind its round-robin webhook delivery, on one PostgreSQL schema and one
Redis database. Every user, in one of the groups, sends
`/addnumber zadarma <login> → IVR`, `/plans` and `/whoami`, and then the SIP
password the bot asks for in private. Counted: updates sent, answers owed and
answered, plans proposed and their cards, messages the sandbox refused (429),
exceptions in the replicas' logs.

The last line is one JSON object, also saved to bench/results/delivery.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import text  # noqa: E402

from bot.routing.rules import merge_recipe  # noqa: E402
from sandbox.demo import DEMO_PROVIDER_ID, demo_state  # noqa: E402
from sandbox.mikopbx import MikoPbxSimulator  # noqa: E402
from sandbox.telegram import TelegramSandbox  # noqa: E402
from storage.db import make_engine, migrate  # noqa: E402
from storage.repos import Repos  # noqa: E402

KEY = secrets.token_hex(32)
TOKEN = f"{700000000 + secrets.randbelow(10**6)}:{secrets.token_urlsafe(24)}"
PG_URL = os.environ.get("PBXBOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PBXBOT_BENCH_REDIS", "redis://127.0.0.1:6379/10")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count(tg: TelegramSandbox, pattern: str, chats: set[int]) -> int:
    regex = re.compile(pattern, re.S)
    return sum(
        1
        for e in tg.events
        if e["kind"] == "send" and e["chat_id"] in chats and regex.search(e.get("text") or "")
    )


async def run(args: argparse.Namespace, data: Path) -> dict:
    state = demo_state()
    state.settings["PBXRateLimitEnabled"] = "0"
    state.registrar.delay = 0.05
    state.providers[DEMO_PROVIDER_ID]["manualattributes"] = merge_recipe("")
    state.routes[2].update(number="847706", provider=None)
    sim = MikoPbxSimulator(state, api_keys=[KEY])
    await sim.start()
    schema = f"bench_{secrets.token_hex(5)}"
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
    groups = [-1003000000001 - i for i in range(args.groups)]
    users = {g: [] for g in groups}
    for n in range(args.users):
        users[groups[n % len(groups)]].append(10_000 + n)
    everyone = [u for g in groups for u in users[g]]
    tg = TelegramSandbox(TOKEN, enforce_limits=True, group_limit=args.limit, group_window=args.window)
    await tg.start()
    procs: list[asyncio.subprocess.Process] = []
    result: dict = {}
    try:
        for uid in everyone:
            tg.add_user(uid, f"User{uid}")
            tg.started.add(uid)
        for g in groups:
            tg.add_group(g, f"Group {g}", users[g])
        ports = [free_port() for _ in range(args.replicas)]
        tg.webhook_targets = [f"http://127.0.0.1:{p}/telegram" for p in ports]
        (data / "secret.key").write_bytes(__import__("cryptography.fernet").fernet.Fernet.generate_key())
        for i, port in enumerate(ports):
            config = data / f"replica{i}.toml"
            config.write_text(
                'default_language = "ru"\n'
                f'[telegram]\ntoken = "{TOKEN}"\napi_base = "{tg.url}"\nmode = "webhook"\n'
                f'webhook_url = "http://127.0.0.1:{ports[0]}/telegram"\n'
                "groups = { " + ", ".join(f'"{g}" = "office"' for g in groups) + " }\n"
                f"group_limit = {args.limit}\ngroup_window = {args.window}\n"
                f'[server]\nhost = "127.0.0.1"\nport = {port}\n'
                f'[redis]\nurl = "{REDIS_URL}"\n'
                f'[storage]\nurl = "{url}"\ndata_dir = "{data / f"data{i}"}"\n'
                f'secret_key_file = "{data / "secret.key"}"\n'
                f"[policy]\noperators = [{', '.join(map(str, everyone))}]\n"
                f'[pbx.office]\nurl = "{sim.url}"\napi_key = "{KEY}"\nreload_wait = 0\n'
                "rate_limit_per_min = 100000\ntimeout = 60\n",
                encoding="utf-8",
            )
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot.entry.cli",
                    "--config",
                    str(config),
                    "run",
                    cwd=str(ROOT),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=(data / f"replica{i}.log").open("wb"),
                )
            )
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    codes = [(await http.get(f"http://127.0.0.1:{p}/healthz")).status_code for p in ports]
                    if codes == [200] * len(ports) and tg.webhook is not None:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the replicas did not start")
                await asyncio.sleep(0.2)

        started = time.monotonic()
        sent = 0
        for n, uid in enumerate(everyone):
            g = next(g for g in groups if uid in users[g])
            for command in (f"/addnumber zadarma {850000 + n} → IVR", "/plans", "/whoami"):
                tg.send(uid, g, command)
                sent += 1
        group_ids, private = set(groups), set(everyone)
        owed = {"cards": len(everyone), "plans": len(everyone), "whoami": len(everyone)}
        timeout = 120 + 4 * args.window * (3 * len(everyone) / len(groups)) / args.limit

        def answered() -> dict[str, int]:
            return {
                "cards": count(tg, r"План \w{6}.*Одобрений", group_ids),
                "plans": count(tg, "Открытые планы", group_ids),
                "whoami": count(tg, "роль", group_ids),
                "asks": count(tg, "Пришлите SIP-пароль", private),
                "passwords": count(tg, "получен", private),
                "files": sum(1 for e in tg.events if e["kind"] == "document" and e["chat_id"] in group_ids),
                "files_owed": count(tg, "весь текст — в файле", group_ids),
            }

        asked: set[int] = set()
        while time.monotonic() - started < timeout:
            got = answered()
            for e in tg.events:
                if e["kind"] == "send" and e["chat_id"] in private and e["chat_id"] not in asked:
                    if "Пришлите SIP-пароль" in (e.get("text") or ""):
                        asked.add(e["chat_id"])
                        tg.send(e["chat_id"], e["chat_id"], f"Pw-{e['chat_id']}-secret")
                        sent += 1
            done = all(got[k] >= v for k, v in owed.items()) and got["passwords"] >= len(everyone)
            if done and got["files"] >= got["files_owed"]:  # a long answer's file comes after its message
                break
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        got = answered()
        owed["passwords"] = len(everyone)
        owed["files"] = got["files_owed"]
        plans = Repos(engine).plans.find(limit=10_000)
        logs = "".join((data / f"replica{i}.log").read_text(errors="replace") for i in range(len(procs)))
        result = {
            "bench": "delivery",
            "users": len(everyone),
            "groups": len(groups),
            "replicas": len(procs),
            "group_limit": f"{args.limit} per {args.window:g} s",
            "updates_sent": sent,
            "answers_owed": sum(owed.values()),
            "answers_given": sum(min(got[k], v) for k, v in owed.items()),
            "answers_missing": {k: v - got[k] for k, v in owed.items() if got[k] < v},
            "plans_proposed": len(plans),
            "plans_without_card": sum(1 for p in plans if p.status == "proposed" and p.message_id is None),
            "refused_by_group_limit": len(tg.limited),
            "handler_exceptions": logs.count("Cause exception while process update"),
            "retried_429": logs.count("telegram asked to wait"),
            "seconds": round(elapsed, 1),
        }
        print(json.dumps(result), flush=True)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 300)
        await tg.stop()
        await sim.stop()
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--limit", type=int, default=20, help="messages per group per window")
    parser.add_argument("--window", type=float, default=60.0, help="seconds (Telegram: 60)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pbxbot-bench-delivery-") as tmp:
        result = await run(args, Path(tmp))
    print(
        f"{result['updates_sent']} updates from {result['users']} users in {result['groups']} groups, "
        f"{result['replicas']} replicas, group limit {result['group_limit']}: "
        f"{result['answers_given']} of {result['answers_owed']} answers, "
        f"{result['plans_without_card']} of {result['plans_proposed']} plans without a card, "
        f"{result['refused_by_group_limit']} refused by the limit, "
        f"{result['handler_exceptions']} handler exceptions, in {result['seconds']} s"
    )
    out = ROOT / "bench" / "results" / "delivery.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
