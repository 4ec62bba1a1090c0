"""How the simulator models MikoPBX's pjsip.conf and incoming dialplan."""

from __future__ import annotations

import pytest

from sandbox.dialplan import (
    Dialplan,
    exten_matches,
    exten_pattern,
    incoming_context_id,
    parse_manual_attributes,
)
from sandbox.pbxstate import PROVIDER_DEFAULTS


def provider(pid: str, login: str, host: str = "sip.zadarma.com", **extra) -> dict:
    return {**PROVIDER_DEFAULTS, "id": pid, "username": login, "host": host, "description": login, **extra}


def route(
    rid: int, number: str, extension: str, provider_id: str | None = None, priority: int | None = None
) -> dict:
    return {
        "id": rid,
        "rulename": f"r{rid}",
        "number": number,
        "provider": provider_id,
        "priority": priority if priority is not None else rid,
        "timeout": 120,
        "extension": extension,
        "audio_message_id": None,
        "note": "",
    }


DEFAULT = route(1, "", "busy", priority=9999)


def plan(providers: list[dict], routes: list[dict], **settings) -> Dialplan:
    return Dialplan({p["id"]: p for p in providers}, {r["id"]: r for r in [DEFAULT, *routes]}, settings)


def test_manual_attributes_are_parsed_like_util_parse_ini_settings():
    text = "[endpoint]\ncontext = public-direct-dial\nbroken line\nempty=\n; note\n[identify]\nmatch=1.2.3.4"
    assert parse_manual_attributes(text) == {
        "endpoint": [("context", "public-direct-dial")],
        "identify": [("match", "1.2.3.4")],
    }


def test_context_id_strips_non_alphanumerics():
    assert incoming_context_id("sip.zadarma.com", 5060) == "sipzadarmacom5060-incoming"
    assert incoming_context_id("", 5060) == "5060-incoming"


@pytest.mark.parametrize(
    ("number", "exten", "hit"),
    [
        ("74952293042", "74952293042", True),
        ("74952293042", "84952293042", False),
        ("7495XXXXXXX", "74952293042", True),
        ("7495XXXXXXX", "7495229304", False),
        ("_X!", "847706", True),
        ("_X!", "office", False),
        ("8[49]00.", "89001234", True),
        ("8[49]00.", "8900", False),
        ("NXX", "123", False),
        ("NXX", "223", True),
    ],
)
def test_asterisk_patterns(number, exten, hit):
    assert exten_matches(exten_pattern(number), exten) is hit


def test_route_with_a_did_wins_over_the_catch_all():
    a = provider("SIP-TRUNK-A", "847706")
    dp = plan([a], [route(2, "", "2200", "SIP-TRUNK-A"), route(3, "74951112233", "201", "SIP-TRUNK-A")])
    assert dp.simulate("sip.zadarma.com", "74951112233")["destination"] == "201"
    assert dp.simulate("sip.zadarma.com", "847706")["destination"] == "2200"


def test_without_a_catch_all_the_default_route_answers():
    dp = plan([provider("SIP-TRUNK-A", "847706")], [route(2, "74951112233", "201", "SIP-TRUNK-A")])
    result = dp.simulate("sip.zadarma.com", "847706")
    assert (result["outcome"], result["route_id"], result["destination"]) == ("default", 1, "busy")


def test_same_did_routes_are_chained_in_priority_order():
    dp = plan(
        [provider("SIP-TRUNK-A", "847706")],
        [route(2, "5", "202", "SIP-TRUNK-A", priority=7), route(3, "5", "201", "SIP-TRUNK-A", priority=3)],
    )
    assert dp.simulate("sip.zadarma.com", "5")["chain"] == [3, 2]


def test_identify_uses_additional_hosts_and_identify_match():
    extra = provider("SIP-TRUNK-B", "1", host="sip.b.ru", additionalHosts=[{"address": "185.45.152.1"}])
    manual = provider("SIP-TRUNK-C", "2", host="sip.c.ru", manualattributes="[identify]\nmatch=10.0.0.9")
    dp = plan([extra, manual], [])
    assert dp.simulate("185.45.152.1", "1")["endpoint"] == "SIP-TRUNK-B"
    assert dp.simulate("10.0.0.9", "2")["endpoint"] == "SIP-TRUNK-C"


def test_inbound_account_in_a_shared_group_points_at_a_context_never_generated():
    # mikopbx/Core #1101
    outbound = provider("SIP-TRUNK-B", "847706", host="pbx.office.ru")
    inbound = provider("SIP-TRUNK-A", "office1", host="pbx.office.ru", registration_type="inbound")
    dp = plan([outbound, inbound], [route(2, "", "201", "SIP-TRUNK-A")])
    result = dp.simulate("pbx.office.ru", "office1")
    assert result["endpoint"] == "SIP-TRUNK-A" and result["context"] == "office1-incoming"
    assert result["outcome"] == "not_found" and "does not exist" in result["reason"]


def test_inbound_account_is_found_by_username_first():
    inbound = provider("SIP-TRUNK-Z", "office1", host="", registration_type="inbound")
    other = provider("SIP-TRUNK-A", "847706", host="1.2.3.4")
    dp = plan([inbound, other], [route(2, "", "201", "SIP-TRUNK-Z")])
    result = dp.simulate("1.2.3.4", "100", from_="office1")
    assert result["endpoint"] == "SIP-TRUNK-Z" and result["destination"] == "201"


def test_lone_account_with_a_non_numeric_login_gets_its_own_exten():
    dp = plan([provider("SIP-TRUNK-A", "user.one")], [route(2, "", "2200", "SIP-TRUNK-A")])
    assert dp.simulate("sip.zadarma.com", "user.one")["destination"] == "2200"


def test_guest_calls_reach_public_direct_dial_only_when_allowed():
    routes = [route(2, "74951112233", "201")]
    assert plan([], routes).simulate("203.0.113.5", "74951112233")["outcome"] == "not_found"
    result = plan([], routes, PBXAllowGuestCalls="1").simulate("203.0.113.5", "74951112233")
    assert (result["context"], result["destination"]) == ("public-direct-dial", "201")


def test_any_provider_routes_never_enter_provider_contexts():
    # mikopbx/Core #436: "any provider" means calls not bound to a provider
    dp = plan([provider("SIP-TRUNK-A", "847706")], [route(2, "847706", "2000")])
    result = dp.simulate("sip.zadarma.com", "847706")
    assert result["outcome"] == "default"
