"""Hostile names and arguments in the real polling loop: whatever a user types or is
called reaches Telegram as text, never as markup Telegram refuses."""

from __future__ import annotations

import asyncio
import html

from handlers.throttle import Throttle
from tests.personas import ANNA, BORIS, OLGA
from tests.test_bot_e2e import GROUP, World, propose_with_password
from tests.test_bot_e2e import world as world

NAME = "</code><b>"


async def settle(w: World, start: int) -> list[dict]:
    """The bot's messages after `start`, once it reacted and every update in flight is done."""
    await w.tg.wait_for(lambda e: e["kind"] in ("send", "answer", "document"), after=start, timeout=30)
    while tasks := set(w.app.dispatcher._handle_update_tasks):
        await asyncio.wait(tasks, timeout=30)
    return [e for e in w.tg.events[start:] if e["kind"] in ("send", "document")]


async def test_a_proposer_called_code_b_proposes_and_plans_and_history_answer(world: World):
    w = world
    w.tg.users[OLGA].first_name = NAME
    plan_id = await propose_with_password(w)
    card = w.card()
    assert f"Предложил: {NAME}" in card["text"]  # shown as text on the card
    assert "&lt;/code&gt;&lt;b&gt;" in card["_html"]
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/plans")
    plans = await w.said(GROUP, f"{plan_id} · предложен", after=start)
    assert NAME in plans["text"]
    w.press(BORIS, "Одобрить")
    done = await w.said(GROUP, "Состояние: применён", kinds=("edit",), after=start)
    assert NAME in done["text"]
    w.tg.send(ANNA, GROUP, "/history")
    history = await w.said(GROUP, f"{plan_id} · применён", after=start)
    assert NAME in history["text"]


async def test_hostile_arguments_get_one_answer_each(world: World):
    w = world
    for middleware in w.app.bot.session.middleware:  # a dozen answers in a minute is the point here
        if isinstance(middleware, Throttle):
            middleware.group_limit = 1_000
    long = "Ж" * 3000 + "</code>" * 140
    commands = [
        (ANNA, "/pbx </code>", "</code>"),
        (ANNA, "/pbx " + long, long[:100]),
        (ANNA, "/digest daily <b>", "<b>"),
        (ANNA, "/digest tz </code>&", "</code>&"),
        (ANNA, "/digest weekly <a 09:00", "<a"),
        (ANNA, "/trace <a href=x>", "<a href=x>"),
        (ANNA, "/trace " + long, long[:20]),  # refused as a login: the value clipped
        (ANNA, "/cancel </code>", "</code>"),
        (OLGA, "/addnumber zadarma <b> → IVR", "<b>"),
        (OLGA, "/addnumber zadarma 847900 → </code><b>", "</code><b>"),
        (OLGA, "/route </code> → IVR", "</code>"),
        (OLGA, "/removenumber &amp;<b>", "&amp;<b>"),
        (OLGA, "/undo <a href=x>", None),  # "give a plan id": the argument is not repeated
        (ANNA, "/history &", None),  # "&" is not a number: the last ten plans
    ]
    for user, text, shown in commands:
        start = w.mark()
        w.tg.send(user, GROUP, text)
        sent = await settle(w, start)
        assert len(sent) == 1, (text, [e.get("text") for e in sent])
        if shown is None:
            continue
        raw = w.tg.messages[GROUP][sent[0]["message_id"]]["_html"]  # as the bot sent it
        assert html.escape(shown[:100], quote=False) in raw, (text, raw[:300])
        assert shown[:100] in sent[0]["text"] or "&amp;" in shown  # the sandbox unescapes twice
