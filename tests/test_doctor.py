"""The doctor on seeded broken setups, read over HTTP from the simulator: one
test per check, a clean setup giving none, and a fix that clears its finding."""

from __future__ import annotations

import asyncio

import pytest

from bot.plans.commands import FixHost
from bot.plans.executor import ApplyStatus, Executor
from bot.plans.planner import plan_fix_host
from bot.plans.snapshot import SnapshotReader
from bot.routing.doctor import CHECKS, Severity, examine
from bot.routing.rules import Attributes, did_matches
from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION

RECIPE = "[endpoint]\ncontext=public-direct-dial"
ZADARMA = "sip.zadarma.com"


async def findings(client):
    _, found = await examine(client, SnapshotReader(client))
    return found


def codes(found) -> list[str]:
    return [f.code for f in found]


async def add_account(client, login: str, attrs: str = "", host: str = ZADARMA, **extra) -> Provider:
    account = Provider(description=f"Z {login}", username=login, host=host, manualattributes=attrs, **extra)
    return await client.create_provider(account, secret="pw")


async def test_the_demo_pbx_is_clean(client):
    assert await findings(client) == []


async def test_two_logins_on_one_host_without_the_recipe(client):
    await add_account(client, "847900")
    unrouted, finding = await findings(client)
    assert (finding.code, finding.severity, finding.subject) == (
        "shared_host_no_fix",
        Severity.WARNING,
        ZADARMA,
    )
    assert finding.fix == FixHost(ZADARMA) and len(finding.fix_key) == 10
    # MikoPBX gives 847900 `exten => 847900` with its own empty-DID routes only (none):
    # the demo account's catch-all does not take it, the default route (busy) does
    assert (unrouted.code, unrouted.subject) == ("login_falls_to_default", "847900")


async def test_a_mixed_group_and_a_recipe_login_without_a_route(client):
    await add_account(client, "847900", RECIPE)
    found = await findings(client)
    assert codes(found) == ["mixed_group", "recipe_without_route", "login_falls_to_default"]
    assert found[0].params["logins"] == "847706" and found[1].subject == "847900"
    assert [f.severity for f in found] == [Severity.ERROR, Severity.ERROR, Severity.WARNING]


async def test_a_route_bound_to_an_account_under_the_recipe_is_dead(client):
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": RECIPE})
    found = await findings(client)
    assert "dead_bound_route" in codes(found) and "recipe_without_route" in codes(found)


async def test_routes_bound_to_a_disabled_or_missing_provider(client, sim):
    sim.state.set_provider_disabled(DEMO_PROVIDER_ID, True)
    assert codes(await findings(client)) == ["route_provider_disabled"]
    sim.state.routes[2]["provider"] = "SIP-TRUNK-DEADBEEF"
    assert codes(await findings(client)) == ["route_provider_missing"]


async def test_an_any_route_that_matches_nothing_and_duplicate_dids(client):
    await client.create_route(Route(rulename="typo", number="84770", extension=DEMO_IVR_EXTENSION))
    await client.create_route(Route(rulename="a", number="74951112233", extension="201"))
    await client.create_route(Route(rulename="b", number="+7 495 111-22-33", extension="202"))
    found = await findings(client)
    assert codes(found) == ["duplicate_did", "orphan_any_route"]
    assert found[0].params["did"] == "+74951112233"


async def test_a_route_to_a_destination_that_does_not_exist(client, sim):
    sim.state.routes[2]["extension"] = "2999"
    (finding,) = await findings(client)
    assert finding.code == "missing_destination" and finding.params["destination"] == "2999"


async def test_a_did_stored_in_another_form_than_calls_arrive_with(client, sim):
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": RECIPE})
    await client.patch_route(2, {"number": "847706"}, providerid=None)
    await client.create_route(Route(rulename="city", number="+74952293042", extension=DEMO_QUEUE_EXTENSION))
    sim.simulate_call(ZADARMA, "74952293042")  # the provider sends the DID without the plus
    (finding,) = await findings(client)
    assert finding.code == "did_format" and finding.params == {
        "route": 3,
        "stored": "+74952293042",
        "seen": "74952293042",
    }


async def test_an_account_that_does_not_register(client, sim):
    sim.reject_credentials(ZADARMA, "847706")
    await client.patch_provider(DEMO_PROVIDER_ID, {"note": "touched"})  # re-registers, and is refused
    deadline = asyncio.get_running_loop().time() + 30
    while (await client.registration_statuses())[DEMO_PROVIDER_ID].state.value != "rejected":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    (finding,) = await findings(client)
    assert finding.code == "not_registered" and finding.params["state"] == "rejected"


async def test_an_inbound_account_sharing_a_host(client):
    await add_account(client, "trunk1", registration_type="inbound")
    assert "inbound_shares_host" in codes(await findings(client))


async def test_extra_parameters_that_mikopbx_drops_or_cannot_load(client):
    attrs = "[endpiont]\nx=1\njunk line\n[registration]\nline=yes\n[endpoint]\ncontext=public-direct"
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": attrs})
    found = await findings(client)
    assert codes(found) == [
        "attrs_context_typo",
        "attrs_line_without_endpoint",
        "attrs_line_dropped",
        "attrs_unknown_section",
    ]


async def test_the_fix_plan_clears_the_finding_and_calls_land_right(client, sim):
    await add_account(client, "847900")
    await client.create_route(Route(rulename="847900", number="", providerid=None, extension="202"))
    snapshot = await SnapshotReader(client).read(host=ZADARMA)
    plan = plan_fix_host(FixHost(ZADARMA), snapshot)
    assert plan.kind.value == "fix" and plan.steps
    result = await Executor(client, reload_wait=0, verify_timeout=5, verify_interval=0.05).apply(plan)
    assert result.status is ApplyStatus.APPLIED
    # calls land right; identify still binds 847900's calls to the first account, so its
    # call records name that one: under the recipe a note for the host, no warning, no fix
    (finding,) = await findings(client)
    assert finding.code == "call_attributed_to_other"
    assert (finding.severity, finding.fix, finding.subject) == (Severity.INFO, None, ZADARMA)
    assert finding.params == {"number": "847900", "other": "847706"}
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION
    # the fix keeps where 847900's calls went before it: the default route (it had no route of its own)
    assert sim.simulate_call(ZADARMA, "847900")["destination"] == "busy"


def test_attribute_parsing_and_did_patterns():
    a = Attributes.parse("[endpoint]\ncontext = public-direct-dial\n; comment\nset_var=\n")
    assert a.recipe and a.lines_without_value == ["set_var="]
    assert did_matches("_8477XX", "847706") and not did_matches("_8477XX", "84770")
    assert (
        did_matches("_X.", "12")
        and not did_matches("_X.", "1")
        and did_matches("_[1-3]00", "200")
        and not did_matches("_[1-3]00", "400")
    )


@pytest.mark.parametrize("lang", ["ru", "en"])
def test_every_finding_has_texts(lang):
    from bot.text.i18n import CATALOGUES

    codes_in_doctor = set(
        "shared_host_no_fix mixed_group recipe_without_route dead_bound_route route_provider_missing "
        "route_provider_disabled orphan_any_route duplicate_did did_bound_and_any missing_destination "
        "did_format not_registered inbound_shares_host attrs_unknown_section attrs_line_dropped "
        "attrs_line_without_endpoint attrs_context_typo login_falls_to_default guest_calls_reach_any "
        "cdr_collision guest_calls_unchecked cdr_unchecked call_to_another_account call_falls_to_default "
        "call_rejected call_right_by_shared_context call_attributed_to_other".split()
    )
    for code in codes_in_doctor:
        assert f"doctor.{code}.title" in CATALOGUES[lang] and f"doctor.{code}.why" in CATALOGUES[lang]


async def test_a_login_no_route_serves_while_the_default_route_is_busy(client):
    await client.delete_route(2)
    (finding,) = await findings(client)
    assert (finding.code, finding.params) == (
        "login_falls_to_default",
        {"login": "847706", "destination": "busy"},
    )
    await client.patch_route(1, {"extension": "2000"}, providerid=None)  # the default route to the IVR
    assert await findings(client) == []


async def test_guest_calls_with_any_routes(client, sim):
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": RECIPE})
    await client.patch_route(2, {"number": "847706"}, providerid=None)
    assert await findings(client) == []
    sim.state.settings["PBXAllowGuestCalls"] = "1"
    (finding,) = await findings(client)
    assert finding.code == "guest_calls_reach_any" and finding.params == {"routes": 1}


async def test_call_records_show_the_collision(client, sim):
    second = Provider(
        id="SIP-TRUNK-FFFFFFFF", description="Z 847900", username="847900", host=ZADARMA, port=5080
    )
    await client.create_provider(second, secret="pw")
    await client.create_route(Route(rulename="847900", providerid="SIP-TRUNK-FFFFFFFF", extension="2000"))
    sim.simulate_call(ZADARMA, "847900")  # identified as the demo account: its routes answer
    found = await findings(client)
    # the trace grades it (an error); the call records' note on the same collision is not repeated
    assert "cdr_collision" not in codes(found) and "call_to_another_account" in codes(found)
    sim.state.providers["SIP-TRUNK-FFFFFFFF"]["port"] = 5060  # one host:port: a shared context
    sim.simulate_call(ZADARMA, "847900")
    found = await findings(client)
    assert "cdr_collision" not in codes(found) and "call_right_by_shared_context" in codes(found)


async def test_a_refused_read_names_the_check_it_skips(client, sim):
    sim.inject("/general-settings*", status=403, message="Forbidden: this API key may not read it")
    found = await findings(client)
    skipped = [f for f in found if f.code == "guest_calls_unchecked"]
    assert len(skipped) == 1 and skipped[0].severity is Severity.INFO
    assert skipped[0].params["reason"] == "the API key may not read /api/v3/general-settings"
    assert "cdr_unchecked" not in codes(found)


def test_every_check_is_a_named_function_saying_what_it_finds_and_why():
    assert len({check.__name__ for check in CHECKS}) == len(CHECKS)
    assert all(check.__doc__ and len(check.__doc__.split()) >= 8 for check in CHECKS)


async def test_a_login_on_another_port_lands_on_the_first_accounts_route_an_error(client, sim):
    """Issue 13: separate contexts, no recipe. 847900's calls reach 847706's Sales queue."""
    second = await add_account(client, "847900", port=5080)
    await client.create_route(Route(rulename="847900", providerid=second.id, extension=DEMO_IVR_EXTENSION))
    found = await findings(client)
    error = next(f for f in found if f.code == "call_to_another_account")
    assert error.severity is Severity.ERROR and error.subject == "847900"
    assert error.params["route"] == 2 and error.params["owner"] == "847706" and error.fix == FixHost(ZADARMA)
    assert sim.simulate_call(ZADARMA, "847900")["destination"] == DEMO_QUEUE_EXTENSION  # what the trace says


async def test_a_did_of_a_bound_route_is_traced_too(client, sim):
    """A DID the provider sends (a phone) on a route bound to the second account of another port."""
    second = await add_account(client, "847900", port=5080)
    await client.create_route(
        Route(rulename="phone", number="+74952293042", providerid=second.id, extension=DEMO_IVR_EXTENSION)
    )
    found = await findings(client)
    rejected = next(f for f in found if f.subject == "+74952293042")
    # identified as 847706, whose own context has no `+7…` extension and `_X!` takes digits only
    assert (rejected.code, rejected.severity) == ("call_rejected", Severity.ERROR)
    assert sim.simulate_call(ZADARMA, "+74952293042")["outcome"] == "not_found"
