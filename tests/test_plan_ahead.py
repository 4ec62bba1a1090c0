"""Planning while the lists are read (SnapshotReader.read_then): the plan is always
the one on the snapshot read. Made on the mirror's snapshot while the 3 list calls are
on the wire, it is kept only when the lists come back as they were and nothing kept
changed meanwhile; otherwise it is made again on what was read."""

from __future__ import annotations

import asyncio

import pytest

from bot.plans.commands import parse
from bot.plans.planner import Plan, PlanError, plan_add_number
from bot.plans.snapshot import Snapshot, SnapshotReader
from pbx.base import call_written
from pbx.models import ProviderSummary
from sandbox.demo import DEMO_PROVIDER_ID
from storage.aio import AsyncRepos
from storage.repos import Repos
from tests.test_mirror import ZADARMA, grow


class Planner:
    """`work` for read_then: plans /addnumber, and keeps every snapshot it was given."""

    def __init__(self, text: str):
        self.intent = parse(text)
        self.seen: list[Snapshot] = []

    def __call__(self, snapshot: Snapshot) -> Plan:
        self.seen.append(snapshot)
        return plan_add_number(self.intent, snapshot)


async def warm(sim, client, engine, accounts: int = 20) -> SnapshotReader:
    grow(sim, accounts)
    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    await reader.read(host=ZADARMA)  # details into the mirror
    await reader.read(host=ZADARMA)  # the lists compared with nothing fetched since: a guess may be made
    sim.stats.clear()
    return reader


async def test_a_plan_made_while_the_lists_are_read_is_the_plan_on_the_snapshot_read(sim, client, engine):
    reader = await warm(sim, client, engine)
    work = Planner("/addnumber zadarma 847900 → IVR")
    snapshot, plan = await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 1 and work.seen[0] is snapshot  # made once, ahead of the answers
    assert sim.reads() == 3, sim.stats  # the lists, nothing else
    read = await SnapshotReader(client).read(host=ZADARMA)  # a reader with no mirror: all from the PBX
    planned = plan_add_number(work.intent, read)
    assert plan.fingerprint == planned.fingerprint
    assert [s.to_dict() for s in plan.steps] == [s.to_dict() for s in planned.steps]


async def test_a_route_edited_by_hand_meanwhile_is_planned_on(sim, client, engine):
    """The mirror holds the route as it was; the PBX lists it edited: the plan made
    ahead is dropped and the plan is made on the lists read."""
    reader = await warm(sim, client, engine)
    route = next(r for r in sim.state.routes.values() if r.get("provider") == DEMO_PROVIDER_ID)
    route["extension"] = "201"
    work = Planner("/addnumber zadarma 847900 → IVR")
    snapshot, plan = await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 2 and work.seen[-1] is snapshot
    assert {r.id: r.extension for r in snapshot.routes}[route["id"]] == "201"
    assert {r.id: r.extension for r in work.seen[0].routes}[route["id"]] != "201"
    moved = [s for s in plan.steps if s.target == str(route["id"])]
    assert moved and all(s.before["extension"] == "201" for s in moved)


async def test_a_refusal_made_ahead_stands_only_if_the_pbx_still_says_so(sim, client, engine):
    reader = await warm(sim, client, engine)
    # the mirror knows login 900003; someone removes its account by hand: the PBX now lets it be added
    gone = next(pid for pid, p in sim.state.providers.items() if p["username"] == "900003")
    del sim.state.providers[gone]
    work = Planner("/addnumber zadarma 900003 → IVR")
    snapshot, plan = await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 2 and plan.summary["logins"] == ["900003"]
    assert gone not in {p.id for p in snapshot.providers}

    # and where the PBX still has the login, the refusal made ahead is the answer, made once
    work = Planner("/addnumber zadarma 900004 → IVR")
    with pytest.raises(PlanError) as refused:
        await reader.read_then(work, host=ZADARMA)
    assert refused.value.code == "login_exists" and len(work.seen) == 1


async def test_anything_kept_that_changes_meanwhile_voids_the_plan_made_ahead(sim, client, engine):
    """The lists come back as they were, but the mirror changed while they were read
    (here: the reader forgets an account, as after a write of unknown outcome)."""
    reader = await warm(sim, client, engine)
    forgotten = next(pid for pid, p in sim.state.providers.items() if p["username"] == "900002")
    work = Planner("/addnumber zadarma 847900 → IVR")
    landing: list[asyncio.Future[None]] = []

    def forgetting(snapshot: Snapshot) -> Plan:
        if not work.seen:  # the first time: a change lands while the answers are awaited
            landing.append(asyncio.ensure_future(reader.forget([forgotten])))
        return work(snapshot)

    snapshot, _ = await reader.read_then(forgetting, host=ZADARMA)
    await asyncio.gather(*landing)
    assert len(work.seen) == 2 and work.seen[-1] is snapshot
    assert snapshot.details[forgotten].username == "900002"  # read again from the PBX
    assert sim.stats["GET sip-providers/{id}"] == 1


async def test_with_nothing_mirrored_the_plan_is_made_once_on_the_read(sim, client, engine):
    grow(sim, 5)
    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    work = Planner("/addnumber zadarma 847900 → IVR")
    snapshot, _ = await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 1 and work.seen[0] is snapshot and len(snapshot.details) == 6


async def test_the_client_tells_when_each_call_is_written(client):
    """Once a call, after its request is written; a read joining one under way is told at once."""
    told: list[str] = []
    token = call_written.set(lambda: told.append("written"))
    try:
        await client.list_routes()
        assert told == ["written"]
        told.clear()
        await asyncio.gather(client.list_routes(), client.list_routes())  # one request, two callers
        assert told == ["written", "written"]
    finally:
        call_written.reset(token)
    await client.list_routes()
    assert len(told) == 2  # nobody asked this time


async def test_reads_ahead_leave_one_after_another_the_route_list_first(client, monkeypatch):
    """Three at once would take turns on the loop: the first request would leave when the
    last does. Each leaves once the one before is written; the slowest answer first, the
    short destination list next (taken in before the long ones, not after them)."""
    import pbx.mikopbx as mikopbx

    steps: list[str] = []
    exchange, trace = client._exchange, mikopbx._written_trace

    async def begun(method, path, *args, **kwargs):
        steps.append(f"begin {path}")
        return await exchange(method, path, *args, **kwargs)

    def noted(written):
        def told() -> None:
            steps.append("written")
            if written is not None:
                written()

        return trace(told)

    monkeypatch.setattr(client, "_exchange", begun)
    monkeypatch.setattr(mikopbx, "_written_trace", noted)
    written = SnapshotReader(client).read_ahead()
    await asyncio.wait_for(written.wait(), 30)
    assert steps == [
        "begin /incoming-routes",
        "written",
        "begin /extensions:getForSelect",
        "written",
        "begin /sip-providers",
        "written",
    ]


async def test_the_refreshers_reread_of_unchanged_accounts_keeps_the_plan_made_ahead(sim, client, engine):
    """A big PBX's refresher re-reads details all the time; the same settings read again
    change nothing a plan reads, a hand edit of extra parameters does."""
    reader = await warm(sim, client, engine)
    await reader.refresh(10)  # re-reads 10 unchanged accounts (and compares the lists)
    work = Planner("/addnumber zadarma 847900 → IVR")
    await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 1

    edited = next(pid for pid, p in sim.state.providers.items() if p["username"] == "900001")
    sim.state.providers[edited]["manualattributes"] = "[endpoint]\ncontext=by-hand"
    await reader.refresh(100)  # the edit found (drift) after the lists compared: the mirror moved on
    work = Planner("/addnumber zadarma 847901 → IVR")
    snapshot, _ = await reader.read_then(work, host=ZADARMA)
    assert work.seen == [snapshot]  # planned once, on the read: the mirror had moved since the lists
    assert snapshot.details[edited].manualattributes == "[endpoint]\ncontext=by-hand"


async def test_lists_parsed_anew_but_equal_are_compared_by_identity_after(sim, client, engine, monkeypatch):
    """An answer whose bytes move while what it says does not (a field the bot does not
    read) is parsed anew: the plan made ahead still stands, and from then on the lists
    are compared by identity, not model by model (2,000 models: ~2.5 ms a command)."""
    reader = await warm(sim, client, engine, accounts=60)  # lists long enough to be kept parsed
    listed = sim.state.provider_list_item
    monkeypatch.setattr(sim.state, "provider_list_item", lambda r: {**listed(r), "statusClass": "moved"})
    work = Planner("/addnumber zadarma 847900 → IVR")
    await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 1  # equal: the plan made ahead stands

    compared = [0]
    equal = ProviderSummary.__eq__

    def counting(self: ProviderSummary, other: object) -> bool:
        compared[0] += 1
        return equal(self, other)

    monkeypatch.setattr(ProviderSummary, "__eq__", counting)
    work = Planner("/addnumber zadarma 847901 → IVR")
    await reader.read_then(work, host=ZADARMA)
    assert len(work.seen) == 1 and compared[0] == 0


async def test_a_command_that_asks_before_its_reads_ahead_leave_keeps_nothing_for_the_next(
    sim, client, engine
):
    """The budget holds the reads ahead past the 20 ms a command waits: the command's
    lists leave first, its reads ahead join them late. Nothing is kept for a command still
    to come: the next one reads, and sees the account added by hand meanwhile."""
    reader = await warm(sim, client, engine)
    reader.read_ahead()  # the command's reads ahead: only the route list has begun
    await reader.read_then(Planner("/addnumber zadarma 847900 → IVR"), host=ZADARMA)
    await asyncio.wait_for(until_idle(client), 30)  # the late reads ahead answered too
    listed = sim.stats["GET sip-providers"]
    added = grow(sim, 21)[-1]  # one more than warm's 20: an admin, in the web interface
    snapshot, _ = await reader.read_then(Planner("/addnumber zadarma 847901 → IVR"), host=ZADARMA)
    assert added in {p.id for p in snapshot.providers}
    assert sim.stats["GET sip-providers"] == listed + 1


async def until_idle(client) -> None:
    """Until no read of the client is on the wire (answers kept ahead may stay)."""
    while any(shared.until is None for shared in client._reads.values()):  # noqa: ASYNC110
        await asyncio.sleep(0.005)
