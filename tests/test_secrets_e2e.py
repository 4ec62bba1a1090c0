"""A password goes to the plan it answers, end to end: the real polling loop
against sandbox/telegram/, the simulator, SQLite. Every message that may
hold a password is deleted, and no password reaches a message, an audit row or
a log. Every wait is for an event, never a fixed sleep."""

# ruff: noqa: F811  (the `world` fixture of test_bot_e2e, imported)

from __future__ import annotations

import json
import logging
import re

from bot.plans.changes import Actor
from bot.plans.commands import parse_csv
from sandbox.demo import DEMO_PROVIDER_ID
from tests.personas import ANNA, BORIS, OLGA
from tests.test_bot_e2e import GROUP, PASSWORD, ZADARMA, World, world  # noqa: F401

OTHER = "Another-555001-pw!"


async def propose(w: World, text: str) -> tuple[str, dict]:
    """Olga proposes in the group; the plan id and the bot's question in her private chat."""
    w.tg.started.add(OLGA)
    start = w.mark()
    w.tg.send(OLGA, GROUP, text)
    card = await w.said(GROUP, r"План \w{6}", after=start)
    plan_id = re.search(r"План (\w{6})", card["text"]).group(1)
    prompt = await w.said(OLGA, f"SIP-пароль.*{plan_id}", after=start)
    return plan_id, prompt


async def deleted(w: World, message: dict, after: int) -> None:
    await w.tg.wait_for(
        lambda e: (
            e["kind"] == "delete"
            and e["message_id"] == message["message_id"]
            and e["chat_id"] == message["chat"]["id"]
        ),
        after=after,
    )


def sealed(w: World, plan_id: str) -> dict[str, str]:
    vault = w.app.services.changes.vault
    return {login: vault.open(token) for login, token in w.store.secrets.of(plan_id).items()}


def events(w: World) -> list[str]:
    return [e.event for e in w.store.audit.trail(limit=10_000)]


def assert_nowhere(w: World, caplog, *secrets: str) -> None:
    """Not in what the bot sent (texts, buttons), not in any chat, audit row, log line or database file."""
    data_dir = w.app.services.settings.storage.data_dir
    places = {
        "bot events": json.dumps(w.tg.events, default=str, ensure_ascii=False),
        "chats": json.dumps(w.tg.messages, default=str, ensure_ascii=False),
        "audit": json.dumps(
            [e.model_dump(mode="json") for e in w.store.audit.trail(limit=10_000)], ensure_ascii=False
        ),
        "logs": caplog.text,
        "database": b"".join(f.read_bytes() for f in data_dir.glob("pbxbot.db*")).decode("latin-1"),
    }
    for secret in secrets:
        for name, blob in places.items():
            assert secret not in blob, name
    assert "IntegrityError" not in caplog.text


async def test_a_reply_to_plan_b_question_goes_to_plan_b(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_a, prompt_a = await propose(w, "/addnumber zadarma 847900 → IVR")
    plan_b, prompt_b = await propose(w, "/addnumber novofon 555001 → IVR")
    assert prompt_b["markup"]["force_reply"] is True  # the client opens a reply to the question
    assert "555001" in prompt_b["markup"]["input_field_placeholder"]
    start = w.mark()
    sent = w.tg.send(OLGA, OLGA, OTHER, reply_to=prompt_b["message_id"])
    await deleted(w, sent, start)
    await w.said(OLGA, f"555001 получен.*{plan_b}", after=start)
    assert sealed(w, plan_b) == {"555001": OTHER} and sealed(w, plan_a) == {}
    # plan A is the only one waiting now: a plain message goes there
    sent = w.tg.send(OLGA, OLGA, PASSWORD)
    await deleted(w, sent, start)
    await w.said(OLGA, f"847900 получен.*{plan_a}", after=start)
    assert sealed(w, plan_a) == {"847900": PASSWORD}
    assert prompt_a["message_id"] != prompt_b["message_id"]
    assert_nowhere(w, caplog, PASSWORD, OTHER)


async def test_a_reply_starting_with_a_slash_is_a_password_too(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_id, prompt = await propose(w, "/addnumber zadarma 847900 → IVR")
    start = w.mark()
    sent = w.tg.send(OLGA, OLGA, "/Slash-pw-847900", reply_to=prompt["message_id"])
    await deleted(w, sent, start)
    await w.said(OLGA, f"847900 получен.*{plan_id}", after=start)
    assert sealed(w, plan_id) == {"847900": "/Slash-pw-847900"}
    assert_nowhere(w, caplog, "Slash-pw-847900")


async def test_the_deep_link_of_plan_b_binds_the_next_password_to_b(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_a, _ = await propose(w, "/addnumber zadarma 847900 → IVR")
    plan_b, _ = await propose(w, "/addnumber novofon 555001 → IVR")
    start = w.mark()
    w.tg.send(OLGA, OLGA, f"/start pw-{plan_b}")
    await w.said(OLGA, f"SIP-пароль для 555001 \\(план {plan_b}\\)", after=start)
    sent = w.tg.send(OLGA, OLGA, OTHER)  # not a reply: the link says where it goes
    await deleted(w, sent, start)
    await w.said(OLGA, f"555001 получен.*{plan_b}", after=start)
    assert sealed(w, plan_b) == {"555001": OTHER} and sealed(w, plan_a) == {}
    assert_nowhere(w, caplog, OTHER)


async def test_with_nothing_to_tell_plans_apart_the_bot_asks_which_and_holds_it_sealed(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_a, _ = await propose(w, "/addnumber zadarma 847900 → IVR")
    plan_b, _ = await propose(w, "/addnumber novofon 555001 → IVR")
    start = w.mark()
    sent = w.tg.send(OLGA, OLGA, OTHER)
    await deleted(w, sent, start)
    question = await w.said(OLGA, "какой это был", after=start)
    buttons = w.tg.buttons(OLGA, question["message_id"])
    assert [b["text"] for b in buttons] == [
        f"847900 · план {plan_a}",
        f"555001 · план {plan_b}",
        "✖ Никакой: стереть",
    ]
    assert all(len(b["callback_data"]) <= 16 for b in buttons)
    assert sealed(w, plan_a) == {} and sealed(w, plan_b) == {}  # nothing bound before the pick

    w.tg.press(OLGA, OLGA, question["message_id"], buttons[1]["callback_data"])
    await w.said(OLGA, f"555001 получен.*{plan_b}", after=start)
    picked = await w.said(OLGA, f"Выбран 555001 \\(план {plan_b}\\)", kinds=("edit",), after=start)
    assert not picked.get("markup")  # the buttons are gone
    assert sealed(w, plan_b) == {"555001": OTHER} and sealed(w, plan_a) == {}
    assert w.store.held.get(int(buttons[1]["callback_data"].split(":")[1])) is None  # erased once picked

    mark = w.mark()
    w.tg.press(OLGA, OLGA, question["message_id"], buttons[0]["callback_data"])  # a second press
    await w.tg.wait_for(lambda e: e["kind"] == "answer" and "устарел" in (e["text"] or ""), after=mark)
    assert sealed(w, plan_a) == {}
    trail = events(w)
    assert "secret_held" in trail and "secret_picked" in trail and "secret_pick_gone" in trail
    assert_nowhere(w, caplog, OTHER)


async def test_two_quick_replies_to_one_login_question_the_second_replaces_the_first(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_id, prompt = await propose(w, "/addnumber zadarma 847900 → IVR")
    start = w.mark()
    w.tg.inject("deleteMessage", retry_after=1)  # the first one's handling is slowed down: order still holds
    first = w.tg.send(OLGA, OLGA, PASSWORD, reply_to=prompt["message_id"])
    second = w.tg.send(OLGA, OLGA, OTHER, reply_to=prompt["message_id"])  # before the bot read the first
    await deleted(w, first, start)
    await deleted(w, second, start)
    await w.said(OLGA, f"847900 получен.*{plan_id}", after=start)
    await w.said(OLGA, f"847900 заменён новым.*{plan_id}", after=start)
    assert sealed(w, plan_id) == {"847900": OTHER}
    trail = [e.event for e in w.store.audit.trail(plan_id=plan_id)]
    assert trail.count("secret_received") == 1 and trail.count("secret_replaced") == 1
    assert_nowhere(w, caplog, PASSWORD, OTHER)


async def test_two_quick_replies_to_a_plan_question_go_to_its_next_logins(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    w.tg.started.add(OLGA)
    intent, _ = parse_csv("900201;unused;IVR\n900202;unused;IVR\n", "zadarma")  # no passwords given
    proposal = await w.app.services.changes.propose(Actor(OLGA, "Olga"), "office", intent, command="CSV")
    plan_id = proposal.row.id
    start = w.mark()
    w.tg.send(OLGA, OLGA, f"/start pw-{plan_id}")  # the card's Password button
    prompt = await w.said(OLGA, f"Плану {plan_id} нужны SIP-пароли для 900201, 900202", after=start)
    w.tg.inject("deleteMessage", retry_after=1)  # the first one's handling is slowed down: order still holds
    first = w.tg.send(OLGA, OLGA, PASSWORD, reply_to=prompt["message_id"])
    second = w.tg.send(OLGA, OLGA, OTHER, reply_to=prompt["message_id"])
    await deleted(w, first, start)
    await deleted(w, second, start)
    await w.said(OLGA, f"900201 получен.*{plan_id}", after=start)
    await w.said(OLGA, f"900202 получен.*{plan_id}", after=start)
    assert sealed(w, plan_id) == {"900201": PASSWORD, "900202": OTHER}
    assert not await w.app.services.changes.awaiting_secret(OLGA)
    assert_nowhere(w, caplog, PASSWORD, OTHER)


async def test_a_password_nobody_waits_for_is_deleted_and_not_used(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    w.tg.started.add(OLGA)
    start = w.mark()
    sent = w.tg.send(OLGA, OLGA, PASSWORD)
    await deleted(w, sent, start)
    await w.said(OLGA, "ни один план не ждёт от вас пароля, поэтому он не использован", after=start)

    plan_id, prompt = await propose(w, "/addnumber zadarma 847900 → IVR")
    mark = w.mark()
    w.tg.send(OLGA, GROUP, f"/cancel {plan_id}")
    await w.said(GROUP, f"План {plan_id} отменён", after=mark)
    late = w.tg.send(OLGA, OLGA, PASSWORD, reply_to=prompt["message_id"])  # a reply after /cancel
    await deleted(w, late, mark)
    await w.said(OLGA, f"не использовал его. План {plan_id}", after=mark)
    assert w.store.secrets.of(plan_id) == {}
    assert [e.detail.get("reason") for e in w.store.audit.trail() if e.event == "secret_unused"] == [
        "nothing_waiting",
        "plan_closed",
    ]
    assert_nowhere(w, caplog, PASSWORD)


async def test_another_member_pasting_a_sealed_password_in_the_group(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    plan_id, prompt = await propose(w, "/addnumber zadarma 847900 → IVR")
    start = w.mark()
    w.tg.send(OLGA, OLGA, PASSWORD, reply_to=prompt["message_id"])
    await w.said(OLGA, "получен", after=start)
    # the card no longer waits for it (edited after the reply above, at times: wait for it, or
    # both edits below may find the card as it was and rightly send nothing)
    await w.tg.wait_for(
        lambda e: e["kind"] == "edit" and e["chat_id"] == GROUP and "Ждём SIP-пароль" not in e["text"],
        after=start,
        timeout=30,
    )
    mark = w.mark()
    pasted = w.tg.send(BORIS, GROUP, f"is this it? {PASSWORD}")
    await deleted(w, pasted, mark)
    # Boris reads English
    await w.said(GROUP, f"the SIP password of 847900 \\(plan {plan_id}\\): I deleted it", after=mark)
    # exposed: erased from the plan, the card waits again, Olga is asked for a new one
    await w.said(OLGA, f"SIP-пароль для 847900 \\(план {plan_id}\\) отправили в группу", after=mark)
    await w.said(OLGA, f"Пришлите SIP-пароль для 847900 \\(план {plan_id}\\)", after=mark)
    assert w.store.secrets.of(plan_id) == {}
    await w.said(GROUP, "Ждём SIP-пароль для 847900", kinds=("edit",), after=mark)
    row = next(e for e in w.store.audit.trail() if e.event == "secret_pasted_in_group")
    assert row.actor_id == BORIS and row.detail["dropped"] and not row.detail["by_proposer"]

    # an ordinary message of the same member stays
    mark = w.mark()
    kept = w.tg.send(BORIS, GROUP, "looks good to me")
    w.tg.send(ANNA, GROUP, "/whoami")
    await w.said(GROUP, "роль администратор", after=mark)
    assert kept["message_id"] in w.tg.messages[GROUP]
    assert_nowhere(w, caplog, PASSWORD)


async def test_a_password_with_spaces_typed_in_the_group_by_the_proposer_is_deleted(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    await propose(w, "/addnumber zadarma 847900 → IVR")
    start = w.mark()
    leaked = w.tg.send(OLGA, GROUP, "correct horse battery staple")
    await deleted(w, leaked, start)
    await w.said(GROUP, "я его удалил", after=start)
    assert "secret_in_group" in events(w)
    assert await w.app.services.changes.awaiting_secret(OLGA)  # never used
    assert_nowhere(w, caplog, "correct horse battery staple")


async def test_a_csv_too_big_to_read_is_deleted_all_the_same(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    rows = "".join(f"{900000 + i};Big-pw-{i:06d};IVR\n" for i in range(100_000))
    content = ("login;password;destination\n" + rows).encode()
    assert len(content) > 2 * 1024 * 1024
    start = w.mark()
    sent = w.tg.send_document(OLGA, OLGA, "numbers.csv", content, "zadarma")
    await deleted(w, sent, start)
    await w.said(OLGA, "Файл слишком большой .* Я его удалил", after=start)
    audit = next(e for e in w.store.audit.trail() if e.event == "file_deleted")
    assert audit.detail["reason"] == "too_big" and audit.detail["deleted"] is True
    assert w.store.plans.find() == []
    assert_nowhere(w, caplog, "Big-pw-000001")


ISSUED = "Issued-by-Zadarma-847900!"  # the password the provider gave; PASSWORD is a typo of it


async def approved_by_boris(w: World, after: int) -> dict:
    """Boris approves the newest card; the card as edited to its end."""
    w.press(BORIS, "Одобрить")
    return await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=after)


async def test_a_rejected_registration_gets_a_new_password_through_its_card_button(world: World, caplog):
    """/addnumber with a wrong password: rejected, and the card offers a new one. Olga
    presses it, gives the right password in private, Boris approves: registered. Neither
    password anywhere; the card shows •••• → •••• and says the password cannot be read back."""
    caplog.set_level(logging.DEBUG)
    w = world
    w.sim.issue_password(ZADARMA, "847900", ISSUED)
    plan_id, prompt = await propose(w, "/addnumber zadarma 847900 → IVR")
    start = w.mark()
    sent = w.tg.send(OLGA, OLGA, PASSWORD, reply_to=prompt["message_id"])
    await deleted(w, sent, start)
    card = await approved_by_boris(w, start)
    assert "847900: отклонён" in card["text"]
    buttons = w.tg.buttons(GROUP, card["message_id"])
    assert [b["text"] for b in buttons] == ["🔑 Новый пароль для 847900"]
    assert buttons[0]["callback_data"] == f"np:{plan_id}:0"  # ids only

    mark = w.mark()
    w.press(OLGA, "Новый пароль для 847900", message=card)
    new = await w.said(GROUP, r"План \w{6} · АТС office · новый SIP-пароль", after=mark)
    new_id = re.search(r"План (\w{6})", new["text"]).group(1)
    assert "•••• → ••••" in new["text"] and "никогда не показывает SIP-пароль" in new["text"]
    assert "/undo не сможет его вернуть" in new["text"]
    question = await w.said(OLGA, f"Пришлите SIP-пароль для 847900 \\(план {new_id}\\)", after=mark)
    secret_before = next(p for p in w.sim.state.providers.values() if p["username"] == "847900")["secret"]
    assert secret_before == PASSWORD and w.store.plans.get(new_id).proposer_id == OLGA

    mark = w.mark()
    sent = w.tg.send(OLGA, OLGA, ISSUED, reply_to=question["message_id"])
    await deleted(w, sent, mark)
    await w.said(OLGA, f"847900 получен.*{new_id}", after=mark)
    assert next(p for p in w.sim.state.providers.values() if p["username"] == "847900")["secret"] == PASSWORD
    mark = w.mark()
    done = await approved_by_boris(w, mark)
    assert new_id in done["text"] and "847900: зарегистрирован" in done["text"]
    assert "reply_markup" not in w.tg.messages[GROUP][done["message_id"]]  # registered: nothing to offer
    account = next(p for p in w.sim.state.providers.values() if p["username"] == "847900")
    assert account["secret"] == ISSUED
    assert w.sim.simulate_call(ZADARMA, "847900")["outcome"] == "dial"  # the account itself is as it was
    assert w.store.secrets.of(new_id) == {}  # erased when the plan ended
    assert_nowhere(w, caplog, PASSWORD, ISSUED)


async def test_password_command_for_a_rejected_account_and_one_typed_in_the_command(world: World, caplog):
    caplog.set_level(logging.DEBUG)
    w = world
    w.sim.issue_password(ZADARMA, "847706", ISSUED)  # the demo's 847706 holds another: rejected
    start = w.mark()
    typed = w.tg.send(OLGA, GROUP, "/password 847706 Typed-in-the-command-1")
    await deleted(w, typed, start)
    await w.said(GROUP, "Я удалил это сообщение: пароль нельзя писать в команде", after=start)
    assert "secret_in_command" in events(w) and w.store.plans.find(pbx="office") == []

    plan_id, prompt = await propose(w, "/password 847706")
    mark = w.mark()
    w.press(OLGA, "Одобрить")  # her own plan: not counted
    await w.tg.wait_for(lambda e: e["kind"] == "answer" and e["text"], after=mark)
    sent = w.tg.send(OLGA, OLGA, ISSUED, reply_to=prompt["message_id"])
    await deleted(w, sent, mark)
    done = await approved_by_boris(w, mark)
    assert "847706: зарегистрирован" in done["text"]
    assert w.sim.state.providers[DEMO_PROVIDER_ID]["secret"] == ISSUED
    applying = [e for e in w.store.audit.trail() if e.plan_id == plan_id and e.event == "approval"]
    assert [e.actor_id for e in applying] == [BORIS]
    assert_nowhere(w, caplog, ISSUED, "Typed-in-the-command-1")
