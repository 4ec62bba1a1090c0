"""Trace against the simulator's own dialplan model: for each setup, the bot's
explanation must end where `/sandbox/calls:simulate` says the call ends."""

from __future__ import annotations

import pytest

from bot.plans.snapshot import SnapshotReader
from bot.routing.trace import trace
from bot.text.i18n import t
from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION

ZADARMA = "sip.zadarma.com"
RECIPE = "[endpoint]\ncontext=public-direct-dial"
SECOND = "SIP-TRUNK-FFFFFFFF"  # sorts after the demo account: identify picks the demo one


async def traced(client, sim, login: str):
    snapshot = await SnapshotReader(client).read(number=login)
    result = trace(snapshot, login, default=await client.default_route())
    call = sim.simulate_call(ZADARMA, login)
    expected = {"dial": "dial", "default": "default", "not_found": "not_found"}[call["outcome"]]
    assert result.outcome == expected, (result, call)
    assert result.destination == call["destination"] or call["outcome"] == "not_found"
    assert result.context == call["context"]
    return result


async def second_account(
    client, *, port: int = 5060, attrs: str = "", route_to: str | None = DEMO_IVR_EXTENSION
):
    account = Provider(
        id=SECOND,
        description="Zadarma 847900",
        username="847900",
        host=ZADARMA,
        port=port,
        manualattributes=attrs,
    )
    await client.create_provider(account, secret="pw")
    if route_to:
        await client.create_route(Route(rulename="847900", providerid=SECOND, extension=route_to))


async def test_a_lone_account(client, sim):
    result = await traced(client, sim, "847706")
    assert not result.collision and result.destination == DEMO_QUEUE_EXTENSION
    assert [line.key for line in result.lines] == ["account", "identify", "context_own", "route"]


async def test_the_collision_on_another_port_sends_the_call_to_the_wrong_routes(client, sim):
    await second_account(client, port=5080)
    result = await traced(client, sim, "847900")
    assert result.collision and result.endpoint.id == DEMO_PROVIDER_ID
    assert result.destination == DEMO_QUEUE_EXTENSION  # wanted: the IVR
    text = "\n".join(t(f"trace.{line.key}", "en", **line.params) for line in result.lines)
    assert "every call from this host is bound to 847706" in text


async def test_a_shared_host_port_context_dispatches_by_login(client, sim):
    await second_account(client)
    result = await traced(client, sim, "847900")
    assert (
        result.collision and result.context.endswith("-incoming") and result.destination == DEMO_IVR_EXTENSION
    )


async def test_the_recipe_routes_by_did_and_a_missing_route_is_a_404(client, sim):
    await second_account(client, attrs=RECIPE, route_to=None)
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": RECIPE})
    await client.patch_route(2, {"number": "847706"}, providerid=None)
    result = await traced(client, sim, "847900")
    assert result.outcome == "not_found" and result.context == "public-direct-dial"
    await client.create_route(Route(rulename="847900", number="847900", extension=DEMO_IVR_EXTENSION))
    assert (await traced(client, sim, "847900")).destination == DEMO_IVR_EXTENSION
    assert (await traced(client, sim, "847706")).destination == DEMO_QUEUE_EXTENSION


async def test_no_route_falls_to_the_default_route(client, sim):
    await client.delete_route(2)
    result = await traced(client, sim, "847706")
    assert result.outcome == "default"


@pytest.mark.parametrize("lang", ["ru", "en"])
async def test_an_unknown_number(client, lang):
    snapshot = await SnapshotReader(client).read(number="999999")
    result = trace(snapshot, "999999")
    assert result.outcome == "no_account"
    assert "999999" in t(f"trace.{result.lines[0].key}", lang, **result.lines[0].params)


def lines_text(result, lang="en") -> str:
    return "\n".join(t(f"trace.{line.key}", lang, **line.params) for line in result.lines)


@pytest.mark.parametrize("port", [5060, 5080], ids=["shared context", "separate contexts"])
async def test_the_collision_and_the_recipe_in_both_context_modes(client, sim, port):
    await second_account(client, port=port)
    before = await traced(client, sim, "847900")
    assert before.collision
    if port == 5060:  # right, but only thanks to the shared host:port context
        assert before.destination == DEMO_IVR_EXTENSION and "only while both accounts" in lines_text(before)
    else:  # the first account's own context: its catch-all takes 847900's call
        assert before.destination == DEMO_QUEUE_EXTENSION and "are not what decides" in lines_text(before)
    for pid in (DEMO_PROVIDER_ID, SECOND):
        await client.patch_provider(pid, {"manualattributes": RECIPE})
    await client.patch_route(2, {"number": "847706"}, providerid=None)
    await client.create_route(Route(rulename="847900", number="847900", extension=DEMO_IVR_EXTENSION))
    after = await traced(client, sim, "847900")
    assert after.collision and after.destination == DEMO_IVR_EXTENSION
    for lang in ("en", "ru"):
        assert "⚠️" not in lines_text(after, lang)  # calm: the account identify picks does not decide
    assert "does not decide where the call goes" in lines_text(after)


async def test_a_login_without_a_route_of_its_own_in_a_shared_context_gets_the_default(client, sim):
    await second_account(client, route_to=None)  # 847900: no empty-DID route of its own
    result = await traced(client, sim, "847900")
    assert result.outcome == "default" and result.route is None  # not the demo account's catch-all
