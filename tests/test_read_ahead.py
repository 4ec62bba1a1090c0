"""A change command's list calls leave as soon as the message is in, while the chat's
binding is still being looked up (Services.read_ahead): the command joins them. The
guess of the chat's PBX never decides anything: the command plans and writes on the
PBX looked up, and its audit names the calls it was answered by.

End to end: the real aiogram polling loop against sandbox/telegram/, the real client
against two simulators, SQLite. Waits are for events or states, never fixed sleeps."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import pytest
from aiogram.exceptions import TelegramForbiddenError
from aiogram.methods import GetUpdates, SendMessage
from aiogram.types import Update

import handlers.access as access
import handlers.cards as cards
from bot.config import load_settings
from bot.entry.app import BotApp, running
from handlers.access import Access
from sandbox.mikopbx import MikoPbxSimulator
from sandbox.telegram import TelegramSandbox
from tests.conftest import API_KEY, fast_client, start_demo_sim
from tests.personas import ANNA, BORIS, GROUP_ADMINS, OLGA, STRANGER, VIKTOR, meet, policy

TOKEN = "123456789:AAE_sandbox-token-read-ahead_x1"
GROUP = -1001000000077
LISTS = ("GET sip-providers", "GET incoming-routes", "GET extensions:getForSelect")


@dataclass
class World:
    tg: TelegramSandbox
    app: BotApp
    office: MikoPbxSimulator
    branch: MikoPbxSimulator

    def mark(self) -> int:
        return len(self.tg.events)

    async def said(self, pattern: str, *, after: int, chat_id: int = GROUP) -> dict:
        regex = re.compile(pattern, re.S)
        return await self.tg.wait_for(
            lambda e: (
                e["kind"] == "send" and e.get("chat_id") == chat_id and regex.search(e.get("text") or "")
            ),
            after=after,
            timeout=30,
        )


def lists(sim: MikoPbxSimulator) -> int:
    return sum(sim.stats[key] for key in LISTS)


async def until(condition, what: str, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Wait for a state of a simulator (it tells no one): looked at every few ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def world(tmp_path):
    office, branch = await start_demo_sim(), await start_demo_sim()
    try:
        async with TelegramSandbox(TOKEN) as tg:
            meet(tg, ANNA, BORIS, OLGA, VIKTOR, STRANGER)
            tg.add_group(GROUP, "PBX admins", [ANNA, BORIS, OLGA, VIKTOR, STRANGER], admins=GROUP_ADMINS)
            tg.started.add(OLGA)
            settings = load_settings(
                None,
                pbx={
                    name: {"url": sim.url, "api_key": API_KEY, "reload_wait": 0}
                    for name, sim in (("office", office), ("branch", branch))
                },
                telegram={"token": TOKEN, "api_base": tg.url, "groups": {GROUP: "office"}},
                storage={"data_dir": str(tmp_path / "data")},
                policy=policy(ANNA, BORIS, OLGA, VIKTOR),
                default_language="en",
            )
            async with (
                fast_client(office.url, name="office") as to_office,
                fast_client(branch.url, name="branch") as to_branch,
                running(
                    settings, clients={"office": to_office, "branch": to_branch}, polling_timeout=1
                ) as app,
            ):
                w = World(tg, app, office, branch)
                start = w.mark()
                tg.send(OLGA, GROUP, "/whoami")  # the chat's PBX is found once
                await w.said(".", after=start)
                yield w
    finally:
        await office.stop()
        await branch.stop()


async def test_a_polled_command_reads_before_aiogram_dispatches_it(world: World, monkeypatch):
    """The getUpdates answer begins the reads (`ReadAhead`): they leave while no middleware
    has seen the update yet; the command joins them."""
    w = world
    gate = asyncio.Event()
    dispatched = Access.__call__

    async def held(self, handler, event, data):
        await gate.wait()  # aiogram busy elsewhere: the update not dispatched yet
        return await dispatched(self, handler, event, data)

    monkeypatch.setattr(Access, "__call__", held)
    before = lists(w.office)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    await until(lambda: lists(w.office) == before + 3, "the three list calls, the update not dispatched")
    gate.set()
    await w.said(r"(?:Plan|План) (\w{6})", after=start)
    assert lists(w.office) == before + 3  # joined: not read twice


@pytest.mark.parametrize(
    "seen", [True, False], ids=["chat seen before", "first command of a configured group"]
)
async def test_the_lists_leave_before_the_binding_is_read_and_are_read_once(world: World, monkeypatch, seen):
    w = world
    services = w.app.services
    if not seen:
        services.last_pbx.clear()  # a restart: the config's group -> PBX is the guess
    gate = asyncio.Event()
    lookup = services._pbx_of_chat

    async def slow_lookup(chat_id: int, *, private: bool) -> str | None:
        await gate.wait()  # a slow database
        return await lookup(chat_id, private=private)

    monkeypatch.setattr(services, "_pbx_of_chat", slow_lookup)
    before = lists(w.office)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    await until(lambda: lists(w.office) == before + 3, "the three list calls, binding not read yet")
    assert not gate.is_set()
    gate.set()
    card = await w.said(r"(?:Plan|План) (\w{6})", after=start)
    plan_id = re.search(r"(?:Plan|План) (\w{6})", card["text"]).group(1)
    assert lists(w.office) == before + 3  # the command joined them: not read twice
    assert lists(w.branch) == 0

    def audited() -> bool:  # written once the card is out
        return any(e.event == "proposed" and e.plan_id == plan_id for e in services.store.audit.trail())

    await until(audited, "the proposal audited")
    trail = services.store.audit.trail()
    proposed = next(i for i, e in enumerate(trail) if e.event == "proposed" and e.plan_id == plan_id)
    first = proposed
    while trail[first - 1].event == "api_call":  # the reads' calls: stored with the plan, just before
        first -= 1
    calls = [e.detail for e in trail[first:proposed] if "{" not in e.detail["path"]]
    calls = [c for c in calls if c["path"].count("/") == 1]  # the lists (the details are read too)
    joined = sorted(c["path"] for c in calls if c.get("joined"))
    assert joined == ["/extensions:getForSelect", "/incoming-routes", "/sip-providers"], calls
    assert all(c["status"] == 200 for c in calls)
    # /metrics counts each PBX call once: the joined ones are not calls
    metrics = w.app.metrics.render().decode()
    counted = re.search(r'pbxbot_pbx_calls_total\{method="GET",pbx="office",status="200"\} (\d+)', metrics)
    assert counted and int(float(counted.group(1))) == w.office.reads(), metrics


async def test_two_commands_at_once_take_one_read_of_each_list(world: World, monkeypatch):
    """Olga and Anna each send a change; both wait before dispatch (aiogram busy) until
    the lists read ahead for them are answered. Each command plans on those answers: the
    PBX is read once. Each message begins its reads once (the session middleware's), not again
    in the access middleware."""
    w = world
    handle = w.app.services.changes.pbxs["office"]
    begun: list[int] = []
    read_ahead = handle.reader.read_ahead

    def counted() -> asyncio.Event:
        begun.append(1)
        return read_ahead()

    monkeypatch.setattr(handle.reader, "read_ahead", counted)
    gate = asyncio.Event()
    dispatched = Access.__call__

    async def held(self, handler, event, data):
        await gate.wait()
        return await dispatched(self, handler, event, data)

    monkeypatch.setattr(Access, "__call__", held)
    before = lists(w.office)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    w.tg.send(ANNA, GROUP, "/addnumber zadarma 847901 → IVR")
    reads = handle.client._reads  # answered ahead: kept for the commands until they ask

    await until(lambda: len(begun) == 2, "both messages' reads begun")
    answered = lambda: len(reads) == 3 and all(r.until is not None for r in reads.values())  # noqa: E731
    await until(answered, "the lists answered")
    gate.set()
    # one card; the other plan would change 847706 too (the recipe): refused, "locked"
    card = await w.said(r"(?:Plan|План) (\w{6})", after=start)
    await w.said(r"847706: (?:already|уже)", after=start)
    assert lists(w.office) == before + 3  # both planned on the answers read ahead
    assert len(begun) == 2
    assert "847900" in card["text"] or "847901" in card["text"]


async def test_a_chat_rebound_by_another_process_is_planned_on_the_pbx_looked_up(world: World):
    """The read ahead went to the PBX this process last knew; the command reads,
    plans and stores on the one the database says now."""
    w = world
    w.app.services.store.chats.bind(GROUP, "branch")  # another replica's /pbx branch
    office_before = lists(w.office)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    card = await w.said(r"(?:Plan|План) (\w{6})", after=start)
    row = w.app.services.store.plans.get(re.search(r"(?:Plan|План) (\w{6})", card["text"]).group(1))
    assert row.pbx == "branch"
    assert lists(w.branch) == 3
    assert lists(w.office) == office_before + 3  # what the guess cost: three reads, nothing else
    assert w.office.writes() == 0 and w.app.services.last_pbx[GROUP] == "branch"


@pytest.mark.parametrize(
    ("user", "text"),
    [
        (OLGA, "/addnumber zadarma"),  # a typo: refused before any read
        (OLGA, "/addnumber@some_other_bot zadarma 847900 → IVR"),  # another bot's command
        (OLGA, "/AddNumber zadarma 847900 → IVR"),  # no handler takes it (commands match by case)
        (OLGA, "/plans"),  # not a change
        (STRANGER, "/addnumber zadarma 847900 → IVR"),  # not allowed
    ],
)
async def test_nothing_is_read_ahead_for_what_will_not_read(world: World, monkeypatch, user: int, text: str):
    w = world
    begun: list[str] = []
    read_ahead = w.app.services.changes.read_ahead
    monkeypatch.setattr(w.app.services.changes, "read_ahead", lambda *a: begun.append(a[0]) or read_ahead(*a))
    before = w.office.reads()
    start = w.mark()
    w.tg.send(user, GROUP, text)
    # updates are taken in order, and the read ahead is decided before the first await: once
    # the /whoami sent after it is answered, the message above is past that point
    w.tg.send(OLGA, GROUP, "/whoami")
    await w.said(f"id {OLGA} ", after=start)
    assert begun == [] and w.office.reads() == before

    start = w.mark()
    w.tg.send(OLGA, GROUP, "/whoami")
    await w.said(f"id {OLGA} ", after=start)
    assert w.office.reads() == before  # nor later


@pytest.mark.parametrize("tried", [True, False], ids=["refused when sent", "refused before"])
async def test_a_plan_whose_card_cannot_be_posted_is_audited_proposed_then_cancelled(
    world: World, monkeypatch, tried: bool
):
    """The proposal's audit rows wait for the card's first sending; when that never
    ends, the plan's release (the group forbids the bot) writes them first: the trail
    stays in order either way."""
    w = world
    sending = cards.persist

    async def forbidden(call, chat_id, **kwargs):
        if chat_id == GROUP:
            if tried:
                await call(chat_id)  # the first attempt is made (and lands), then Telegram says no
            raise TelegramForbiddenError(method=SendMessage(chat_id=chat_id, text="."), message="Forbidden")
        return await sending(call, chat_id, **kwargs)

    monkeypatch.setattr(cards, "persist", forbidden)
    store = w.app.services.store
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")

    def trail() -> list[str]:
        ids = {e.plan_id for e in store.audit.trail() if e.event == "cancelled"}
        return [e.event for e in store.audit.trail(plan_id=ids.pop())] if ids else []

    await until(lambda: "cancelled" in trail(), "the plan released")
    events = trail()
    assert events.index("proposed") < events.index("cancelled"), events


async def test_the_proposal_is_audited_once_its_card_was_tried_while_telegram_holds_it_back(world: World):
    """Telegram says "retry after 8 s" to the card: the audit rows do not wait for it
    (they wait AUDIT_WAIT, 1 s)."""
    w = world
    store = w.app.services.store
    w.tg.inject("sendMessage", count=1, retry_after=8)
    before = {p.id for p in store.plans.find()}
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")

    def proposed() -> list[str]:
        return [p.id for p in store.plans.find() if p.id not in before and p.message_id is None]

    await until(lambda: bool(proposed()), "the plan stored, its card not posted")
    plan_id = proposed()[0]
    audited = lambda: "proposed" in [e.event for e in store.audit.trail(plan_id=plan_id)]  # noqa: E731
    await until(audited, "the proposal audited before its card", timeout=6.0)
    assert store.plans.get(plan_id).message_id is None  # the card still waits for Telegram


async def test_a_batch_of_commands_is_held_once_for_its_reads_ahead(monkeypatch):
    """A getUpdates answer of many change commands whose requests cannot leave at once
    (the budget waits): every read begins first, and the batch waits AHEAD_WAIT once."""
    began: list[float] = []
    loop = asyncio.get_running_loop()

    def never_written(services, message):
        began.append(loop.time())
        return asyncio.Event()

    monkeypatch.setattr(access, "read_ahead", never_written)
    message = {
        "date": 0,
        "chat": {"id": GROUP, "type": "supergroup"},
        "from": {"id": OLGA, "is_bot": False, "first_name": "Olga"},
        "text": "/addnumber zadarma 847900 → IVR",
    }
    updates = [
        Update.model_validate({"update_id": i, "message": {**message, "message_id": i}}) for i in range(25)
    ]

    async def answer(bot, method):
        return updates

    start = loop.time()
    assert await access.ReadAhead(services=None)(answer, None, GetUpdates()) is updates
    # one after another, the 25th read would begin 24 waits after the first, and the batch
    # would be held 25 x AHEAD_WAIT (0.5 s): the bounds leave room for a busy machine
    assert len(began) == 25 and began[-1] - began[0] < 10 * access.AHEAD_WAIT
    assert loop.time() - start < 15 * access.AHEAD_WAIT
