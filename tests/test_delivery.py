"""Nothing the bot owes a chat is dropped: Telegram's group limit on, busy groups
lose no update and no card; a retried message takes its slot in the group's
budget; a card is retried until posted, or its plan is released; updates run at
most N at once (polling and webhook); long answers are one message plus a file.
The real aiogram loop against sandbox/telegram/; waits are for events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from types import SimpleNamespace

import pytest
from aiogram.exceptions import TelegramRetryAfter
from aiogram.methods import SendMessage

from bot.config import load_settings
from bot.entry.app import running
from bot.routing.rules import merge_recipe
from bot.text.render import outcome_text
from handlers.throttle import LocalBudget, RedisBudget, Throttle
from sandbox.demo import DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION, PROVIDER_DEFAULTS
from sandbox.telegram import TelegramSandbox
from tests.conftest import API_KEY, fast_client
from tests.personas import ANNA, OLGA, meet

TOKEN = "123456789:AAE_delivery-token-never-in-logs_x9"
GROUPS = [-1001000000101, -1001000000102, -1001000000103]
REDIS_URL = os.environ.get("PBXBOT_TEST_REDIS", "redis://127.0.0.1:6379/9")
PLAN = re.compile(r"План (\w{6})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def until(check, *, timeout: float = 60, what: str = "") -> None:  # noqa: ASYNC109
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def with_recipe(sim, logins: int = 0) -> None:
    """The demo account under the recipe (a new login then locks only itself), plus
    `logins` more accounts on the same host."""
    recipe = merge_recipe("")
    sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"] = recipe
    sim.state.routes[2].update(number="847706", provider=None)
    for i in range(1, logins + 1):
        pid, login = f"SIP-TRUNK-{i:08X}", str(900000 + i)
        sim.state.providers[pid] = {
            **PROVIDER_DEFAULTS,
            **{"id": pid, "description": f"Zadarma {login}", "username": login, "secret": f"pw-{i}"},
            **{"host": "sip.zadarma.com", "transport": "udp", "manualattributes": recipe},
            "additionalHosts": [],
        }
        sim.state.routes[2 + i] = {
            **{"id": 2 + i, "rulename": f"Zadarma {login}", "number": login, "provider": None},
            **{"priority": 1 + i, "timeout": 120, "extension": DEMO_QUEUE_EXTENSION},
            "audio_message_id": None,
            "note": "",
        }


def settings_for(tmp_path, sim_url: str, tg_url: str, operators: list[int], groups=GROUPS, **sections):
    telegram = {"token": TOKEN, "api_base": tg_url, "groups": {g: "office" for g in groups}}
    telegram.update(sections.pop("telegram", {}))
    return load_settings(
        None,
        pbx={"office": {"url": sim_url, "api_key": API_KEY, "reload_wait": 0}},
        telegram=telegram,
        storage={"data_dir": str(tmp_path / "data")},
        policy={"admins": [ANNA], "operators": operators},
        default_language="ru",
        **sections,
    )


@contextlib.asynccontextmanager
async def bot_on(tg: TelegramSandbox, sim, settings):
    async with fast_client(sim.url, name="office") as client:
        async with running(
            settings, clients={"office": client}, polling_timeout=1, verify_timeout=5, verify_interval=0.05
        ) as app:
            yield app


def sends(tg: TelegramSandbox, chat_id: int, pattern: str, after: int = 0) -> list[dict]:
    regex = re.compile(pattern, re.S)
    return [
        e
        for e in tg.events[after:]
        if e["kind"] == "send" and e["chat_id"] == chat_id and regex.search(e.get("text") or "")
    ]


# ---------------------------------------------------------------------- the budget


async def test_a_retried_message_takes_its_own_slot_in_the_group_budget():
    budget = LocalBudget()
    throttle = Throttle(budget, group_limit=20, group_window=60)
    method = SendMessage(chat_id=-100, text="card")
    calls = []

    async def make_request(bot, m):
        calls.append(asyncio.get_running_loop().time())
        if len(calls) == 1:
            raise TelegramRetryAfter(method=m, message="Too Many Requests: retry after 1", retry_after=1)
        return "ok"

    assert await throttle(make_request, SimpleNamespace(id=7), method) == "ok"
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.9  # retry_after honoured
    assert budget.used("7:chat:-100", 60) == 2  # the retry counted too
    assert throttle.retried == 1


async def test_the_local_budget_hands_out_slots_in_order_and_holds_a_chat():
    now = [100.0]
    budget = LocalBudget(clock=lambda: now[0])
    delays = [(await budget.reserve("g", 3, 10, []))[0] for _ in range(5)]
    assert delays == [0, 0, 0, 10, 10]  # the 4th and 5th wait for the 1st and 2nd to leave the window
    now[0] = 105.0
    later = [(await budget.reserve("g", 3, 10, []))[0] for _ in range(2)]
    assert later == [5, 15]  # in order behind the two already waiting, never racing them
    await budget.hold("h", 5)
    assert await budget.reserve("other", 3, 10, ["h"]) == (5, None)
    # at its time a slot is checked against when the others really went out
    now[0] = 200.0
    b = LocalBudget(clock=lambda: now[0])
    first = [(await b.reserve("g", 2, 10, []))[1] for _ in range(2)]
    _, third = await b.reserve("g", 2, 10, [])
    now[0] = 201.0
    for slot in first:  # their answers came back a second late
        await b.settle(["g"], slot)
    now[0] = 210.0
    assert await b.confirm("g", third, 2, 10) == pytest.approx(1.0)
    now[0] = 211.0
    assert await b.confirm("g", third, 2, 10) == 0


async def test_two_replicas_share_one_redis_budget():
    import redis.asyncio as aioredis

    probe = aioredis.from_url(REDIS_URL)
    try:
        await probe.ping()
    except Exception:
        pytest.skip("needs Redis")
    finally:
        await probe.aclose()
    prefix = f"pbxbot:test:{os.getpid()}:"
    a, b = RedisBudget(REDIS_URL, prefix=prefix), RedisBudget(REDIS_URL, prefix=prefix)
    try:
        delays = [(await replica.reserve("g", 3, 5, []))[0] for replica in (a, b, a, b)]
        assert delays[:3] == [0, 0, 0] and 4.5 <= delays[3] <= 5.0  # 3 in 5 s for both together
        await a.hold("hold:g", 2)
        held, slot = await b.reserve("all", 30, 1, ["hold:g"])
        assert slot is None and 1.5 <= held <= 2.0  # a 429 on one replica holds the chat on the other
    finally:
        for replica in (a, b):
            redis = replica._client()
            keys = [k async for k in redis.scan_iter(f"{prefix}*")]
            if keys:
                await redis.delete(*keys)
            await replica.close()


# ---------------------------------------------------------------------- busy groups


async def test_three_busy_groups_under_telegrams_limit_lose_no_update_and_no_card(sim, tmp_path, caplog):
    """3 groups x 6 users propose and read while the group limit is on (scaled to 5 per 2 s)."""
    caplog.set_level(logging.ERROR)
    with_recipe(sim)
    per_group = 6
    users = {g: [100 + 10 * n + i for i in range(per_group)] for n, g in enumerate(GROUPS)}
    everyone = [u for group in users.values() for u in group]
    async with TelegramSandbox(TOKEN, enforce_limits=True, group_limit=5, group_window=2.0) as tg:
        for uid in [ANNA, *everyone]:
            tg.add_user(uid, f"User{uid}")
            tg.started.add(uid)
        for g in GROUPS:
            tg.add_group(g, f"Group {g}", [ANNA, *users[g]], admins=[ANNA])
        settings = settings_for(
            tmp_path, sim.url, tg.url, everyone, telegram={"group_limit": 5, "group_window": 2.0}
        )
        async with bot_on(tg, sim, settings) as app:
            for i in range(per_group):
                for g in GROUPS:
                    uid = users[g][i]
                    tg.send(uid, g, f"/addnumber zadarma {847800 + uid} → IVR")
                    tg.send(uid, g, "/plans")
            total = per_group * len(GROUPS)

            def answered() -> bool:
                cards = sum(len(sends(tg, g, r"План \w{6}.*Одобрений")) for g in GROUPS)
                lists = sum(len(sends(tg, g, "Открытые планы")) for g in GROUPS)
                return cards >= total and lists >= total and asked() == set(everyone)

            def asked() -> set[int]:  # after its card, each proposer is asked for the password, privately
                asks = [e for e in tg.events if e["kind"] == "send" and "Пришлите SIP-пароль" in e["text"]]
                return {e["chat_id"] for e in asks}

            await until(answered, timeout=180, what="every card, password request and /plans answer")
            rows = app.services.store.plans.find(limit=1000)
            assert len(rows) == total and {r.status for r in rows} == {"proposed"}
            for row in rows:  # every proposed plan has its card, where the bot says it is
                assert row.message_id is not None
                assert row.id in tg.messages[row.chat_id][row.message_id]["text"]
            assert app.throttle.waited > 0  # the limit did bite: the bot waited for room
    assert tg.limited == []  # the bot stayed under the limit: nothing had to be refused
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# ---------------------------------------------------------------------- cards


async def test_a_card_is_retried_past_the_throttles_patience_and_counted(sim, tmp_path):
    with_recipe(sim)
    group = GROUPS[0]
    async with TelegramSandbox(TOKEN) as tg:
        meet(tg, OLGA, profiles=False)
        tg.started.add(OLGA)
        tg.add_group(group, "PBX admins", [OLGA])
        settings = settings_for(tmp_path, sim.url, tg.url, [OLGA], telegram={"retry_patience": 0})
        async with bot_on(tg, sim, settings) as app:
            tg.inject("sendMessage", count=2, retry_after=1)
            tg.send(OLGA, group, "/addnumber zadarma 847900 → IVR")
            card = await tg.wait_for(
                lambda e: e["kind"] == "send" and e["chat_id"] == group and PLAN.search(e["text"] or ""),
                timeout=60,
            )
            store, plan_id = app.services.store, PLAN.search(card["text"]).group(1)
            await until(lambda: store.plans.get(plan_id).message_id is not None, what="the card remembered")
            row = store.plans.get(plan_id)
            assert row.status == "proposed" and row.message_id == card["message_id"]
            assert app.throttle.retried == 2  # the throttle gave up at once; the card did not
            sent = [e for e in tg.events if e["chat_id"] == group and e["kind"] in ("send", "document")]
            budget = app.throttle.budget
            assert budget.used(f"{app.bot.id}:chat:{group}", 60) == len(sent) + 2  # every attempt counted


async def test_a_card_that_cannot_be_posted_releases_its_plan(sim, tmp_path):
    """The approval group is gone (the bot was removed): the plan is cancelled with the
    reason, its login free again, and the proposer is told."""
    with_recipe(sim)
    gone = -1009999999999
    async with TelegramSandbox(TOKEN) as tg:
        meet(tg, OLGA, profiles=False)
        tg.started.add(OLGA)
        settings = settings_for(tmp_path, sim.url, tg.url, [OLGA], groups=[gone])
        async with bot_on(tg, sim, settings) as app:
            store = app.services.store
            for _ in range(2):  # the second proposal is not refused: the login is not locked
                mark = len(tg.events)
                tg.send(OLGA, OLGA, "/addnumber zadarma 847900 → IVR")
                told = await tg.wait_for(
                    lambda e: e["kind"] == "send" and "не удалось опубликовать" in (e["text"] or ""),
                    after=mark,
                    timeout=60,
                )
                assert "chat not found" in told["text"] and "занят" not in told["text"]
            rows = store.plans.find(limit=10)
            assert len(rows) == 2
            for row in rows:
                assert row.status == "cancelled" and row.message_id is None
                assert row.outcome["reason"] == "card_undeliverable"
            assert store.locks.holder("office", ["847900"]) is None


# ---------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("mode", ["polling", "webhook"])
async def test_updates_run_at_most_max_concurrent_at_once_and_the_rest_wait_on_telegrams_side(
    sim, tmp_path, mode
):
    bound, pending, n = 3, 6, 10
    people = list(range(200, 200 + n))
    async with TelegramSandbox(TOKEN) as tg:
        for uid in people:
            tg.add_user(uid, f"User{uid}")
        telegram, server = {}, {"max_concurrent_updates": bound, "max_pending_updates": pending}
        if mode == "webhook":
            port = free_port()
            telegram = {"mode": "webhook", "webhook_url": f"http://127.0.0.1:{port}/telegram"}
            server.update(host="127.0.0.1", port=port)
        settings = settings_for(tmp_path, sim.url, tg.url, people, telegram=telegram, server=server)
        async with bot_on(tg, sim, settings) as app:
            running_now, peak = 0, 0
            gate = asyncio.Event()

            async def counter(handler, event, data):
                nonlocal running_now, peak
                running_now += 1
                peak = max(peak, running_now)
                try:
                    await gate.wait()
                    return await handler(event, data)
                finally:
                    running_now -= 1

            app.dispatcher.message.outer_middleware(counter)
            for uid in people:
                tg.send(uid, uid, "/whoami")  # private chats: no group budget in the way

            def in_hand() -> int:
                if mode == "webhook":
                    return len(app.webhook_handler._background_feed_update_tasks)
                return len(app.dispatcher._handle_update_tasks)

            def held_back() -> bool:  # updates beyond max_pending are still on Telegram's side
                if mode == "webhook":
                    return len(tg._deliveries) == n - pending  # their webhook answers wait
                return len(tg._updates) == n  # polling has not asked for the next updates

            await until(
                lambda: in_hand() == pending and running_now == bound and held_back(),
                what="max_pending updates taken, max_concurrent running",
            )
            assert running_now == bound  # the others wait their turn
            gate.set()
            await until(lambda: all(sends(tg, uid, "роль") for uid in people), what="every answer")
            assert peak == bound


async def test_one_busy_user_in_a_chat_never_takes_every_slot():
    """Replicas order one (chat, user)'s updates: they wait their turn in memory, not in a slot."""
    from aiogram import Bot
    from aiogram.types import Update

    from bot.entry.app import BoundedDispatcher

    dispatcher = BoundedDispatcher(max_concurrent=2, ordered=True)
    busy, other = 11, 12
    gate = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    @dispatcher.message()
    async def handler(message) -> None:
        started.append(message.from_user.id)
        if message.from_user.id == busy:
            await gate.wait()
        finished.append(message.from_user.id)

    bot = Bot("123456:delivery-unit-token")

    def update(n: int, user: int) -> Update:
        message = {"message_id": n, "date": 0, "chat": {"id": -5, "type": "supergroup", "title": "g"}}
        message.update({"from": {"id": user, "is_bot": False, "first_name": "U"}, "text": "hi"})
        return Update.model_validate({"update_id": n, "message": message}, context={"bot": bot})

    try:
        tasks = [asyncio.create_task(dispatcher.feed_update(bot, update(n, busy))) for n in range(1, 6)]
        tasks.append(asyncio.create_task(dispatcher.feed_update(bot, update(6, other))))
        await until(lambda: other in finished, what="the other user's update")
        assert started.count(busy) == 1 and dispatcher.peak <= 2
        gate.set()
        await asyncio.gather(*tasks)
        assert finished.count(busy) == 5
    finally:
        await bot.session.close()


# ---------------------------------------------------------------------- long answers


async def test_numbers_on_300_accounts_in_a_group_is_one_message_and_a_file(sim, tmp_path):
    with_recipe(sim, logins=300)
    group = GROUPS[0]
    async with TelegramSandbox(TOKEN) as tg:
        meet(tg, ANNA, profiles=False)
        tg.add_group(group, "PBX admins", [ANNA], admins=[ANNA])
        async with bot_on(tg, sim, settings_for(tmp_path, sim.url, tg.url, [])):
            mark = len(tg.events)
            tg.send(ANNA, group, "/numbers")
            document = await tg.wait_for(
                lambda e: e["kind"] == "document" and e["chat_id"] == group, after=mark, timeout=60
            )
            messages = [e for e in tg.events[mark:] if e["chat_id"] == group and e["kind"] == "send"]
            assert len(messages) == 1
            assert len(messages[0]["text"]) <= 4096 and document["filename"] in messages[0]["text"]
            assert b"900300" in document["content"] and b"<b>" not in document["content"]


def test_a_stale_plan_whose_replan_failed_says_why():
    outcome = {
        "replan_error": {
            "code": "login_exists",
            "params": {"login": "847900", "host": "h<1>", "provider_id": "SIP-1"},
        }
    }
    text = outcome_text(None, outcome, "en", html=True)
    assert "can no longer be planned" in text and "Why: Login 847900 already has an account" in text
    assert "h&lt;1&gt;" in text
    locked = {"replan_error": {"code": "locked", "params": {"plan": "abc123", "logins": "847900"}}}
    assert "open plan abc123" in outcome_text(None, locked, "en")
    unknown = outcome_text(None, {"replan_error": {"code": "mystery", "params": {}}}, "ru")
    assert "Причина: mystery" in unknown
    # the core keeps only string and number parameters: a list it dropped shows as "…"
    gone = {"replan_error": {"code": "no_destination", "params": {"query": "IVR 2"}}}
    assert "Why: No destination matches “IVR 2”. There are: …" in outcome_text(None, gone, "en")
