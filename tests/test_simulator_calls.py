"""The problem from the MikoPBX manual, in the simulator, over HTTP.

Two Zadarma accounts, 847706 and 847900, on sip.zadarma.com: both identify
sections match the host every call comes from, so identify binds every call to
one account. The recipe (both accounts with `[endpoint]` context=public-direct-dial,
"any provider" routes DID = login) sends each call to its own destination.
"""

from __future__ import annotations

import httpx
import pytest

from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION

RECIPE = "[endpoint]\ncontext=public-direct-dial"
HOST = "sip.zadarma.com"


async def call(sim, to: str, host: str = HOST) -> dict:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.post(
            "/sandbox/calls:simulate", json={"host": host, "to": to, "from": "+74951234567"}
        )
    body = response.json()
    assert response.status_code == 200 and body["result"] is True
    return body["data"]


async def add_second_account(client, *, port: int = 5060) -> Provider:
    """847900 with its own provider-bound route to the IVR, as an admin would add it by hand."""
    account = await client.create_provider(
        Provider(description="Zadarma 847900", username="847900", host=HOST, port=port, transport="udp"),
        secret="pw-847900",
    )
    await client.create_route(
        Route(rulename="847900 → IVR", providerid=account.id, extension=DEMO_IVR_EXTENSION)
    )
    return account


def first_identify(*ids: str) -> str:
    return min(ids)  # identify objects are tried in id order


async def apply_recipe(client, *accounts: str) -> None:
    for provider_id in accounts:
        provider = await client.get_provider(provider_id)
        provider.manualattributes = RECIPE
        await client.update_provider(provider)
    for route in await client.list_routes():
        await client.delete_route(route.id)
    await client.create_route(Route(rulename="847706", number="847706", extension=DEMO_QUEUE_EXTENSION))
    await client.create_route(Route(rulename="847900", number="847900", extension=DEMO_IVR_EXTENSION))


async def test_one_account_gets_its_calls(sim):
    result = await call(sim, "847706")
    assert result["endpoint"] == DEMO_PROVIDER_ID
    assert result["context"] == f"{DEMO_PROVIDER_ID}-incoming"
    assert (result["outcome"], result["route_id"], result["destination"]) == ("dial", 2, DEMO_QUEUE_EXTENSION)


async def test_different_host_port_one_login_misses_its_route(sim, client):
    second = await add_second_account(client, port=5080)
    winner = first_identify(DEMO_PROVIDER_ID, second.id)
    to_a, to_b = await call(sim, "847706"), await call(sim, "847900")

    # identify binds every call to one account, whose own context is entered
    assert to_a["endpoint"] == to_b["endpoint"] == winner
    assert to_a["context"] == to_b["context"] == f"{winner}-incoming"
    destinations = {to_a["destination"], to_b["destination"]}
    # both calls run the winner's catch-all route: one login misses its own
    assert len(destinations) == 1
    wanted = {"847706": DEMO_QUEUE_EXTENSION, "847900": DEMO_IVR_EXTENSION}
    missed = [
        login
        for login, result in (("847706", to_a), ("847900", to_b))
        if result["destination"] != wanted[login]
    ]
    assert len(missed) == 1


async def test_same_host_port_reaches_the_route_but_is_attributed_to_one_account(sim, client):
    second = await add_second_account(client)
    winner = first_identify(DEMO_PROVIDER_ID, second.id)
    to_a, to_b = await call(sim, "847706"), await call(sim, "847900")

    assert to_a["context"] == to_b["context"] == "sipzadarmacom5060-incoming"
    assert to_a["destination"] == DEMO_QUEUE_EXTENSION and to_a["extension"] == "847706"
    assert to_b["destination"] == DEMO_IVR_EXTENSION and to_b["extension"] == "847900"
    # ...but the call to 847900 is still the winner's call, in CDR too
    assert to_a["endpoint"] == to_b["endpoint"] == winner
    records = (await client.cdr(did="847900")).records
    assert [r.from_account for r in records] == [winner]


@pytest.mark.parametrize("port", [5060, 5080], ids=["shared-context", "separate-contexts"])
async def test_after_the_recipe_each_call_reaches_its_destination(sim, client, port):
    second = await add_second_account(client, port=port)
    await apply_recipe(client, DEMO_PROVIDER_ID, second.id)

    to_a, to_b = await call(sim, "847706"), await call(sim, "847900")
    assert to_a["context"] == to_b["context"] == "public-direct-dial"
    assert (to_a["outcome"], to_a["destination"]) == ("dial", DEMO_QUEUE_EXTENSION)
    assert (to_b["outcome"], to_b["destination"]) == ("dial", DEMO_IVR_EXTENSION)

    # a login with no "any provider" route: 404 in public-direct-dial (fail2ban counts these)
    stray = await call(sim, "847999")
    assert stray["outcome"] == "not_found" and stray["route_id"] is None
    assert "public-direct-dial" in stray["reason"]


async def test_recipe_on_one_account_only_leaves_the_other_half_done(sim, client):
    second = await add_second_account(client)
    provider = await client.get_provider(second.id)
    provider.manualattributes = RECIPE
    await client.update_provider(provider)
    winner = first_identify(DEMO_PROVIDER_ID, second.id)
    result = await call(sim, "847900")
    if winner == second.id:
        # the overridden endpoint wins: no "any" route yet, so the call is lost
        assert result["context"] == "public-direct-dial" and result["outcome"] == "not_found"
    else:
        assert result["context"] == "sipzadarmacom5060-incoming"


async def test_unknown_source_host_finds_no_endpoint(sim):
    result = await call(sim, "847706", host="sip.example.com")
    assert result["endpoint"] is None and result["outcome"] == "not_found"


async def test_disabled_account_takes_no_calls(sim, client):
    sim.state.set_provider_disabled(DEMO_PROVIDER_ID, True)
    assert (await call(sim, "847706"))["endpoint"] is None


async def test_calls_simulate_checks_its_input(sim):
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.post("/sandbox/calls:simulate", json={"to": "1"})
    assert response.status_code == 422
    assert response.json()["messages"]["error"] == ["host is required"]
