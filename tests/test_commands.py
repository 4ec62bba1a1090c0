"""The command grammar and destination names, as an admin types them on a phone."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.plans.commands import (
    AddNumber,
    ProviderTarget,
    RemoveNumber,
    RouteNumber,
    Undo,
    UsageError,
    parse,
    parse_csv,
)
from bot.plans.destinations import DestinationError, DestinationIndex
from bot.routing.rules import normalise_phone, number_key
from pbx.models import Destination

ZADARMA = ProviderTarget("sip.zadarma.com", 5060, "udp", "zadarma")


@pytest.mark.parametrize(
    "text",
    [
        "/addnumber zadarma 847900 → IVR",
        "/addnumber zadarma 847900 -> IVR",
        "/addnumber zadarma 847900 => IVR",
        "/addnumber zadarma 847900 to IVR",
        "/addnumber zadarma 847900 на IVR",
        "/addnumber Zadarma 847900→IVR",
        "/addnumber@pbx_ops_bot zadarma 847900 → IVR",
        "  /addnumber   задарма   847900   →   IVR  ",
    ],
)
def test_every_arrow_gives_the_same_intent(text):
    assert parse(text) == AddNumber(ZADARMA, "847900", None, "IVR")


@pytest.mark.parametrize("phone", ["+7(495)229-30-42", "84952293042", "74952293042", "+7 495 229 30 42"])
def test_phone_spellings_are_one_number_and_the_login_stays_verbatim(phone):
    intent = parse(f"/addnumber zadarma 0847900 {phone} → Main menu")
    assert intent == AddNumber(ZADARMA, "0847900", "+74952293042", "Main menu")


def test_logins_are_never_turned_into_phone_numbers():
    assert normalise_phone("847706") is None
    assert normalise_phone("2293042") is None  # a local number without its area code
    assert number_key("847706") == "847706"
    assert number_key("8 (495) 229-30-42") == "+74952293042"
    assert normalise_phone("87272501234") == "+77272501234"  # Kazakhstan shares +7


def test_explicit_host_and_port():
    intent = parse("/addnumber sip.example.com:5080 user.1 => Очередь продаж")
    assert intent == AddNumber(ProviderTarget("sip.example.com", 5080), "user.1", None, "Очередь продаж")


def test_other_commands():
    assert parse("/route 847900 → Sales") == RouteNumber("847900", "Sales")
    assert parse("/route 8 495 229-30-42 на Отдел продаж") == RouteNumber("+74952293042", "Отдел продаж")
    assert parse("/removenumber 847900") == RemoveNumber("847900")
    with pytest.raises(UsageError) as err:  # a view, not a change
        parse("/numbers")
    assert err.value.code == "not_a_change"
    assert parse("/undo 7f3a2c") == Undo("7f3a2c")


@pytest.mark.parametrize(
    ("text", "code", "command"),
    [
        ("/addnumber zadarma 847900 IVR", "missing_arrow", "addnumber"),
        ("/addnumber zadarma 847900 →", "missing_destination", "addnumber"),
        ("/addnumber zadarma → IVR", "missing_login", "addnumber"),
        ("/addnumber megafon 847900 → IVR", "provider_needs_host", "addnumber"),
        ("/addnumber nosuchtelecom 847900 → IVR", "unknown_provider", "addnumber"),
        ("/addnumber sip.x.ru:99999 1 → IVR", "bad_port", "addnumber"),
        ("/addnumber zadarma 8479;00 → IVR", "bad_login", "addnumber"),
        ("/addnumber zadarma 847900 12345 → IVR", "bad_phone", "addnumber"),
        ("/route → IVR", "missing_number", "route"),
        ("/removenumber", "missing_number", "removenumber"),
        ("/undo", "missing_plan", "undo"),
        ("/frobnicate", "unknown_command", None),
        ("847900 → IVR", "not_a_command", None),
    ],
)
def test_wrong_input_names_the_problem_and_the_right_form(text, code, command):
    with pytest.raises(UsageError) as err:
        parse(text)
    assert err.value.code == code and err.value.command == command
    if command:
        assert err.value.usage.startswith(f"/{command}") and err.value.example.startswith(f"/{command}")


def test_provider_that_needs_a_host_says_which():
    with pytest.raises(UsageError) as err:
        parse("/addnumber мегафон 1 → IVR")
    assert err.value.params == {"provider": "MegaFon"}


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80) | st.from_regex(r"/(addnumber|route|removenumber|undo|numbers)[ -~→на]{0,60}"))
def test_no_text_makes_the_grammar_raise_anything_but_a_usage_error(text):
    try:
        parse(text)
    except UsageError:
        pass


DESTINATIONS = [
    Destination(value="2000", name='<i class="sitemap icon"></i> Main menu <2000>', type="IVR_MENU"),
    Destination(value="2200", name="<i></i> Sales <2200>", type="QUEUE"),
    Destination(value="2201", name="<i></i> Отдел продаж <2201>", type="QUEUE"),
    Destination(value="201", name="<i></i> Anna Smirnova <201>", type="SIP"),
    Destination(value="202", name="<i></i> Boris Ivanov <202>", type="SIP"),
    Destination(value="busy", name="busy", type="SYSTEM"),
]


@pytest.mark.parametrize(
    ("query", "value"),
    [("IVR", "2000"), ("меню", "2000"), ("2200", "2200"), ("sales", "2200"), ("ОТДЕЛ ПРОДАЖ", "2201"),
     ("anna", "201"), ("busy", "busy"), ("Main", "2000")],
)  # fmt: skip
def test_destination_by_number_kind_or_name(query, value):
    assert DestinationIndex(DESTINATIONS).resolve(query).value == value


def test_several_candidates_are_a_choice_and_none_lists_what_exists():
    index = DestinationIndex(DESTINATIONS)
    with pytest.raises(DestinationError) as err:
        index.resolve("очередь")
    assert err.value.code == "ambiguous_destination"
    assert [d.value for d in err.value.candidates] == ["2200", "2201"]
    with pytest.raises(DestinationError) as err:
        index.resolve("Support")
    assert err.value.code == "no_destination"
    assert "busy" not in [d.value for d in err.value.candidates]
    assert {"2000", "2200", "201"} <= {d.value for d in err.value.candidates}


@given(st.text(max_size=300), st.sampled_from(["zadarma", "sip.example.ru", "megafon", "??"]))
def test_no_csv_makes_the_parser_raise_anything_but_a_usage_error(text, provider):
    try:
        intent, passwords = parse_csv(text, provider)
    except UsageError:
        return
    assert {row.login for row in intent.rows} == set(passwords)


def test_csv_rows_with_a_header_semicolons_and_phones():
    intent, passwords = parse_csv(
        "login;password;destination;phone\n847900;p1;IVR;+7 (495) 229-30-42\n# a comment\n847901;p2;Sales;\n",
        "zadarma",
    )
    assert [(r.login, r.phone, r.destination) for r in intent.rows] == [
        ("847900", "+74952293042", "IVR"),
        ("847901", None, "Sales"),
    ]
    assert passwords == {"847900": "p1", "847901": "p2"}
    assert intent.provider.host == "sip.zadarma.com"
    with pytest.raises(UsageError) as err:
        parse_csv("847900,p1,IVR\n847900,p2,IVR\n", "zadarma")
    assert err.value.code == "csv_duplicate"
