"""The change lifecycle end to end: storage (SQLite and PostgreSQL) + policy +
executor + the simulator over HTTP."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import PolicySettings
from bot.plans.changes import LOCAL_ADMIN, ChangeError, PbxHandle
from bot.plans.commands import parse, parse_csv
from bot.plans.service import Changes
from bot.plans.vault import Vault
from bot.text.render import error_text
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION
from storage.tables import utcnow
from tests import personas
from tests.personas import actor

# Anna administers, Boris and Gleb approve, Olga proposes, Viktor looks on, Mallory is nobody.
ANNA, BORIS, GLEB, OLGA, VIKTOR, STRANGER = (
    actor(p)
    for p in (personas.ANNA, personas.BORIS, personas.GLEB, personas.OLGA, personas.VIKTOR, personas.STRANGER)
)
PASSWORD = "Sip-Pa55-847900"
ZADARMA = "sip.zadarma.com"


class Clock:
    def __init__(self):
        self.now = utcnow()

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


def make_changes(store, client, clock, tmp_path, **policy) -> Changes:
    roles = personas.policy(personas.ANNA, personas.BORIS, personas.GLEB, personas.OLGA, personas.VIKTOR)
    settings = PolicySettings(**{**roles, **policy})
    handle = PbxHandle.of(client, reload_wait=0, verify_timeout=5, verify_interval=0.05)
    return Changes(store, settings, Vault.from_file(tmp_path / "secret.key"), {"demo": handle}, clock=clock)


@pytest.fixture
def changes(store, client, clock, tmp_path):
    return make_changes(store, client, clock, tmp_path)


async def propose(changes, actor, text, secrets=None):
    return await changes.propose(actor, "demo", parse(text), secrets=secrets, command=text)


def events(store, plan_id):
    return [e.event for e in store.audit.trail(plan_id=plan_id) if e.event != "api_call"]


async def test_propose_approve_apply_with_an_audit_trail(changes, store, sim):
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    row = proposal.row
    assert row.status == "proposed" and (proposal.tally.have, proposal.tally.need) == (0, 1)
    assert sim.writes() == 0

    row, tally = await changes.approve(BORIS, row.id)
    assert row.status == "approved" and tally.done
    outcome = await changes.apply(BORIS, row.id)
    assert outcome.row.status == "applied", outcome.row.outcome
    assert outcome.row.outcome["registration"] == {"847900": "registered", "847706": "registered"}
    assert sim.simulate_call(ZADARMA, "847900")["destination"] == DEMO_IVR_EXTENSION
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION

    trail = events(store, row.id)
    assert trail[:4] == ["proposed", "approval", "approved", "applying"]
    assert trail.count("step_applied") == 4 and trail[-2:] == ["verified", "applied"]
    calls = [e.detail for e in store.audit.trail(plan_id=row.id) if e.event == "api_call"]
    assert {"method": "POST", "path": "/sip-providers", "status": 201} in calls
    assert store.secrets.of(row.id) == {} and store.locks.holder("demo", ["847900"]) is None
    who = {e.event: e.actor_name for e in store.audit.trail(plan_id=row.id)}
    assert (who["proposed"], who["approval"], who["applying"]) == ("olga", "boris", "boris")


async def test_no_secret_reaches_audit_rows_logs_or_plans(changes, store, engine, caplog):
    caplog.set_level(logging.DEBUG)
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    await changes.apply(BORIS, proposal.row.id)
    dumped = json.dumps([e.model_dump(mode="json") for e in store.audit.trail()], ensure_ascii=False)
    dumped += json.dumps(store.plans.get(proposal.row.id).model_dump(mode="json"), ensure_ascii=False)
    assert PASSWORD not in dumped and PASSWORD not in caplog.text
    from sqlalchemy import text

    with engine.connect() as conn:
        for table in ("plans", "audit_events", "approvals", "locks", "secrets"):
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                assert PASSWORD not in str(row)


async def test_policy_roles_and_approval_counts(changes, store):
    with pytest.raises(ChangeError) as err:
        await propose(changes, VIKTOR, "/addnumber zadarma 847900 → IVR")
    assert err.value.code == "not_allowed"
    with pytest.raises(ChangeError):
        await propose(changes, STRANGER, "/addnumber zadarma 847900 → IVR")

    proposal = await propose(changes, BORIS, "/addnumber zadarma 847900 → IVR", {"847900": "x"})
    with pytest.raises(ChangeError) as err:
        await changes.approve(BORIS, proposal.row.id)
    assert err.value.code == "own_plan"
    with pytest.raises(ChangeError) as err:
        await changes.approve(OLGA, proposal.row.id)
    assert err.value.code == "not_approver"
    with pytest.raises(ChangeError) as err:
        await changes.apply(BORIS, proposal.row.id)
    assert err.value.code == "not_approved"
    await changes.cancel(BORIS, proposal.row.id)

    removal = await propose(changes, OLGA, "/removenumber 847706")
    row, tally = await changes.approve(BORIS, removal.row.id)
    assert row.status == "proposed" and (tally.have, tally.need) == (1, 2)
    with pytest.raises(ChangeError) as err:
        await changes.approve(BORIS, removal.row.id)
    assert err.value.code == "already_approved"
    row, tally = await changes.approve(GLEB, removal.row.id)
    assert row.status == "approved"
    assert "approval_refused" in events(store, removal.row.id)


async def test_a_one_admin_pbx_approves_its_own_plans(store, client, clock, tmp_path):
    changes = make_changes(store, client, clock, tmp_path, self_approve=True)
    proposal = await propose(changes, ANNA, "/route 847706 → IVR")
    row, tally = await changes.approve(ANNA, proposal.row.id)
    assert row.status == "approved" and tally.done
    assert (await changes.apply(ANNA, row.id)).row.status == "applied"


async def test_locks_name_the_holder_and_free_on_cancel(changes):
    first = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": "x"})
    with pytest.raises(ChangeError) as err:
        await propose(changes, OLGA, "/route 847706 → 201")
    assert err.value.code == "locked" and err.value.params["plan"] == first.row.id
    # who holds it, since when, and only the logins both plans want (847706: the recipe
    # rewrites the account 847706 as well; 847900 is not the second plan's)
    assert err.value.params["who"] == OLGA.name and err.value.params["logins"] == "847706"
    assert isinstance(err.value.params["since"], datetime)
    text = error_text(err.value, "en", tz=UTC)
    assert f"open plan {first.row.id} of {OLGA.name}, since " in text and "847900" not in text
    with pytest.raises(ChangeError) as err:
        await changes.cancel(GLEB, first.row.id)  # not his plan, not an admin
    assert err.value.code == "not_yours"
    await changes.cancel(ANNA, first.row.id)
    second = await propose(changes, OLGA, "/route 847706 → 201")
    assert second.row.status == "proposed"


async def test_a_stale_plan_is_replanned_never_applied_blind(changes, store, client, sim):
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    await client.patch_provider(DEMO_PROVIDER_ID, {"manualattributes": "[endpoint]\nset_var=A=1"})
    sim.stats.clear()
    outcome = await changes.apply(BORIS, proposal.row.id)
    assert outcome.row.status == "stale" and sim.writes() == 0
    new = outcome.replacement.row
    assert outcome.row.replaced_by == new.id and new.version == 2 and new.status == "proposed"
    assert new.proposer_id == OLGA.id
    assert store.secrets.of(proposal.row.id) == {} and list(store.secrets.of(new.id)) == ["847900"]
    with pytest.raises(ChangeError):
        await changes.approve(BORIS, proposal.row.id)  # approvals belong to one version
    await changes.approve(GLEB, new.id)
    assert (await changes.apply(GLEB, new.id)).row.status == "applied"
    attrs = sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"]
    assert attrs == "[endpoint]\nset_var=A=1\ncontext=public-direct-dial"


async def test_plans_expire_and_let_go_of_locks_and_secrets(changes, store, clock):
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    clock.now += timedelta(hours=23)
    assert await changes.expire() == []
    clock.now += timedelta(hours=2)
    (expired,) = await changes.expire()
    assert expired.id == proposal.row.id and expired.status == "expired"
    assert store.secrets.of(expired.id) == {} and store.locks.holder("demo", ["847900"]) is None
    with pytest.raises(ChangeError) as err:
        await changes.approve(BORIS, expired.id)
    assert err.value.code == "plan_closed"


async def test_approving_a_plan_past_its_expiry_expires_it(changes, clock):
    proposal = await propose(changes, OLGA, "/route 847706 → IVR")
    clock.now += timedelta(hours=25)
    with pytest.raises(ChangeError) as err:
        await changes.approve(BORIS, proposal.row.id)
    assert err.value.code == "expired"


async def test_undo_goes_through_approval_and_restores_the_pbx(changes, store, sim):
    before = json.dumps({k: sim.state.dump()[k] for k in ("providers", "routes")}, sort_keys=True)
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    await changes.apply(BORIS, proposal.row.id)

    undo = await changes.propose(OLGA, "demo", parse(f"/undo {proposal.row.id}"))
    assert undo.row.kind == "undo" and undo.row.undo_of == proposal.row.id and undo.row.status == "proposed"
    await changes.approve(GLEB, undo.row.id)
    assert (await changes.apply(GLEB, undo.row.id)).row.status == "applied"
    after = json.dumps({k: sim.state.dump()[k] for k in ("providers", "routes")}, sort_keys=True)
    assert after == before
    with pytest.raises(ChangeError) as err:
        await changes.undo(OLGA, undo.row.id + "0")
    assert err.value.code == "no_plan"


async def test_a_failed_step_ends_rolled_back_with_the_error(changes, sim):
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    sim.inject("/incoming-routes", method="POST", status=422, message="Simulated refusal")
    outcome = await changes.apply(BORIS, proposal.row.id)
    assert outcome.row.status == "rolled_back"
    assert outcome.row.outcome["failed_step"] == 3 and "Simulated refusal" in outcome.row.outcome["error"]
    assert [p["username"] for p in sim.state.providers.values()] == ["847706"]


async def test_an_empty_plan_stores_nothing(changes, store):
    proposal = await propose(changes, OLGA, f"/route 847706 → {DEMO_QUEUE_EXTENSION}")
    assert proposal.plan.empty and proposal.row is None
    assert store.plans.find() == []


async def test_a_csv_becomes_one_plan_and_the_passwords_stay_apart(changes, store, sim):
    intent, passwords = parse_csv("login,password,destination\n847900,p1,IVR\n847901,p2,201\n", "zadarma")
    proposal = await changes.propose(OLGA, "demo", intent, secrets=passwords, command="CSV")
    assert "p1" not in json.dumps(proposal.row.intent)
    await changes.approve(BORIS, proposal.row.id)
    assert (await changes.apply(BORIS, proposal.row.id)).row.status == "applied"
    for login, destination in (
        ("847706", DEMO_QUEUE_EXTENSION),
        ("847900", DEMO_IVR_EXTENSION),
        ("847901", "201"),
    ):
        assert sim.simulate_call(ZADARMA, login)["destination"] == destination


async def test_the_local_admin_applies_at_once_and_operators_cannot(changes):
    proposal = await propose(changes, LOCAL_ADMIN, "/route 847706 → IVR")
    with pytest.raises(ChangeError):
        await changes.apply(OLGA, proposal.row.id, at_once=True)
    outcome = await changes.apply(LOCAL_ADMIN, proposal.row.id, at_once=True)
    assert outcome.row.status == "applied"


async def test_a_plan_interrupted_mid_apply_is_rolled_back_once_its_lease_expires(changes, store, sim, clock):
    before = json.dumps({k: sim.state.dump()[k] for k in ("providers", "routes")}, sort_keys=True)
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    sim.inject("/incoming-routes/*", method="PUT", delay=30)  # step 3 hangs: the process "dies" there
    task = asyncio.create_task(changes.apply(BORIS, proposal.row.id))
    deadline = asyncio.get_running_loop().time() + 30
    while events(store, proposal.row.id).count("step_intent") < 3:
        assert asyncio.get_running_loop().time() < deadline, "the first two steps never landed"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.plans.get(proposal.row.id).status == "applying"
    assert await changes.recover() == []  # its lease holds: it may still be running elsewhere

    clock.now += changes.lease + timedelta(seconds=1)
    (recovered,) = await changes.recover()
    row = recovered.row
    assert recovered.whole and row.status == "rolled_back", row.outcome
    assert row.outcome["recovered"] == "rolled_back" and row.outcome["tried"] == 3
    assert row.card_stale  # the bot edits the card at its next housekeeping
    after = json.dumps({k: sim.state.dump()[k] for k in ("providers", "routes")}, sort_keys=True)
    assert after == before
    assert store.locks.holder("demo", ["847900"]) is None and store.secrets.of(row.id) == {}
    trail = events(store, row.id)
    assert trail.index("recovery_started") < trail.index("rolled_back")
    assert await changes.recover() == []  # whole: nothing left to do
    with pytest.raises(ChangeError):  # nothing to undo: the PBX is as it was
        await changes.undo(OLGA, row.id)


async def test_a_live_apply_is_never_recovered_and_every_step_landed_is_applied(
    changes, store, sim, clock, tmp_path
):
    """Another process's housekeeping while the apply runs leaves it alone; a plan
    whose process died after its last write is found applied, not undone."""
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    other = make_changes(store, changes.pbxs["demo"].client, clock, tmp_path)
    sim.inject("/incoming-routes", method="POST", delay=1.0)  # the last step takes a while
    task = asyncio.create_task(changes.apply(BORIS, proposal.row.id))
    deadline = asyncio.get_running_loop().time() + 30
    while events(store, proposal.row.id).count("step_intent") < 4:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert await other.recover() == []  # the lease is alive
    assert (await task).row.status == "applied"

    # a plan whose process died after its last write: every step stands as planned
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847901 → 201", {"847901": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    done = await changes.apply(BORIS, proposal.row.id)
    store.plans.update(done.row.id, status="applying", lease_owner="gone:1:x", lease_until=clock.now)
    clock.now += timedelta(seconds=1)
    (recovered,) = await other.recover()
    assert recovered.row.status == "applied" and recovered.row.outcome["recovered"] == "applied"
    assert sim.simulate_call(ZADARMA, "847901")["destination"] == "201"


async def test_the_core_edge_refuses_a_password_that_would_add_pbx_config(changes, store, sim):
    """propose(secrets=) and add_secret run bot/plans/validate.py: chat, CSV and CLI alike."""
    bad = "pw1\n[SIP-TRUNK-1](+)\ncontext=internal"
    calls = sum(sim.stats.values())
    with pytest.raises(ChangeError) as err:
        await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": bad})
    assert err.value.code == "password_control" and bad not in str(err.value)
    assert not store.plans.find(limit=10)  # refused before the PBX is read or a plan stored
    assert sum(sim.stats.values()) == calls
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR")
    for password, code in (
        (bad, "password_control"),
        ("s3c;ret", "password_semicolon"),
        ("", "password_empty"),
    ):
        with pytest.raises(ChangeError) as err:
            await changes.add_secret(OLGA, proposal.row.id, "847900", password)
        assert err.value.code == code
    assert await changes.missing_secrets(store.plans.get(proposal.row.id)) == ["847900"]
    await changes.add_secret(OLGA, proposal.row.id, "847900", PASSWORD)
    assert await changes.missing_secrets(store.plans.get(proposal.row.id)) == []


async def test_a_failed_plan_names_its_leftovers_and_undo_finishes_it(changes, store, sim):
    """Step 3 lands, step 4 is refused, and the PBX then refuses to put step 3
    back: the plan ends failed naming route 2 as the plan left it; once the PBX
    takes writes again, /undo brings it back to exactly as before."""
    before = json.dumps({k: sim.state.dump()[k] for k in ("providers", "routes")}, sort_keys=True)
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    await changes.approve(BORIS, proposal.row.id)
    sim.inject("/incoming-routes", method="POST", status=422, count=2)
    sim.inject("/incoming-routes/*", method="PUT", status=403, count=3, skip=1)
    outcome = await changes.apply(BORIS, proposal.row.id)
    row = outcome.row
    assert row.status == "failed"
    (left,) = row.outcome["leftovers"]
    assert (left["step"], left["record"], left["now"]) == (2, "2", "as_planned")
    assert row.results == {"2": left["state"]}
    sim.faults.clear()
    undo = await changes.undo(OLGA, row.id)
    assert [s.kind.value for s in undo.plan.steps] == ["update_route"]
    await changes.approve(GLEB, undo.row.id)
    assert (await changes.apply(GLEB, undo.row.id)).row.status == "applied"
    after = json.dumps({k: sim.state.dump()[k] for k in ("providers", "routes")}, sort_keys=True)
    assert after == before


async def test_the_core_says_what_happens_next(changes, store, sim):
    from bot.plans.changes import Next

    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR")
    row = proposal.row
    assert await changes.next_step(row) is Next.NEED_SECRET  # the password first, in private
    await changes.add_secret(OLGA, row.id, "847900", PASSWORD)
    row = store.plans.get(row.id)
    assert await changes.next_step(row) is Next.WAIT_APPROVALS
    row, _ = await changes.approve(BORIS, row.id)
    assert await changes.next_step(row) is Next.APPLY
    outcome = await changes.apply(BORIS, row.id)
    assert await changes.next_step(outcome.row) is Next.ENDED


async def test_recipe_when_needed_on_a_shared_context_routes_every_login_right(
    store, client, clock, sim, tmp_path
):
    """Applied for real: the new account joins MikoPBX's shared host:port context with a
    route of its own, and each of the three logins still reaches its own destination."""
    from pbx.models import Provider, Route

    second = await client.create_provider(
        Provider(description="Zadarma 847800", username="847800", host="sip.zadarma.com"), secret="pw"
    )
    await client.create_route(Route(rulename="847800", providerid=second.id, extension="201"))
    changes = make_changes(store, client, clock, tmp_path)
    changes.lifecycle.recipe_when = "needed"
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    assert proposal.plan.notes == ["shared_context_kept"] and len(proposal.plan.steps) == 2
    await changes.approve(BORIS, proposal.row.id)
    assert (await changes.apply(BORIS, proposal.row.id)).row.status == "applied"
    ends = {
        to: sim.simulate_call("sip.zadarma.com", to)["destination"] for to in ("847706", "847800", "847900")
    }
    assert ends == {"847706": DEMO_QUEUE_EXTENSION, "847800": "201", "847900": DEMO_IVR_EXTENSION}


async def test_each_kind_of_work_takes_its_place_in_the_pbx_budget(changes, client):
    """An admin's proposal reads at COMMAND, an approved apply at APPLY, the doctor at
    REPORT: the shared budget serves them in that order when they wait together."""
    from bot.plans.snapshot import SnapshotReader
    from bot.routing.doctor import examine
    from pbx.budget import Priority, current_priority

    seen: list[tuple[str, Priority]] = []
    client.listeners.append(lambda record: seen.append((record.method, current_priority())))
    proposal = await propose(changes, OLGA, "/addnumber zadarma 847900 → IVR", {"847900": PASSWORD})
    assert {p for _, p in seen} == {Priority.COMMAND}
    await changes.approve(BORIS, proposal.row.id)
    seen.clear()
    assert (await changes.apply(BORIS, proposal.row.id)).row.status == "applied"
    assert {p for _, p in seen} == {Priority.APPLY} and any(m != "GET" for m, _ in seen)
    seen.clear()
    await examine(client, SnapshotReader(client))
    assert seen and {p for _, p in seen} == {Priority.REPORT}
    assert current_priority() is Priority.COMMAND  # nothing leaks out of them


async def test_recipe_when_needed_keeps_the_recipe_for_a_phone_on_a_shared_context(
    store, client, clock, sim, tmp_path
):
    """A phone's calls carry the phone as their DID: the shared host:port context has no
    extension for it and would send them to the first account's routes (Sales). The plan
    keeps the recipe, says why, and the phone reaches the IVR."""
    from pbx.models import Provider, Route

    second = await client.create_provider(
        Provider(description="Zadarma 847800", username="847800", host="sip.zadarma.com"), secret="pw"
    )
    await client.create_route(Route(rulename="847800", providerid=second.id, extension="201"))
    changes = make_changes(store, client, clock, tmp_path)
    changes.lifecycle.recipe_when = "needed"
    text = "/addnumber zadarma 847900 +7 495 123-45-67 → IVR"
    proposal = await propose(changes, OLGA, text, {"847900": PASSWORD})
    assert proposal.plan.notes[:2] == ["shared_context_phone", "recipe_applied"]
    await changes.approve(BORIS, proposal.row.id)
    assert (await changes.apply(BORIS, proposal.row.id)).row.status == "applied"
    numbers = ("847706", "847800", "847900", "74951234567")
    ends = {to: sim.simulate_call("sip.zadarma.com", to)["destination"] for to in numbers}
    assert ends == {
        "847706": DEMO_QUEUE_EXTENSION,
        "847800": "201",
        "847900": DEMO_IVR_EXTENSION,
        "74951234567": DEMO_IVR_EXTENSION,
    }
