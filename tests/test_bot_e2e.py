"""The bot end to end: the real aiogram polling loop against sandbox/telegram/,
the real MikoPBX client against the simulator, SQLite storage. Every wait is
for an event (a message sent, edited, deleted), never a fixed sleep."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC
from zoneinfo import ZoneInfo

import pytest

from bot.config import load_settings
from bot.entry.app import BotApp, running
from pbx.mikopbx import MikoPbxClient
from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION
from sandbox.telegram import TelegramSandbox
from tests.conftest import API_KEY, fast_client
from tests.personas import ANNA, BORIS, GLEB, GROUP_ADMINS, OLGA, STRANGER, VIKTOR, meet, policy

TOKEN = "123456789:AAE_sandbox-token-never-in-logs_x1"
GROUP = -1001000000001
PASSWORD = "Zx-847900-secret!"
ZADARMA = "sip.zadarma.com"


@dataclass
class World:
    tg: TelegramSandbox
    app: BotApp
    sim: object
    client: MikoPbxClient

    @property
    def store(self):
        return self.app.services.store

    async def said(self, chat_id: int, pattern: str, *, kinds=("send",), after: int = 0, timeout: float = 30):  # noqa: ASYNC109
        regex = re.compile(pattern, re.S)
        return await self.tg.wait_for(
            lambda e: (
                e["kind"] in kinds and e.get("chat_id") == chat_id and regex.search(e.get("text") or "")
            ),
            after=after,
            timeout=timeout,
        )

    def mark(self) -> int:
        return len(self.tg.events)

    def card(self, chat_id: int = GROUP) -> dict:
        cards = [m for m in self.tg.bot_messages(chat_id) if m.get("reply_markup")]
        return cards[-1]

    def press(self, user: int, label: str, chat_id: int = GROUP, message: dict | None = None) -> None:
        message = message or self.card(chat_id)
        button = next(b for b in self.tg.buttons(chat_id, message["message_id"]) if label in b["text"])
        self.tg.press(user, chat_id, message["message_id"], button["callback_data"])


def settings_for(tmp_path, sim_url: str, tg_url: str, **roles):
    return load_settings(
        None,
        pbx={"office": {"url": sim_url, "api_key": API_KEY, "reload_wait": 0}},
        telegram={"token": TOKEN, "api_base": tg_url, "groups": {GROUP: "office"}},
        storage={"data_dir": str(tmp_path / "data")},
        policy={**policy(ANNA, BORIS, OLGA, VIKTOR), **roles},
        default_language="ru",
    )


@pytest.fixture
async def world(sim, tmp_path):
    async with TelegramSandbox(TOKEN) as tg:
        meet(tg, ANNA, BORIS, OLGA, VIKTOR, STRANGER)
        tg.add_group(GROUP, "PBX admins", [ANNA, BORIS, OLGA, VIKTOR, STRANGER], admins=GROUP_ADMINS)
        async with fast_client(sim.url, name="office") as client:
            settings = settings_for(tmp_path, sim.url, tg.url)
            async with running(
                settings,
                clients={"office": client},
                polling_timeout=1,
                verify_timeout=5,
                verify_interval=0.05,
            ) as app:
                yield World(tg, app, sim, client)


async def propose_with_password(w: World, text: str = "/addnumber zadarma 847900 → IVR") -> str:
    """Olga proposes in the group and gives the password in private; returns the plan id."""
    w.tg.started.add(OLGA)
    start = w.mark()
    w.tg.send(OLGA, GROUP, text)
    card = await w.said(GROUP, r"План \w{6}", after=start)
    plan_id = re.search(r"План (\w{6})", card["text"]).group(1)
    await w.said(OLGA, "SIP-пароль", after=start)
    sent = w.tg.send(OLGA, OLGA, PASSWORD)
    await w.tg.wait_for(
        lambda e: e["kind"] == "delete" and e["message_id"] == sent["message_id"], after=start
    )
    await w.said(OLGA, "получен", after=start)
    return plan_id


async def test_the_manual_case_in_a_group_with_two_admins(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_id = await propose_with_password(w)
    card = w.card()
    assert (
        "847900" in card["text"]
        and "public-direct-dial" in card["text"]
        and "Одобрений: 0 из 1" in card["text"]
    )
    assert PASSWORD not in card["text"]
    assert w.sim.writes() == 0  # nothing written before the approval

    start = w.mark()
    w.press(BORIS, "Одобрить")
    done = await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)
    assert "847900: зарегистрирован" in done["text"] and "Одобрили: Boris" in done["text"]
    assert "reply_markup" not in w.tg.messages[GROUP][card["message_id"]]  # no buttons on a finished plan
    answer = await w.tg.wait_for(lambda e: e["kind"] == "answer", after=start)
    assert "1 of 1" in answer["text"]  # Boris's Telegram speaks English

    call = w.sim.simulate_call(ZADARMA, "847900")
    assert (call["outcome"], call["destination"]) == ("dial", DEMO_IVR_EXTENSION)
    assert w.sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION
    assert w.store.plans.get(plan_id).status == "applied"

    # never an edit to what a card already shows: Telegram refuses those ("message is not modified")
    assert [r for r in w.tg.refused if "not modified" in r[2]] == []
    from handlers.cards import refresh_card

    edits, refused = w.tg.calls.get("editMessageText", 0), len(w.tg.refused)
    await refresh_card(w.app.bot, w.app.services, w.store.plans.get(plan_id))  # nothing changed: no request
    assert w.tg.calls.get("editMessageText", 0) == edits and len(w.tg.refused) == refused
    w.tg.inject("sendMessage")  # one 429: a refusal /metrics counts
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/whoami")
    await w.said(GROUP, ".", after=start)
    metrics = w.app.metrics.render().decode()
    assert 'pbxbot_telegram_refused_total{code="429",method="SendMessage"} 1.0' in metrics

    # no secret (SIP password, API key, bot token) anywhere after a full scenario
    data_dir = w.app.services.settings.storage.data_dir
    places = {
        "bot messages": json.dumps(w.tg.events, default=str),
        "chats": json.dumps(w.tg.messages, default=str),
        "logs": caplog.text,
        "audit": json.dumps([e.model_dump(mode="json") for e in w.store.audit.trail()], default=str),
        "database": b"".join(f.read_bytes() for f in data_dir.glob("pbxbot.db*")).decode("latin-1"),
    }
    for secret in (PASSWORD, API_KEY, TOKEN, TOKEN.split(":")[1]):
        for name, blob in places.items():
            assert secret not in blob, (name, secret[:4])


async def test_a_user_not_in_the_config_is_refused_once_and_audited(world: World):
    w = world
    start = w.mark()
    w.tg.send(STRANGER, GROUP, "/addnumber zadarma 847900 → IVR")
    await w.said(GROUP, "only for the admins", after=start)
    w.tg.send(STRANGER, GROUP, "/numbers")
    w.tg.send(VIKTOR, GROUP, "/whoami")  # a later event: the stranger's second message was handled before it
    await w.said(GROUP, "viewer", after=start)
    deadline = asyncio.get_running_loop().time() + 30  # its audit row is written off the event loop
    while [e.event for e in w.store.audit.trail()].count("refused_unknown_user") < 2:
        assert asyncio.get_running_loop().time() < deadline, "the second refusal was never audited"
        await asyncio.sleep(0.05)
    refusals = [e for e in w.tg.events[start:] if "only for the admins" in (e.get("text") or "")]
    assert len(refusals) == 1
    assert [e.event for e in w.store.audit.trail()].count("refused_unknown_user") == 2
    assert w.sim.reads() == 0  # nothing read from the PBX for them


async def test_a_viewer_cannot_propose_and_help_shows_only_their_commands(world: World):
    w = world
    start = w.mark()
    w.tg.send(VIKTOR, GROUP, "/addnumber zadarma 847900 → IVR")
    await w.said(GROUP, "may not do that", after=start)
    w.tg.send(VIKTOR, GROUP, "/help")
    help_ = await w.said(GROUP, "/numbers", after=start)
    assert "/addnumber" not in help_["text"] and "/cancel" not in help_["text"]


async def test_forged_and_replayed_buttons(world: World):
    w = world
    plan_id = await propose_with_password(w)
    card = w.card()
    start = w.mark()
    # forged: a plan that does not exist, and a real plan id under another message
    w.tg.press(BORIS, GROUP, card["message_id"], "pl:a:zzzzzz:1")
    await w.tg.wait_for(
        lambda e: e["kind"] == "answer" and "belongs to no plan" in (e["text"] or ""), after=start
    )
    other = w.tg.send(ANNA, GROUP, "hello")
    second = w.mark()  # the answer to this press, not the first one's
    w.tg.press(BORIS, GROUP, other["message_id"], f"pl:a:{plan_id}:1")
    await w.tg.wait_for(
        lambda e: e["kind"] == "answer" and "belongs to no plan" in (e["text"] or ""), after=second
    )
    # an old version of the plan
    third = w.mark()
    w.tg.press(BORIS, GROUP, card["message_id"], f"pl:a:{plan_id}:7")
    await w.tg.wait_for(lambda e: e["kind"] == "answer" and "old version" in (e["text"] or ""), after=third)
    assert w.store.plans.get(plan_id).status == "proposed"
    assert [e.event for e in w.store.audit.trail()].count("forged_button") == 2

    # an operator cannot approve; a replay after the end says the plan is closed
    w.press(OLGA, "Одобрить")
    await w.tg.wait_for(
        lambda e: e["kind"] == "answer" and "только утверждающие" in (e["text"] or ""), after=start
    )
    w.press(BORIS, "Одобрить")
    await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)
    mark = w.mark()
    w.tg.press(BORIS, GROUP, card["message_id"], f"pl:a:{plan_id}:1")
    await w.tg.wait_for(lambda e: e["kind"] == "answer" and "applied" in (e["text"] or ""), after=mark)
    assert [p["username"] for p in w.sim.state.providers.values()].count("847900") == 1


async def test_concurrent_approvals_apply_exactly_once(sim, tmp_path):
    async with TelegramSandbox(TOKEN) as tg:
        meet(tg, ANNA, BORIS, OLGA, GLEB, profiles=False)
        tg.add_group(GROUP, "PBX admins", [ANNA, BORIS, OLGA, GLEB], admins=GROUP_ADMINS)
        async with fast_client(sim.url, name="office") as client:
            settings = settings_for(tmp_path, sim.url, tg.url, approvers=[BORIS, GLEB])
            async with running(settings, clients={"office": client}, polling_timeout=1, verify_timeout=5,
                               verify_interval=0.05) as app:  # fmt: skip
                w = World(tg, app, sim, client)
                plan_id = await propose_with_password(w)
                start = w.mark()
                for user in (ANNA, BORIS, GLEB):  # three approvers press at once; one is needed
                    w.press(user, "Одобрить")
                await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)

                def answered(n: int):
                    return lambda e: sum(1 for x in tg.events[start:] if x["kind"] == "answer") >= n

                await tg.wait_for(answered(3), after=start)  # every press got its answer
                trail = [e.event for e in app.services.store.audit.trail(plan_id=plan_id)]
                assert trail.count("applying") == 1 and trail.count("applied") == 1
    assert [p["username"] for p in sim.state.providers.values()].count("847900") == 1


async def test_a_password_typed_in_the_group_is_deleted_with_a_warning(world: World):
    w = world
    w.tg.started.add(OLGA)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    await w.said(OLGA, "SIP-пароль", after=start)
    leaked = w.tg.send(OLGA, GROUP, PASSWORD)
    await w.tg.wait_for(
        lambda e: e["kind"] == "delete" and e["message_id"] == leaked["message_id"], after=start
    )
    await w.said(GROUP, "удалил", after=start)
    assert await w.app.services.changes.awaiting_secret(OLGA)  # never used
    assert leaked["message_id"] not in w.tg.messages[GROUP]


async def test_a_proposer_who_never_started_the_bot_gets_a_deep_link(world: World):
    w = world
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/addnumber zadarma 847900 → IVR")
    hint = await w.said(GROUP, r"start=pw-\w{6}", after=start)
    plan_id = re.search(r"start=pw-(\w{6})", hint["text"]).group(1)
    buttons = w.tg.buttons(GROUP, w.card()["message_id"])
    assert any(b.get("url", "").endswith(f"start=pw-{plan_id}") for b in buttons)
    w.tg.send(OLGA, OLGA, f"/start pw-{plan_id}")
    await w.said(OLGA, "SIP-пароль", after=start)
    w.tg.send(OLGA, OLGA, PASSWORD)
    await w.said(OLGA, "получен", after=start)
    assert not await w.app.services.changes.awaiting_secret(OLGA)


async def test_a_stale_plan_gets_a_new_card_and_is_never_applied_blind(world: World):
    w = world
    plan_id = await propose_with_password(w)
    await w.client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": "[endpoint]\nset_var=A=1"})
    start = w.mark()
    w.press(BORIS, "Одобрить")
    await w.said(GROUP, "устарел", kinds=("edit",), after=start)
    new_card = await w.said(GROUP, r"План \w{6}", after=start)
    new_id = re.search(r"План (\w{6})", new_card["text"]).group(1)
    assert new_id != plan_id and w.store.plans.get(new_id).version == 2
    assert "set_var=A=1" in new_card["text"]  # the new version merges what is there now
    w.press(BORIS, "Одобрить", message=w.tg.messages[GROUP][new_card["message_id"]])
    await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)
    assert w.sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"].startswith("[endpoint]\nset_var=A=1")


async def test_english_speakers_get_english_in_private(world: World):
    w = world
    w.tg.send(BORIS, BORIS, "/whoami")
    await w.said(BORIS, "role approver")
    w.tg.send(BORIS, BORIS, "/route 847706")
    await w.said(BORIS, "Where should calls go")
    w.tg.send(BORIS, BORIS, "/numbers")
    await w.said(BORIS, "SIP account")


async def test_numbers_plans_cancel_and_history(world: World):
    w = world
    plan_id = await propose_with_password(w)
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/plans")
    await w.said(GROUP, f"{plan_id} · предложен", after=start)
    w.tg.send(OLGA, GROUP, f"/cancel {plan_id}")
    await w.said(GROUP, f"План {plan_id} отменён", after=start)
    await w.said(GROUP, "Состояние: отменён", kinds=("edit",), after=start)
    w.tg.send(ANNA, GROUP, "/history 5")
    await w.said(GROUP, f"{plan_id} · отменён", after=start)
    # the chat's zone (its digest schedule's), as on cards and digests; UTC never leaks
    w.tg.send(ANNA, GROUP, "/digest daily 09:00")
    await w.said(GROUP, "09:00", after=start)
    w.tg.send(ANNA, GROUP, "/digest tz Asia/Kamchatka")  # UTC+12: another date half the day
    await w.said(GROUP, "Asia/Kamchatka", after=start)
    mark = w.mark()
    w.tg.send(ANNA, GROUP, "/history 5")
    line = await w.said(GROUP, f"{plan_id} · отменён", after=mark)
    updated = w.store.plans.get(plan_id).updated_at.replace(tzinfo=UTC)
    kamchatka = updated.astimezone(ZoneInfo("Asia/Kamchatka")).strftime("%d.%m %H:%M")
    assert kamchatka in line["text"]
    w.tg.send(ANNA, GROUP, "/numbers")
    await w.said(GROUP, "847706 @ sip.zadarma.com", after=start)


async def test_the_command_menu_is_set_per_scope_and_language(world: World):
    keys = set(world.tg.commands)
    scopes = {json.loads(scope)["type"] for scope, _ in keys}
    assert scopes == {"all_private_chats", "all_group_chats"}
    assert {lang for _, lang in keys} == {"", "ru", "en"}
    ru = world.tg.commands[(json.dumps({"type": "all_group_chats"}), "ru")]
    assert {"command": "addnumber", "description": "добавить номер"} in ru


async def test_group_migration_keeps_the_binding(world: World):
    w = world
    new_id = -1009999999999
    w.tg.migrate(GROUP, new_id)
    start = w.mark()
    await asyncio.sleep(0)  # let the migration updates be queued before the next message
    w.tg.send(ANNA, new_id, "/pbx")
    await w.said(new_id, "office", after=start)
    deadline = asyncio.get_running_loop().time() + 30  # its audit row is written off the event loop
    while not (moved := [e for e in w.store.audit.trail() if e.event == "chat_migrated"]):
        assert asyncio.get_running_loop().time() < deadline, "the migration was never audited"
        await asyncio.sleep(0.05)
    # both sides of the migration may be handled at once, each auditing it: the same row either way
    assert {(e.pbx, e.actor_id, json.dumps(e.detail)) for e in moved} == {
        ("office", None, json.dumps({"from": GROUP, "to": new_id}))
    }


async def test_a_csv_in_private_becomes_one_plan_with_a_summary_card_and_the_full_plan_attached(world: World):
    w = world
    rows = "".join(f"{900100 + i};pw-{i};IVR\n" for i in range(40))
    start = w.mark()
    sent = w.tg.send_document(
        OLGA, OLGA, "numbers.csv", ("login;password;destination\n" + rows).encode(), "zadarma"
    )
    await w.tg.wait_for(
        lambda e: e["kind"] == "delete" and e["message_id"] == sent["message_id"], after=start
    )
    document = await w.tg.wait_for(lambda e: e["kind"] == "document" and e["chat_id"] == GROUP, after=start)
    assert document["filename"].startswith("plan-") and b"900139" in document["content"]
    card = await w.said(GROUP, "создать аккаунтов: 40", after=start)
    assert len(card["text"]) <= 4096 and "pw-" not in card["text"] and b"pw-" not in document["content"]
    await w.said(OLGA, "опубликован в группе", after=start)
    w.press(BORIS, "Одобрить")
    await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start, timeout=120)
    assert w.sim.simulate_call(ZADARMA, "900139")["destination"] == DEMO_IVR_EXTENSION
    progress = [e for e in w.tg.events[start:] if e["kind"] == "edit" and "Применяется" in (e["text"] or "")]
    assert progress  # a long plan shows its progress


async def test_telegram_429s_are_waited_out_and_nothing_is_lost(world: World):
    w = world
    w.tg.inject("sendMessage", count=2, retry_after=1)
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/whoami")
    await w.said(GROUP, "роль администратор", after=start)
    assert w.app.throttle.retried == 2 and w.app.throttle.waited >= 1.5  # honoured retry_after twice


async def test_an_anonymous_admin_is_asked_to_write_as_themselves(world: World):
    w = world
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/addnumber zadarma 847900 → IVR", anonymous=True)
    await w.said(GROUP, "от своего имени", after=start)
    assert w.store.plans.find() == [] and w.sim.reads() == 0


async def test_a_mention_of_the_bot_works_and_a_failed_apply_says_what_happened(world: World):
    w = world
    w.tg.started.add(OLGA)
    start = w.mark()
    w.tg.send(OLGA, GROUP, f"/addnumber@{w.tg.bot.username} zadarma 847900 → IVR")
    card = await w.said(GROUP, r"План \w{6}", after=start)
    assert "SIP-пароль: ••••" in card["text"]
    await w.said(OLGA, "SIP-пароль", after=start)
    w.tg.send(OLGA, OLGA, PASSWORD)
    await w.said(OLGA, "получен", after=start)
    w.sim.inject("/incoming-routes", method="POST", status=422, message="Simulated refusal")
    w.press(BORIS, "Одобрить")
    done = await w.said(GROUP, "Состояние: откачен", kinds=("edit",), after=start)
    assert "Шаг 4 не выполнен" in done["text"] and "Simulated refusal" in done["text"]
    assert "АТС в прежнем состоянии" in done["text"]
    assert [p["username"] for p in w.sim.state.providers.values()] == ["847706"]


async def test_undo_from_the_chat_goes_through_approval(world: World):
    w = world
    plan_id = await propose_with_password(w)
    start = w.mark()
    w.press(BORIS, "Одобрить")
    await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)
    w.tg.send(OLGA, GROUP, f"/undo {plan_id}")
    card = await w.said(GROUP, r"План \w{6} · АТС office · отмена", after=start)
    undo_start = w.mark()
    w.press(BORIS, "Одобрить", message=w.tg.messages[GROUP][card["message_id"]])
    await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=undo_start)
    assert [p["username"] for p in w.sim.state.providers.values()] == ["847706"]
    assert w.sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION


async def test_a_single_admin_applies_alone_with_one_button(sim, tmp_path):
    async with TelegramSandbox(TOKEN) as tg:
        tg.add_user(ANNA, "Anna", language_code="en")
        tg.add_group(GROUP, "PBX admins", [ANNA], admins=[ANNA])
        tg.started.add(ANNA)
        async with fast_client(sim.url, name="office") as client:
            settings = settings_for(tmp_path, sim.url, tg.url, self_approve=True)
            async with running(settings, clients={"office": client}, polling_timeout=1, verify_timeout=5,
                               verify_interval=0.05) as app:  # fmt: skip
                w = World(tg, app, sim, client)
                tg.send(ANNA, GROUP, "/route 847706 → IVR")
                card = await w.said(GROUP, r"План \w{6}")
                labels = [b["text"] for b in tg.buttons(GROUP, card["message_id"])]
                assert labels == ["✅ Применить", "✖ Отменить"]
                w.press(ANNA, "Применить")
                await w.said(GROUP, "Состояние: применён", kinds=("edit",))
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_IVR_EXTENSION


async def test_doctor_offers_a_fix_that_goes_through_approval(world: World):
    w = world
    await w.client.create_provider(
        Provider(description="Z 847900", username="847900", host=ZADARMA), secret="pw"
    )
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/doctor")
    report = await w.said(GROUP, "Доктор · АТС office", after=start)
    assert "несколько логинов (847706, 847900) без рецепта" in report["text"]
    w.press(OLGA, "Исправить sip.zadarma.com", message=w.tg.messages[GROUP][report["message_id"]])
    card = await w.said(GROUP, r"План \w{6} · АТС office · исправление доктора", after=start)
    w.press(BORIS, "Одобрить", message=w.tg.messages[GROUP][card["message_id"]])
    await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)
    mark = w.mark()
    w.tg.send(OLGA, GROUP, "/doctor")
    # calls land right now; identify still records 847900's calls as 847706's: a warning, no error
    after = await w.said(GROUP, "Звонки на 847900 попадают верно, но записываются на 847706", after=mark)
    assert "❌" not in after["text"]


async def test_doctor_grades_calls_on_another_port_as_an_error(world: World):
    w = world
    second = Provider(
        id="SIP-TRUNK-FFFFFFFF", description="Z 847900", username="847900", host=ZADARMA, port=5080
    )
    await w.client.create_provider(second, secret="pw")
    await w.client.create_route(Route(rulename="847900", providerid=second.id, extension=DEMO_IVR_EXTENSION))
    start = w.mark()
    w.tg.send(VIKTOR, GROUP, "/doctor")
    report = await w.said(GROUP, "Doctor · PBX office: 1 error", after=start)
    assert "❌ Calls to 847900 land on route 2 of 847706" in report["text"]
    w.tg.send(VIKTOR, GROUP, "/trace 847900")
    traced = await w.said(GROUP, "Trace · PBX office", after=start)
    assert "That is not 847900's account" in traced["text"]


async def test_trace_explains_where_a_call_goes(world: World):
    w = world
    start = w.mark()
    w.tg.send(VIKTOR, GROUP, "/trace 847706")
    traced = await w.said(GROUP, "Trace · PBX office", after=start)  # Viktor reads English
    assert "Sales" in traced["text"] and "SIP-TRUNK-5A1D8E20-incoming" in traced["text"]
    w.tg.send(VIKTOR, GROUP, "/trace")
    await w.said(GROUP, "Usage: /trace", after=start)


async def test_digest_now_and_a_schedule(world: World):
    w = world
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/digest")
    await w.said(GROUP, "Сводка маршрутизации · АТС office", after=start)
    w.tg.send(ANNA, GROUP, "/digest quiet on")  # before a schedule: not dropped silently
    await w.said(GROUP, "Не применено: тихий режим .* повторите /digest quiet on", after=start)
    w.tg.send(ANNA, GROUP, "/digest weekly пн 09:30")
    await w.said(GROUP, "каждую неделю, пн, в 09:30 \\(Europe/Moscow\\)", after=start)
    assert w.app.services.scheduler.next_run(GROUP).weekday() == 0
    w.tg.send(ANNA, GROUP, "/digest tz Asia/Yekaterinburg")
    await w.said(GROUP, "09:30 \\(Asia/Yekaterinburg\\)", after=start)
    assert w.app.services.scheduler.next_run(GROUP).utcoffset().total_seconds() == 5 * 3600
    w.tg.send(ANNA, GROUP, "/digest daily 25:00")
    await w.said(GROUP, "не время", after=start)
    w.tg.send(ANNA, GROUP, "/digest off")
    await w.said(GROUP, "Сводка отключена", after=start)
    assert w.app.services.scheduler.next_run(GROUP) is None
