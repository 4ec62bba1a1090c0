"""The executor against the simulator over HTTP: apply, stale, rollback at every
step, a timeout after a write that landed, undo. Calls are checked with the
simulator's dialplan model (`simulate_call`), as a test call on a real PBX would."""

from __future__ import annotations

import asyncio
import copy

import httpx
import pytest

from bot.errors import PlanError
from bot.plans.commands import parse
from bot.plans.executor import ApplyError, ApplyStatus, Executor
from bot.plans.planner import Plan, plan_add_number, plan_remove, plan_route, plan_undo
from bot.plans.snapshot import SnapshotReader
from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION
from tests.conftest import fast_client

ZADARMA = "sip.zadarma.com"
PASSWORD = "s3cret-847900"


def executor(client, **kwargs) -> Executor:
    options = {"reload_wait": 0, "verify_timeout": 5, "verify_interval": 0.05}
    return Executor(client, **{**options, **kwargs})


async def propose(client, text: str) -> Plan:
    intent = parse(text)
    reader = SnapshotReader(client)
    if hasattr(intent, "provider"):
        return plan_add_number(intent, await reader.read(host=intent.provider.host))
    snapshot = await reader.read(number=intent.number)
    return plan_route(intent, snapshot) if hasattr(intent, "destination") else plan_remove(intent, snapshot)


def pbx_records(sim) -> dict:
    """What the PBX holds that a plan may touch (ids included)."""
    state = copy.deepcopy(sim.state.dump())
    return {"providers": state["providers"], "routes": state["routes"]}


async def test_the_manual_case_lands_both_calls_right(sim, client):
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    result = await executor(client).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.APPLIED, result.error
    assert result.registration == {"847900": "registered", "847706": "registered"}

    async with httpx.AsyncClient(base_url=sim.url) as http:  # as a test call would: over HTTP
        for login, destination in (("847706", DEMO_QUEUE_EXTENSION), ("847900", DEMO_IVR_EXTENSION)):
            response = await http.post("/sandbox/calls:simulate", json={"host": ZADARMA, "to": login})
            call = response.json()["data"]
            assert (call["outcome"], call["destination"]) == ("dial", destination), call
            assert call["context"] == "public-direct-dial"
    new_id = result.results[0]["id"]
    assert sim.state.providers[new_id]["secret"] == PASSWORD


async def test_a_third_login_then_the_calls_of_all_three(sim, client):
    await executor(client).apply(await propose(client, "/addnumber zadarma 847900 → IVR"), {"847900": "a"})
    plan = await propose(client, "/addnumber zadarma 847901 → 202")
    assert [s.kind.value for s in plan.steps] == ["create_provider", "create_route"]
    assert (await executor(client).apply(plan, {"847901": "b"})).status is ApplyStatus.APPLIED
    expected = {"847706": DEMO_QUEUE_EXTENSION, "847900": DEMO_IVR_EXTENSION, "847901": "202"}
    assert {login: sim.simulate_call(ZADARMA, login)["destination"] for login in expected} == expected


async def test_a_plan_whose_records_changed_is_stale_and_writes_nothing(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": "[endpoint]\nset_var=A=1"})
    before = pbx_records(sim)
    sim.stats.clear()
    result = await executor(client).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.STALE and result.fingerprint != plan.fingerprint
    assert sim.writes() == 0 and pbx_records(sim) == before


async def test_a_route_for_another_number_leaves_the_plan_valid(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    await client.create_route(Route(rulename="other", number="74951112233", extension="201"))
    assert (await executor(client).apply(plan, {"847900": PASSWORD})).status is ApplyStatus.APPLIED


async def test_a_route_taking_the_new_login_as_did_makes_the_plan_stale(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    await client.create_route(Route(rulename="taken", number="847900", extension="201"))
    sim.stats.clear()
    assert (await executor(client).apply(plan, {"847900": PASSWORD})).status is ApplyStatus.STALE
    assert sim.writes() == 0


async def test_without_the_password_nothing_is_written(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    sim.stats.clear()
    with pytest.raises(ApplyError):
        await executor(client).apply(plan, {})
    assert sim.writes() == 0


WRITES = [
    ("POST", "/sip-providers"),
    ("PUT", "/sip-providers/*"),
    ("PUT", "/incoming-routes/*"),
    ("POST", "/incoming-routes"),
]


@pytest.mark.parametrize(("failing", "path"), list(enumerate(WRITES)))
async def test_a_failure_at_any_step_rolls_the_pbx_back(sim, client, failing, path):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    assert [(s.kind.value) for s in plan.steps] == [
        "create_provider",
        "update_provider",
        "update_route",
        "create_route",
    ]
    before = pbx_records(sim)
    method, glob = path
    sim.inject(glob, method=method, status=422, message="Simulated refusal")
    result = await executor(client).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.ROLLED_BACK and result.failed_step == failing
    assert "Simulated refusal" in result.error
    after = pbx_records(sim)
    assert after["routes"] == before["routes"]
    assert after["providers"] == before["providers"]
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION


async def test_a_rollback_that_fails_leaves_a_failed_plan_naming_the_records(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    sim.inject("/incoming-routes", method="POST", status=422)  # step 3 fails
    sim.inject("/sip-providers/*", method="DELETE", status=503, count=10)  # undoing step 0 fails
    result = await executor(client).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.FAILED
    (left,) = result.leftovers
    assert left.step == 0 and left.kind == "create_provider" and left.before is None
    assert left.state["username"] == "847900" and left.record == left.state["id"]
    assert left.record in sim.state.providers  # really left behind, and said so
    # the steps that could be undone were
    assert sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"] == ""


async def test_a_timeout_after_a_create_that_landed_makes_no_duplicate(sim):
    async with fast_client(sim.url, timeout=0.5, name="demo") as client:
        plan = await propose(client, "/addnumber zadarma 847900 → IVR")
        sim.inject("/sip-providers", method="POST", delay=2.0, when="after")
        sim.inject("/incoming-routes", method="POST", delay=2.0, when="after")
        result = await executor(client).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.APPLIED, result.error
    logins = [p["username"] for p in sim.state.providers.values()]
    assert logins.count("847900") == 1
    assert [r["number"] for r in sim.state.routes.values()].count("847900") == 1
    assert sim.simulate_call(ZADARMA, "847900")["destination"] == DEMO_IVR_EXTENSION


async def test_a_timeout_on_a_create_that_did_not_land_writes_it_once(sim):
    async with fast_client(sim.url, timeout=0.5, name="demo") as client:
        plan = await propose(client, "/addnumber novofon 0053248 → Sales")
        sim.inject("/sip-providers", method="POST", delay=2.0, when="before")
        result = await executor(client).apply(plan, {"0053248": PASSWORD})
    assert result.status is ApplyStatus.APPLIED, result.error
    assert [p["username"] for p in sim.state.providers.values()].count("0053248") == 1


async def test_undo_puts_the_pbx_back_and_refuses_when_records_drifted(sim, client):
    before = pbx_records(sim)
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    applied = await executor(client).apply(plan, {"847900": PASSWORD})
    snapshot = await SnapshotReader(client).read(host=plan.host)
    undo = plan_undo(plan.steps, applied.results, snapshot, pbx="demo")
    assert [s.kind.value for s in undo.steps] == [
        "delete_route",
        "update_route",
        "update_provider",
        "delete_provider",
    ]
    assert undo.needs_secret == []
    result = await executor(client).apply(undo)
    assert result.status is ApplyStatus.APPLIED, result.error
    assert pbx_records(sim) == before
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION

    # a second apply, then someone edits a record by hand: undo refuses to overwrite it
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    applied = await executor(client).apply(plan, {"847900": PASSWORD})
    await client.patch_route(2, {"extension": "203"}, providerid=None)
    snapshot = await SnapshotReader(client).read(host=plan.host)
    from bot.plans.planner import PlanError

    with pytest.raises(PlanError) as err:
        plan_undo(plan.steps, applied.results, snapshot, pbx="demo")
    assert err.value.code == "undo_drifted"


async def test_route_and_remove_plans(sim, client):
    await executor(client).apply(await propose(client, "/addnumber zadarma 847900 → IVR"), {"847900": "a"})
    plan = await propose(client, "/route 847900 → 201")
    assert [s.kind.value for s in plan.steps] == ["update_route"]
    assert (await executor(client).apply(plan)).status is ApplyStatus.APPLIED
    assert sim.simulate_call(ZADARMA, "847900")["destination"] == "201"
    assert (await propose(client, "/route 847900 → 201")).empty

    plan = await propose(client, "/removenumber 847900")
    assert [s.kind.value for s in plan.steps] == ["delete_route", "delete_provider"]
    assert "recipe_kept" in plan.notes
    assert (await executor(client).apply(plan)).status is ApplyStatus.APPLIED
    assert "847900" not in [p["username"] for p in sim.state.providers.values()]
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION


async def test_undo_of_a_removal_needs_the_password_again(sim, client):
    await client.create_provider(
        Provider(description="x", username="5550001", host="sip.example.net"), secret="p"
    )
    plan = await propose(client, "/removenumber 5550001")
    applied = await executor(client).apply(plan)
    snapshot = await SnapshotReader(client).read(host="sip.example.net")
    undo = plan_undo(plan.steps, applied.results, snapshot, pbx="demo")
    assert undo.needs_secret == ["5550001"]
    with pytest.raises(ApplyError):
        await executor(client).apply(undo)
    assert (await executor(client).apply(undo, {"5550001": "p2"})).status is ApplyStatus.APPLIED
    assert [p["secret"] for p in sim.state.providers.values() if p["username"] == "5550001"] == ["p2"]


async def test_two_reads_at_once_fetch_each_account_once_and_a_write_updates_the_mirror(sim, client):
    """Two commands at once read the host's accounts once (a read under way is
    joined); an apply that creates an account and edits its sibling makes the
    next read fetch only what it wrote, not the whole host again."""
    sim.latency = 0.05  # the two reads overlap
    reader = SnapshotReader(client)
    sim.stats.clear()
    first, second = await asyncio.gather(reader.read(host=ZADARMA), reader.read(host=ZADARMA))
    assert first.details.keys() == second.details.keys() == {DEMO_PROVIDER_ID}
    assert sim.stats["GET sip-providers/{id}"] == 1, sim.stats
    sim.latency = 0.0

    plan = plan_add_number(parse("/addnumber zadarma 847900 → IVR"), await reader.read(host=ZADARMA))
    result = await executor(client, reader=reader).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.APPLIED, result.error
    new_id = result.results[0]["id"]

    sim.stats.clear()
    again = await reader.read(host=ZADARMA)
    assert (
        again.details[DEMO_PROVIDER_ID].manualattributes
        == sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"]
    )
    assert new_id in again.details
    # the mirror holds what the PBX answered to the writes: neither account is read again
    assert sim.stats["GET sip-providers/{id}"] == 0, sim.stats
    sim.stats.clear()
    await reader.read(host=ZADARMA)
    assert sim.stats["GET sip-providers/{id}"] == 0, sim.stats

    # a second number on a host under the recipe only creates: the two kept accounts stay kept
    plan = plan_add_number(parse("/addnumber zadarma 847901 → IVR"), await reader.read(host=ZADARMA))
    assert [step.kind.value for step in plan.steps] == ["create_provider", "create_route"], plan.steps
    result = await executor(client, reader=reader).apply(plan, {"847901": PASSWORD})
    assert result.status is ApplyStatus.APPLIED, result.error
    sim.stats.clear()
    assert len((await reader.read(host=ZADARMA)).details) == 3
    assert sim.stats["GET sip-providers/{id}"] == 0, sim.stats  # the new one: mirrored from its answer


# ---------------------------------------------------------------------- /password


async def password_plan(client, login: str = "847706") -> Plan:
    from bot.plans.commands import ChangePassword
    from bot.plans.planner import plan_password

    return plan_password(ChangePassword(login), await SnapshotReader(client).read(number=login))


async def test_a_new_password_is_written_alone_and_judged_by_the_registration(sim, client):
    sim.issue_password(ZADARMA, "847706", "issued-847706")
    assert sim.state.registration(sim.state.providers[DEMO_PROVIDER_ID])["state"] == "rejected"
    plan = await password_plan(client)
    assert [s.kind.value for s in plan.steps] == ["set_secret"] and plan.needs_secret == ["847706"]
    with pytest.raises(ApplyError):
        await executor(client).apply(plan, {})
    before = pbx_records(sim)
    result = await executor(client).apply(plan, {"847706": "issued-847706"})
    assert result.status is ApplyStatus.APPLIED and result.registration == {"847706": "registered"}
    after = pbx_records(sim)
    assert after["providers"][DEMO_PROVIDER_ID].pop("secret") == "issued-847706"
    before["providers"][DEMO_PROVIDER_ID].pop("secret")
    assert after == before  # nothing but the password changed
    assert "secret" not in result.results[0]
    with pytest.raises(PlanError) as refused:  # the old password was never known: no undo
        plan_undo(plan.steps, result.results, await SnapshotReader(client).read(host=ZADARMA), pbx="demo")
    assert refused.value.code == "undo_password"


async def test_an_unclear_answer_to_a_password_write_writes_it_once_more(sim):
    async with fast_client(sim.url, retries=0) as client:
        plan = await password_plan(client)
        sim.inject("/sip-providers/*", method="PUT", status=502, when="after")
        result = await executor(client).apply(plan, {"847706": "second-try-1"})
        assert result.status is ApplyStatus.APPLIED, result.error
        assert sim.stats["PUT sip-providers/{id}"] == 2
        assert sim.state.providers[DEMO_PROVIDER_ID]["secret"] == "second-try-1"


async def test_a_password_write_still_unclear_is_left_over_as_unknown_never_called_undone(sim):
    async with fast_client(sim.url, retries=0) as client:
        plan = await password_plan(client)
        sim.inject("/sip-providers/*", method="PUT", status=502, when="after", count=2)
        result = await executor(client).apply(plan, {"847706": "maybe-saved-1"})
    assert result.status is ApplyStatus.FAILED and result.results == {}
    (left,) = result.leftovers
    assert left.now == "unknown" and "never shows a SIP password" in left.error
    # it had landed: "unknown" was the honest word, "rolled back" would have been wrong
    assert sim.state.providers[DEMO_PROVIDER_ID]["secret"] == "maybe-saved-1"


async def test_a_password_write_refused_before_the_save_is_rolled_back(sim, client):
    plan = await password_plan(client)
    sim.inject("/sip-providers/*", method="PUT", status=422)
    result = await executor(client).apply(plan, {"847706": "refused-1"})
    assert result.status is ApplyStatus.ROLLED_BACK and not result.leftovers
    assert sim.state.providers[DEMO_PROVIDER_ID]["secret"] == "demo-847706-secret"
