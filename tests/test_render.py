"""Every refusal the core can raise renders in both languages, with its values escaped for HTML."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.plans.changes import ChangeError
from bot.plans.commands import UsageError, parse
from bot.plans.planner import Plan, PlanError, PlanKind, Step, StepKind
from bot.text.render import error_text, outcome_text, plan_text

PLAN_ERRORS = [
    PlanError("login_exists", login="847706", host="sip.zadarma.com", provider_id="SIP-TRUNK-1"),
    PlanError("did_taken", did="847900", route_id=3, extension="203"),
    PlanError("no_destination", query="<b>Support</b>", candidates=[("Sales", "2200")]),
    PlanError("ambiguous_destination", query="an", candidates=[("Anna", "201"), ("Ann", "204")]),
    PlanError("ambiguous_number", number="100", hosts=["a.ru (SIP-1)", "b.ru (SIP-2)"]),
    PlanError("number_unknown", number="847999"),
    PlanError("undo_drifted", record="2"),
]
CHANGE_ERRORS = [
    ChangeError("unknown_pbx", pbx="x", known="office"),
    ChangeError("no_plan", plan="abc123"),
    ChangeError("not_allowed", action="propose"),
    ChangeError(
        "locked", plan="abc123", logins="847706", who="olga", since=datetime(2026, 11, 26, 9, 5, tzinfo=UTC)
    ),
    ChangeError("expired", plan="abc123"),
    ChangeError("plan_closed", plan="abc123", status="applied"),
    ChangeError("old_version", plan="abc123", version=1),
    ChangeError("not_approved", plan="abc123", status="proposed"),
    ChangeError("not_approver", plan="abc123"),
    ChangeError("own_plan", plan="abc123"),
    ChangeError("already_approved", plan="abc123"),
    ChangeError("not_yours", plan="abc123"),
    ChangeError("secret_missing", plan="abc123", logins="847900"),
    ChangeError("no_such_login", plan="abc123", login="1"),
    ChangeError("pbx_unreachable", plan="abc123", error="timeout"),
    ChangeError("undo_not_applied", plan="abc123", status="failed"),
    ChangeError("undo_other_pbx", plan="abc123", pbx="branch"),
    ChangeError("not_a_change"),
]
USAGE_TEXTS = [
    "hello",
    "/addnumber zadarma 847900",
    "/addnumber zadarma → IVR",
    "/addnumber megafon 1 → IVR",
    "/addnumber ???? 1 → IVR",
    "/addnumber sip.x.ru:99999 1 → IVR",
    "/addnumber zadarma <b> → IVR",
    "/addnumber zadarma 1 +7 12 → IVR",
    "/addnumber zadarma 1 →",
    "/route → IVR",
    "/removenumber",
    "/undo",
    "/frobnicate",
]


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_every_refusal_renders(lang):
    errors = list(PLAN_ERRORS) + CHANGE_ERRORS
    for text in USAGE_TEXTS:
        with pytest.raises(UsageError) as err:
            parse(text)
        errors.append(err.value)
    for exc in errors:
        rendered = error_text(exc, lang, html=True)
        assert rendered and "{" not in rendered, (exc, rendered)
        assert "<b>" not in rendered  # values are escaped


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_a_card_shows_every_kind_of_step(lang):
    route = {"number": "847900", "providerid": None, "extension": "2000", "rulename": "r"}
    account = {"username": "847900", "host": "sip.zadarma.com", "port": 5060, "transport": "udp"}
    new_account = {**account, "manualattributes": "[endpoint]\nx=1"}
    new_route = {**route, "providerid": "@new:847900"}
    k = StepKind
    steps = [
        Step(k.CREATE_PROVIDER, None, new_account, "new_account", "", "847900"),
        Step(k.UPDATE_PROVIDER, account, {**account, "note": "<i>"}, "recipe_context", "SIP-1", "847900"),
        Step(k.DELETE_PROVIDER, account, None, "remove_account", "SIP-1", "847900"),
        Step(k.CREATE_ROUTE, None, new_route, "route_new_account", "", "847900"),
        Step(k.UPDATE_ROUTE, route, {**route, "extension": "2200"}, "reroute", "3", "847900"),
        Step(k.DELETE_ROUTE, route, None, "route_of_number", "3", "847900"),
    ]
    plan = Plan("office", PlanKind.ADD, steps, "f", "sip.zadarma.com", ["recipe_applied"], {}, ["847900"])
    card = plan_text(plan, lang, plan_id="abc123", destinations={"2000": "IVR", "2200": "Sales"}, html=True)
    assert card.count("\n") > 12 and "&lt;i&gt;" in card and "Sales" in card and "847900" in card
    outcome = {
        "error": "boom",
        "failed_step": 2,
        "leftovers": [{"step": 0, "kind": "create_provider", "record": "SIP-9", "error": "503"}],
        "registration": {"847900": "rejected"},
    }
    text = outcome_text(None, outcome, lang)
    assert "SIP-9" in text and "boom" in text


def test_split_text_keeps_every_line_and_telegrams_limit():
    from bot.text.render import TELEGRAM_LIMIT, split_text, utf16_len

    text = "\n".join(f"строка {i} " + "😀" * (i % 7) for i in range(3000)) + "\n" + "x" * 9000
    parts = split_text(text)
    assert all(0 < utf16_len(p) <= TELEGRAM_LIMIT for p in parts)
    assert "\n".join(parts).replace("\n", "") == text.replace("\n", "")


def test_plans_and_history_show_the_configured_zone():
    from datetime import datetime
    from types import SimpleNamespace
    from zoneinfo import ZoneInfo

    from handlers.numbers import _plan_line

    row = SimpleNamespace(
        id="abc123",
        status="applied",
        kind="add",
        proposer_name="Anna",
        proposer_id=1,
        updated_at=datetime(2026, 1, 5, 21, 30),  # naive: stored in UTC
        command="/addnumber zadarma 847900 → IVR",
    )
    assert "06.01 00:30" in str(_plan_line(row, "en", ZoneInfo("Europe/Moscow")))
    assert "05.01 21:30" in str(_plan_line(row, "en", ZoneInfo("UTC")))
