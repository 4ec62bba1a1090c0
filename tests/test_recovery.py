"""A process killed mid-apply (SIGKILL: no `finally` runs) and what comes after.

`pbxbot plan --apply` is killed while each write of the manual's plan is held
by the simulator — before the write is carried out, and after it landed with
its answer still on the way — and once while the plan is being verified.
`pbxbot recover` then makes the PBX whole at once (the dead process's lease is
not waited out), ends the plan, and leaves its card to be edited. While an
apply is alive, `pbxbot recover` leaves it alone.

The bot is killed the same way in the middle of an apply approved in its group;
started again, it puts the PBX back and edits the plan's card to say so."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_QUEUE_EXTENSION
from sandbox.telegram import TelegramSandbox
from storage.db import make_engine
from storage.repos import Repos
from tests.conftest import API_KEY
from tests.personas import ANNA, BORIS, GROUP_ADMINS, OLGA, meet
from tests.test_whole_or_nothing import canonical

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "/addnumber zadarma 847900 → IVR"
PASSWORD = "Killed-pw-847900"
ZADARMA = "sip.zadarma.com"
HOLD = 30.0  # seconds the simulator holds a call; the kill comes long before
# The write each step of the manual's plan makes
WRITES = [
    ("POST", "/sip-providers"),
    ("PUT", "/sip-providers/*"),
    ("PUT", "/incoming-routes/*"),
    ("POST", "/incoming-routes"),
]


async def wait_until(check, *, timeout: float = 90, what: str = "") -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def write_config(tmp_path: Path, sim, extra: str = "") -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'{extra}[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[pbx.office]\nurl = "{sim.url}"\napi_key = "{API_KEY}"\nreload_wait = 0\ntimeout = 60\n',
        encoding="utf-8",
    )
    return config


async def start(*args: str, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.entry.cli",
        *args,
        cwd=str(ROOT),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log.open("ab"),
        stderr=asyncio.subprocess.STDOUT,
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _tail(path: Path, mark: int) -> str:
    return path.read_bytes()[mark:].decode(errors="replace")


async def run(*args: str, log: Path) -> tuple[int, str]:
    mark = _size(log)
    proc = await start(*args, log=log)
    code = await asyncio.wait_for(proc.wait(), 120)
    return code, _tail(log, mark)


def store_of(tmp_path: Path) -> Repos | None:
    db = tmp_path / "data" / "pbxbot.db"
    return Repos(make_engine(f"sqlite:///{db}")) if db.exists() else None


def journal(store: Repos | None) -> list[tuple[str, dict]]:
    if store is None:
        return []
    try:
        return [(e.event, e.detail) for e in store.audit.trail(limit=10_000)]
    except Exception:  # the process is still creating its tables
        return []


def held(sim, method: str, glob: str, when: str) -> None:
    sim.inject(glob, method=method, delay=HOLD, when=when, count=1)


KILL_POINTS = [
    *[pytest.param(step, when, id=f"step{step}-{when}") for step in range(4) for when in ("before", "after")],
    pytest.param(4, "verify", id="while-verifying"),
]


@pytest.mark.parametrize(("step", "when"), KILL_POINTS)
async def test_a_killed_cli_apply_is_made_whole_by_pbxbot_recover(sim, tmp_path, step, when):
    config = str(write_config(tmp_path, sim))
    password = tmp_path / "pw"
    password.write_text(PASSWORD + "\n", encoding="utf-8")
    log = tmp_path / "cli.log"
    before = canonical(sim)
    if step < 4:
        held(sim, *WRITES[step], when)
    else:
        sim.inject("/providers:getStatuses", method="GET", delay=HOLD)
    writes_before = sim.writes()
    apply = await start(
        "--config", config, "--lang", "en", "plan", "--pbx", "office", COMMAND, "--apply",
        "--password-file", str(password), log=log,
    )  # fmt: skip
    store: Repos | None = None

    def reached() -> bool:
        nonlocal store
        store = store or store_of(tmp_path)
        events = journal(store)
        if step == 4:
            return any(name == "step_applied" and detail.get("step") == 3 for name, detail in events)
        intended = any(name == "step_intent" and detail.get("step") == step for name, detail in events)
        # "after": the simulator has carried the write out and holds its answer
        return intended and (when == "before" or sim.writes() >= writes_before + step + 1)

    await wait_until(reached, what=f"the apply to reach step {step} ({when})")

    # while the apply is alive, recovery leaves it alone
    code, out = await run("--config", config, "--lang", "en", "recover", log=log)
    assert code == 0 and "No interrupted plans" in out, out
    assert [r.status for r in store.plans.find(limit=5)] == ["applying"]

    apply.kill()  # SIGKILL: nothing of the CLI's own clean-up runs
    assert await asyncio.wait_for(apply.wait(), 60) == -9
    sim.faults.clear()

    code, out = await run("--config", config, "--lang", "en", "recover", log=log)
    (row,) = store.plans.find(limit=5)
    if step == 4 or (step == 3 and when == "after"):  # every write had landed: applied, nothing undone
        assert code == 0 and row.status == "applied" and "applied" in out, out
        assert sim.simulate_call(ZADARMA, "847900")["destination"] == DEMO_IVR_EXTENSION
    else:
        assert code == 0 and row.status == "rolled_back" and "the PBX is as it was" in out, out
        assert canonical(sim) == before
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION
    assert row.card_stale and row.outcome["recovered"] == row.status
    events = [name for name, _ in journal(store)]
    assert events.index("recovery_started") < events.index(row.status)
    assert store.locks.holder("office", ["847900"]) is None and store.secrets.of(row.id) == {}
    code, out = await run("--config", config, "--lang", "en", "recover", log=log)
    assert code == 0 and "No interrupted plans" in out
    assert PASSWORD not in _tail(log, 0)


GROUP = -1003000000001
TOKEN = "123456789:AAH_recovery-test-token"


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_bot_killed_mid_apply_puts_the_pbx_back_when_it_starts_again(sim, tmp_path, when):
    """Olga proposes in the group, Boris approves; the bot dies while step 3 is
    held. Started again, it reads the PBX, puts back what landed and edits the card."""
    before = canonical(sim)
    log = tmp_path / "bot.log"
    async with TelegramSandbox(TOKEN) as tg:
        meet(tg, ANNA, BORIS, OLGA, profiles=False)
        tg.add_group(GROUP, "PBX admins", [ANNA, BORIS, OLGA], admins=GROUP_ADMINS)
        tg.started.add(OLGA)
        config = str(
            write_config(
                tmp_path,
                sim,
                extra=(
                    f'default_language = "en"\n[telegram]\ntoken = "{TOKEN}"\napi_base = "{tg.url}"\n'
                    f'groups = {{ "{GROUP}" = "office" }}\n'
                    f"[policy]\nadmins = [{ANNA}]\napprovers = [{BORIS}]\noperators = [{OLGA}]\n"
                ),
            )
        )
        bot = await start("--config", config, "run", log=log)
        try:
            mark = len(tg.events)
            tg.send(OLGA, GROUP, COMMAND)
            card = await tg.wait_for(
                lambda e: e["kind"] == "send" and e["chat_id"] == GROUP and "Plan" in (e["text"] or ""),
                after=mark,
                timeout=90,
            )
            plan_id = re.search(r"Plan (\w{6})", card["text"]).group(1)
            await tg.wait_for(lambda e: e["kind"] == "send" and e["chat_id"] == OLGA, after=mark, timeout=60)
            tg.send(OLGA, OLGA, PASSWORD)
            await tg.wait_for(
                lambda e: e["kind"] == "send" and e["chat_id"] == OLGA and plan_id in (e["text"] or ""),
                after=mark + 2,
                timeout=60,
            )
            held(sim, *WRITES[2], when)
            writes = sim.writes()
            tg.press(
                BORIS, GROUP, card["message_id"], tg.buttons(GROUP, card["message_id"])[0]["callback_data"]
            )
            store = store_of(tmp_path)
            await wait_until(
                lambda: (
                    any(n == "step_intent" and d.get("step") == 2 for n, d in journal(store))
                    and (when == "before" or sim.writes() >= writes + 3)
                ),
                what="the apply to reach step 3",
            )
            bot.kill()
            assert await asyncio.wait_for(bot.wait(), 60) == -9
            sim.faults.clear()
            assert store.plans.get(plan_id).status == "applying"

            mark = len(tg.events)
            bot = await start("--config", config, "run", log=log)
            edit = await tg.wait_for(
                lambda e: (
                    e["kind"] == "edit"
                    and e.get("message_id") == card["message_id"]
                    and "as it was" in (e["text"] or "")
                ),
                after=mark,
                timeout=120,
            )
        finally:
            if bot.returncode is None:
                bot.terminate()
                await asyncio.wait_for(bot.wait(), 120)
    assert "Status: rolled back" in edit["text"] or "rolled back" in edit["text"].lower(), edit["text"]
    assert canonical(sim) == before
    row = store.plans.get(plan_id)
    assert row.status == "rolled_back" and not row.card_stale
    assert PASSWORD not in _tail(log, 0)
