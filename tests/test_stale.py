"""The stale check covers what the plan depends on, and only that.

Each plan records its dependencies (the accounts and routes it writes, the
accounts whose settings it copies, the logins and DIDs it claims, the host's
accounts as the recipe counts them, its destinations); the executor re-reads
exactly those before writing. A change to one of them makes the plan stale and
nothing is written; a change elsewhere (another login's account or route, on the
same host or another) leaves it valid. Plans are proposed and applied against
the simulator over HTTP; the changes in between are made as an admin would, in
the web interface (over the API) or by editing what the PBX holds."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import PolicySettings
from bot.plans.changes import Actor, PbxHandle
from bot.plans.commands import FixHost, parse
from bot.plans.executor import ApplyStatus, Executor
from bot.plans.planner import Plan, plan_fix_host, plan_undo
from bot.plans.service import Changes
from bot.plans.snapshot import Depends, SnapshotReader
from bot.plans.vault import Vault
from pbx.models import Provider, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION
from tests.test_executor import propose

ZADARMA = "sip.zadarma.com"
NOVOFON = "sip.novofon.ru"
OLGA, ANNA, BORIS = Actor(4, "olga"), Actor(2, "anna"), Actor(3, "boris")


def executor(client) -> Executor:
    return Executor(client, reload_wait=0, verify_timeout=5, verify_interval=0.05)


async def apply(client, plan: Plan, secrets: dict[str, str] | None = None) -> ApplyStatus:
    result = await executor(client).apply(
        plan, secrets or {login: "pw-" + login for login in plan.needs_secret}
    )
    assert result.status in (ApplyStatus.APPLIED, ApplyStatus.STALE), result.error
    return result.status


async def recipe_host(client) -> None:
    """847706 and 847900 on sip.zadarma.com under the recipe, as the bot leaves them."""
    assert (
        await apply(client, await propose(client, "/addnumber zadarma 847900 → IVR")) is ApplyStatus.APPLIED
    )


def route_of(sim, did: str) -> int:
    (route_id,) = [rid for rid, r in sim.state.routes.items() if r["number"] == did and not r["provider"]]
    return route_id


def account_of(sim, login: str) -> str:
    (pid,) = [pid for pid, p in sim.state.providers.items() if p["username"] == login]
    return pid


async def hand_made_account(client, login: str, host: str = ZADARMA, **fields: Any) -> Provider:
    return await client.create_provider(
        Provider(description=f"by hand {login}", username=login, host=host, **fields), secret="x"
    )


# ---------------------------------------------------------------------- what the PBX admin changes


async def ivr_deleted(sim, client):
    sim.state.ivr_menus.clear()


async def ivr_renamed(sim, client):
    sim.state.ivr_menus[0]["name"] = "Night menu"


async def ivr_number_given_to_an_employee(sim, client):
    sim.state.ivr_menus.clear()
    sim.state.employees.append(
        {
            "id": "9",
            "number": DEMO_IVR_EXTENSION,
            "user_username": "Ivan Desk",
            "user_email": "",
            "mobile_number": "",
        }
    )


async def sibling_context_removed(sim, client):
    await client.patch_provider(account_of(sim, "847900"), {"manualattributes": "[endpoint]\nset_var=A=1"})


async def sibling_attributes_extended(sim, client):
    attributes = "[endpoint]\ncontext=public-direct-dial\n\n[aor]\nmax_contacts=1"
    await client.patch_provider(account_of(sim, "847900"), {"manualattributes": attributes})


async def copied_account_edited(sim, client):
    await client.patch_provider(DEMO_PROVIDER_ID, {"dtmfmode": "inband"})


async def sibling_gets_a_bound_route(sim, client):
    await client.create_route(
        Route(rulename="by hand", providerid=account_of(sim, "847900"), extension="201")
    )


async def hand_made_account_on_the_host(sim, client):
    await hand_made_account(client, "847999")


async def new_login_taken_on_the_host(sim, client):
    await hand_made_account(client, "847901", manualattributes="[endpoint]\ncontext=public-direct-dial")


async def new_login_taken_as_a_did(sim, client):
    await client.create_route(Route(rulename="by hand", number="847901", extension="203"))


async def written_account_edited(sim, client):
    await client.patch_provider(DEMO_PROVIDER_ID, {"description": "Zadarma main"})


async def migrated_route_edited(sim, client):
    await client.patch_route(2, {"extension": "203"}, providerid=DEMO_PROVIDER_ID)


async def another_login_rerouted(sim, client):
    await client.patch_route(route_of(sim, "847900"), {"extension": "203"}, providerid=None)


async def another_login_renamed(sim, client):
    await client.patch_provider(account_of(sim, "847900"), {"description": "Zadarma reception"})


async def another_login_on_another_host(sim, client):
    account = await hand_made_account(client, "0053248", host=NOVOFON)
    await client.create_route(Route(rulename="Novofon", providerid=account.id, extension="201"))


async def another_did_routed(sim, client):
    await client.create_route(Route(rulename="by hand", number="74951112233", extension="201"))


async def same_login_on_another_host(sim, client):
    await hand_made_account(client, "847901", host=NOVOFON)


async def another_queue_added(sim, client):
    sim.state.queues.append({"id": "QUEUE-2", "name": "Support", "extension": "2201", "strategy": "ringall"})


STALE_ON_A_RECIPE_HOST = [
    ivr_deleted,
    ivr_renamed,
    ivr_number_given_to_an_employee,
    sibling_context_removed,
    sibling_attributes_extended,
    copied_account_edited,
    sibling_gets_a_bound_route,
    hand_made_account_on_the_host,
    new_login_taken_on_the_host,
    new_login_taken_as_a_did,
]
VALID_ON_A_RECIPE_HOST = [
    another_login_rerouted,
    another_login_renamed,
    another_login_on_another_host,
    another_did_routed,
    same_login_on_another_host,
    another_queue_added,
]


@pytest.mark.parametrize("change", STALE_ON_A_RECIPE_HOST, ids=lambda f: f.__name__)
async def test_a_new_login_on_a_recipe_host_is_stale_when_what_it_relies_on_changed(sim, client, change):
    await recipe_host(client)
    plan = await propose(client, "/addnumber zadarma 847901 → IVR")
    assert [s.kind.value for s in plan.steps] == ["create_provider", "create_route"]
    await change(sim, client)
    sim.stats.clear()
    assert await apply(client, plan) is ApplyStatus.STALE
    assert sim.writes() == 0


@pytest.mark.parametrize("change", VALID_ON_A_RECIPE_HOST, ids=lambda f: f.__name__)
async def test_a_new_login_on_a_recipe_host_ignores_other_logins(sim, client, change):
    await recipe_host(client)
    plan = await propose(client, "/addnumber zadarma 847901 → IVR")
    await change(sim, client)
    assert await apply(client, plan) is ApplyStatus.APPLIED
    assert sim.simulate_call(ZADARMA, "847901")["destination"] == DEMO_IVR_EXTENSION


@pytest.mark.parametrize(
    "change",
    [
        ivr_number_given_to_an_employee,
        written_account_edited,
        migrated_route_edited,
        hand_made_account_on_the_host,
    ],
    ids=lambda f: f.__name__,
)
async def test_bringing_a_host_under_the_recipe_is_stale_when_its_records_changed(sim, client, change):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    assert [s.kind.value for s in plan.steps] == [
        "create_provider",
        "update_provider",
        "update_route",
        "create_route",
    ]
    await change(sim, client)
    sim.stats.clear()
    assert await apply(client, plan) is ApplyStatus.STALE
    assert sim.writes() == 0


async def test_the_first_login_on_a_host_is_stale_once_another_account_is_there(sim, client):
    plan = await propose(client, "/addnumber novofon 0053248 → Sales")
    assert [s.kind.value for s in plan.steps] == ["create_provider", "create_route"]  # no recipe: alone
    other = await propose(client, "/addnumber novofon 0053249 → 201")
    assert await apply(client, other) is ApplyStatus.APPLIED
    # two accounts on one host without the recipe would collide: the plan must be made again
    assert await apply(client, plan) is ApplyStatus.STALE


async def test_the_first_login_on_a_host_ignores_other_hosts_and_disabled_accounts(sim, client):
    plan = await propose(client, "/addnumber novofon 0053248 → Sales")
    await hand_made_account(client, "5550001", host="sip.example.net")
    await hand_made_account(client, "0053249", host=NOVOFON, disabled=True)
    assert await apply(client, plan) is ApplyStatus.APPLIED


# ---------------------------------------------------------------------- /route and /removenumber


async def test_a_route_plan_is_stale_when_its_route_or_destination_changed(sim, client):
    await recipe_host(client)
    plan = await propose(client, "/route 847900 → Sales")
    assert [s.kind.value for s in plan.steps] == ["update_route"]
    sim.state.queues[0]["name"] = "Sales (old)"
    assert await apply(client, plan) is ApplyStatus.STALE

    plan = await propose(client, "/route 847900 → Sales")
    await client.patch_route(route_of(sim, "847900"), {"timeout": 30}, providerid=None)
    assert await apply(client, plan) is ApplyStatus.STALE

    plan = await propose(client, "/route 847900 → Sales")
    await hand_made_account(client, "847900", host=NOVOFON)  # the login is now ambiguous
    assert await apply(client, plan) is ApplyStatus.STALE


async def test_a_route_plan_ignores_other_logins(sim, client):
    await recipe_host(client)
    plan = await propose(client, "/route 847900 → Sales")
    await client.patch_route(route_of(sim, "847706"), {"extension": "203"}, providerid=None)
    await another_login_on_another_host(sim, client)
    assert (
        await apply(client, await propose(client, "/addnumber zadarma 847901 → 202")) is ApplyStatus.APPLIED
    )
    assert await apply(client, plan) is ApplyStatus.APPLIED
    assert sim.simulate_call(ZADARMA, "847900")["destination"] == DEMO_QUEUE_EXTENSION


async def test_a_removal_is_stale_when_a_route_for_the_number_appeared(sim, client):
    await recipe_host(client)
    plan = await propose(client, "/removenumber 847900")
    await client.create_route(Route(rulename="by hand", number="847900", extension="203", priority=50))
    assert await apply(client, plan) is ApplyStatus.STALE

    plan = await propose(client, "/removenumber 847900")
    await client.create_route(Route(rulename="bound", providerid=account_of(sim, "847900"), extension="201"))
    assert await apply(client, plan) is ApplyStatus.STALE


async def test_a_removal_ignores_other_logins(sim, client):
    await recipe_host(client)
    plan = await propose(client, "/removenumber 847900")
    await another_did_routed(sim, client)
    await client.patch_route(route_of(sim, "847706"), {"extension": "203"}, providerid=None)
    assert await apply(client, plan) is ApplyStatus.APPLIED
    assert "847900" not in [p["username"] for p in sim.state.providers.values()]


# ---------------------------------------------------------------------- undo and the doctor's fix


async def test_an_undo_is_stale_when_a_record_it_reverts_changed(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    applied = await executor(client).apply(plan, {"847900": "pw"})
    undo = plan_undo(plan.steps, applied.results, await SnapshotReader(client).read(host=ZADARMA), pbx="demo")
    await another_did_routed(sim, client)  # unrelated: still valid
    again = plan_undo(
        plan.steps, applied.results, await SnapshotReader(client).read(host=ZADARMA), pbx="demo"
    )
    assert again.fingerprint == undo.fingerprint
    await client.patch_route(route_of(sim, "847900"), {"extension": "203"}, providerid=None)
    assert await apply(client, undo) is ApplyStatus.STALE


async def test_undoing_a_removal_is_stale_when_the_login_was_taken_again(sim, client):
    await hand_made_account(client, "5550001", host="sip.example.net")
    plan = await propose(client, "/removenumber 5550001")
    applied = await executor(client).apply(plan)
    undo = plan_undo(plan.steps, applied.results, await SnapshotReader(client).read(), pbx="demo")
    assert ["sip.example.net", "5550001"] in undo.summary["depends"]["logins"]
    await hand_made_account(client, "5550001", host="sip.example.net")
    assert await apply(client, undo, {"5550001": "p"}) is ApplyStatus.STALE


async def test_the_doctors_fix_counts_every_account_of_the_host(sim, client):
    await hand_made_account(client, "847707")
    snapshot = await SnapshotReader(client).read(host=ZADARMA)
    fix = plan_fix_host(FixHost(ZADARMA), snapshot)
    assert [s.kind.value for s in fix.steps][:2] == ["update_provider", "update_route"]
    await another_login_on_another_host(sim, client)
    assert (
        fix.fingerprint
        == plan_fix_host(FixHost(ZADARMA), await SnapshotReader(client).read(host=ZADARMA)).fingerprint
    )
    await hand_made_account(client, "847708")  # a third account the fix would leave without the context
    assert await apply(client, fix) is ApplyStatus.STALE


# ---------------------------------------------------------------------- what is stored


async def test_the_dependencies_are_stored_with_the_plan(sim, client):
    plan = await propose(client, "/addnumber zadarma 847900 → IVR")
    depends = plan.summary["depends"]
    assert depends["accounts"] == [DEMO_PROVIDER_ID] and depends["routes"] == [2]
    assert depends["logins"] == [[ZADARMA, "847900"]] and "847900" in depends["dids"]
    assert set(depends["destinations"]) == {DEMO_IVR_EXTENSION, DEMO_QUEUE_EXTENSION}
    assert depends["host"] == {"name": ZADARMA, "recipe": "[endpoint]\ncontext=public-direct-dial"}
    assert Depends.from_dict(depends) == plan.depends


async def test_a_plan_stored_without_dependencies_is_stale_never_applied_blind(sim, client):
    plan = await propose(client, "/route 847706 → IVR")
    del plan.summary["depends"]  # a plan proposed by an older release
    sim.stats.clear()
    assert await apply(client, plan) is ApplyStatus.STALE
    assert sim.writes() == 0


async def test_the_stale_check_reads_the_lists_and_the_accounts_the_plan_names(sim, client):
    await recipe_host(client)
    await hand_made_account(client, "5550001", host="sip.example.net")
    plan = await propose(client, "/route 847900 → Sales")
    sim.stats.clear()
    await executor(client).current_fingerprint(plan)
    # the three lists and the one account it relies on (never the host's other accounts)
    assert dict(sim.stats) == {
        "GET sip-providers": 1,
        "GET incoming-routes": 1,
        "GET extensions:getForSelect": 1,
        "GET sip-providers/{id}": 1,
    }


# ---------------------------------------------------------------------- end to end


def make_changes(store, client, tmp_path) -> Changes:
    settings = PolicySettings(admins=[1], approvers=[2, 3], operators=[4])
    handle = PbxHandle.of(client, reload_wait=0, verify_timeout=5, verify_interval=0.05)
    return Changes(store, settings, Vault.from_file(tmp_path / "secret.key"), {"demo": handle})


async def test_two_new_logins_on_a_recipe_host_both_apply_without_a_new_version(store, sim, client, tmp_path):
    changes = make_changes(store, client, tmp_path)
    first = await changes.propose(
        OLGA, "demo", parse("/addnumber zadarma 847900 → IVR"), secrets={"847900": "a"}
    )
    await changes.approve(ANNA, first.row.id)
    assert (await changes.apply(ANNA, first.row.id)).row.status == "applied"

    texts = {"847901": "/addnumber zadarma 847901 → 201", "847902": "/addnumber zadarma 847902 → Sales"}
    rows = {}
    for login, text in texts.items():
        proposal = await changes.propose(OLGA, "demo", parse(text), secrets={login: "pw"}, command=text)
        assert changes.plan_of(proposal.row).depends == proposal.plan.depends  # stored and read back
        await changes.approve(ANNA, proposal.row.id)
        rows[login] = proposal.row
    for row in rows.values():
        outcome = await changes.apply(BORIS, row.id)
        assert (outcome.row.status, outcome.row.version, outcome.replacement) == ("applied", 1, None)
    expected = {
        "847706": DEMO_QUEUE_EXTENSION,
        "847900": DEMO_IVR_EXTENSION,
        "847901": "201",
        "847902": "2200",
    }
    assert {login: sim.simulate_call(ZADARMA, login)["destination"] for login in expected} == expected


async def test_a_destination_given_to_someone_else_makes_a_new_version_showing_it(
    store, sim, client, tmp_path
):
    changes = make_changes(store, client, tmp_path)
    text = f"/addnumber zadarma 847900 → {DEMO_IVR_EXTENSION}"
    proposal = await changes.propose(OLGA, "demo", parse(text), secrets={"847900": "a"}, command=text)
    assert proposal.row.summary["destination"] == "Main menu"
    await changes.approve(ANNA, proposal.row.id)
    await ivr_number_given_to_an_employee(sim, client)
    sim.stats.clear()
    outcome = await changes.apply(ANNA, proposal.row.id)
    assert outcome.row.status == "stale" and sim.writes() == 0
    new = outcome.replacement.row
    assert (new.version, new.status, new.summary["destination"]) == (2, "proposed", "Ivan Desk")
    assert "847900" not in [p["username"] for p in sim.state.providers.values()]


# ---------------------------------------------------------------------- reads begun ahead


async def test_the_stale_check_never_takes_lists_read_ahead_for_a_command(sim, client):
    """Lists read ahead for a command (handlers/access.py) and answered before it asked
    wait a few seconds for it. The stale check before a write is not that command: it
    reads what the PBX holds now, not what it held when a message came in (a command
    that then went to another PBX, or has not asked yet)."""
    import asyncio

    from pbx.base import reading_ahead

    await recipe_host(client)
    plan = await propose(client, "/route 847900 → Sales")
    token = reading_ahead.set(True)
    try:  # as SnapshotReader.read_ahead begins them
        lists = (client.list_providers, client.list_routes, client.destinations)
        begun = [asyncio.ensure_future(call()) for call in lists]
    finally:
        reading_ahead.reset(token)
    await asyncio.gather(*begun)  # answered: kept a while for the command
    sim.state.queues[0]["name"] = "Sales (old)"  # the admin renames the queue the plan routes to
    assert await apply(client, plan) is ApplyStatus.STALE
