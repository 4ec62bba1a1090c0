"""Refusals in the real polling loop: each kind of the core's error tree
(bot/errors.py), and the PBX's, leaves its handler and is answered once, by the
error handler, with its sentence; buttons from cards posted long ago are read as
they were, and a button of ours in a format no longer made gets a polite answer."""

from __future__ import annotations

import asyncio

import pytest

from bot.errors import ChangeError, DigestUsage, PlanError, UsageError
from bot.text.i18n import t
from bot.text.render import error_text
from handlers.throttle import Throttle
from tests.test_bot_e2e import ANNA, BORIS, GROUP, OLGA, VIKTOR, World, propose_with_password
from tests.test_bot_e2e import world as world


async def settle(w: World, start: int) -> list[dict]:
    """Every reaction of the bot after `start` (messages and pop-ups), once nothing is in flight."""
    await w.tg.wait_for(lambda e: e["kind"] in ("send", "answer", "document"), after=start, timeout=30)
    while tasks := set(w.app.dispatcher._handle_update_tasks):
        await asyncio.wait(tasks, timeout=30)
    return [e for e in w.tg.events[start:] if e["kind"] in ("send", "answer", "document")]


def unthrottled(w: World) -> None:
    for middleware in w.app.bot.session.middleware:
        if isinstance(middleware, Throttle):
            middleware.group_limit = 1_000


@pytest.mark.parametrize(
    ("user", "command", "error"),
    [
        (OLGA, "/route 847706 IVR", UsageError("missing_arrow", "route")),
        (OLGA, "/route 999999 → IVR", PlanError("number_unknown", number="999999")),
        (ANNA, "/cancel zzzzzz", ChangeError("no_plan", plan="zzzzzz")),
        (ANNA, "/digest at noon", DigestUsage("usage")),
    ],
    ids=["usage", "plan", "change", "digest"],
)
async def test_each_kind_of_refusal_is_answered_once_with_its_sentence(
    world: World, user: int, command: str, error: Exception
):
    w = world
    start = w.mark()
    w.tg.send(user, GROUP, command)
    sent = await settle(w, start)
    assert [e["text"] for e in sent] == [error_text(error, "ru")]
    assert w.sim.writes() == 0


async def test_a_pbx_failure_is_answered_once_with_its_one_line(world: World):
    w = world
    w.sim.inject("/sip-providers*", method="GET", status=503, count=1000)
    w.app.services.changes.pbxs["office"].reader.clear()
    start = w.mark()
    w.tg.send(ANNA, GROUP, "/numbers")
    sent = await settle(w, start)
    assert len(sent) == 1 and sent[0]["kind"] == "send", sent
    assert "АТС office не ответила на GET /sip-providers" in sent[0]["text"]


async def test_a_refused_press_is_one_pop_up_and_the_card_stays(world: World):
    w = world
    unthrottled(w)
    plan_id = await propose_with_password(w)
    start = w.mark()
    w.press(VIKTOR, "Одобрить")  # a viewer: the policy refuses, in Viktor's English
    sent = await settle(w, start)
    assert [(e["kind"], e["show_alert"]) for e in sent] == [("answer", True)]
    assert sent[0]["text"] == error_text(ChangeError("not_approver", plan=plan_id), "en")
    assert w.store.plans.get(plan_id).status == "proposed"


async def test_buttons_on_cards_posted_long_ago_are_read_as_they_were(world: World):
    """Cards carry `pl:<action letter>:<plan>:<version>`; the letters are the enum's values."""
    w = world
    unthrottled(w)
    plan_id = await propose_with_password(w)
    card = w.card()
    assert {b.get("callback_data") for b in w.tg.buttons(GROUP, card["message_id"])} >= {
        f"pl:a:{plan_id}:1",
        f"pl:r:{plan_id}:1",
        f"pl:c:{plan_id}:1",
    }
    start = w.mark()
    w.tg.press(OLGA, GROUP, card["message_id"], f"pl:c:{plan_id}:1")  # as typed by an old card
    await w.tg.wait_for(lambda e: e["kind"] == "answer" and e["text"] == "Отменено.", after=start)
    await w.said(GROUP, "Состояние: отменён", kinds=("edit",), after=start)
    assert w.store.plans.get(plan_id).status == "cancelled"


@pytest.mark.parametrize(
    "data",
    ["pl:approve:{plan}:1", "pl:a:{plan}", "fx", "pw:7:first"],
    ids=["plan action spelled out", "plan without version", "fix without key", "pick by name"],
)
async def test_a_button_of_ours_in_a_format_no_longer_made_is_outdated(world: World, data: str):
    w = world
    unthrottled(w)
    plan_id = await propose_with_password(w)
    card = w.card()
    start = w.mark()
    w.tg.press(BORIS, GROUP, card["message_id"], data.format(plan=plan_id))
    sent = await settle(w, start)
    assert [(e["kind"], e["text"]) for e in sent] == [("answer", t("tg.button.outdated", "en"))]
    assert "forged_button" not in [e.event for e in w.store.audit.trail()]
    assert w.store.plans.get(plan_id).status == "proposed"

    start = w.mark()  # a prefix that was never ours stays a forgery
    w.tg.press(BORIS, GROUP, card["message_id"], "zz:1")
    sent = await settle(w, start)
    assert [(e["kind"], e["text"]) for e in sent] == [("answer", t("tg.button.unknown", "en"))]
    assert [e.event for e in w.store.audit.trail()].count("forged_button") == 1
