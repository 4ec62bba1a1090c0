"""A proposal stored, and its card made, while the PBX answers (Lifecycle.propose).

The plan made ahead on the mirror (see test_plan_ahead.py) is stored at once, its
logins locked, and its card made; the lists confirm it, or it is discarded before
the plan made on what was read is stored. What the database holds afterwards is
the plan the PBX's answer gives, and nothing else: no row, lock or audit row of a
plan the lists did not confirm, whatever ended the read (storage: SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlmodel import Session, select

from bot.plans.commands import parse
from pbx.errors import PbxError
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION
from storage.repos import Repos
from storage.tables import LockRow
from tests.test_changes import OLGA, ZADARMA, Clock, make_changes
from tests.test_mirror import grow

LISTS = {"/sip-providers", "/incoming-routes", "/extensions:getForSelect"}
ADD = "/addnumber zadarma 847900 → IVR"


class Cards:
    """`card` for propose: what each call saw when it was made."""

    def __init__(self, store: Any, client: Any):
        self.store = store
        self.made: list[dict[str, Any]] = []
        self.answered: list[str] = []
        client.listeners.append(lambda record: self.answered.append(record.path))

    async def __call__(self, row: Any, facts: Any) -> str:
        self.made.append(
            {
                "id": row.id,
                "stored": [p.id for p in self.store.plans.find()],
                "lists_answered": LISTS & set(self.answered),
                "missing": facts.missing,
            }
        )
        return f"card of {row.id}"


def locks(engine) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return sorted((lock.login, lock.plan_id) for lock in s.exec(select(LockRow)))


@pytest.fixture
async def warm(sim, client, store, tmp_path):
    """Changes whose reader holds the host and has compared the lists: the next
    proposal is planned (and stored) ahead of the PBX's answer."""
    changes = make_changes(store, client, Clock(), tmp_path)
    grow(sim, 5)
    reader = changes.pbxs["demo"].reader
    await reader.read(host=ZADARMA)
    await reader.read(host=ZADARMA)
    return changes


async def propose(changes, text: str, **kwargs: Any):
    return await changes.propose(OLGA, "demo", parse(text), command=text, **kwargs)


async def test_the_plan_is_stored_and_its_card_made_before_the_pbx_answers(warm, sim, client, store, engine):
    cards = Cards(store, client)
    sim.latency = 2.0  # a slow PBX: the lists answer two seconds after they are asked
    proposal = await propose(warm, ADD, card=cards, audit_later=True)
    row = proposal.row
    assert [c["id"] for c in cards.made] == [row.id]  # made once: the lists confirmed the plan
    made = cards.made[0]
    assert made["stored"] == [row.id] and made["lists_answered"] == set(), made  # stored, lists on the wire
    assert made["missing"] == ["847900"]  # the card's facts: the password still to come
    assert proposal.card == f"card of {row.id}"
    assert [p.id for p in store.plans.find()] == [row.id]
    assert locks(engine) == sorted((login, row.id) for login in proposal.plan.logins)
    assert {"847706", "847900"} <= set(proposal.plan.logins)
    # the audit waits for the caller (once its card is out), and is written once
    assert [e.event for e in store.audit.trail(plan_id=row.id)] == []
    await warm.write_audit(proposal.row.id)
    await warm.write_audit(proposal.row.id)
    trail = store.audit.trail()
    assert [e.event for e in trail if e.plan_id == row.id] == ["proposed"]
    read = [e.detail["path"] for e in trail if e.event == "api_call"]
    assert sorted(read) == sorted(LISTS), read  # the reads the plan was made on


async def test_a_plan_the_lists_do_not_confirm_is_discarded_for_the_one_they_give(
    warm, sim, client, store, engine
):
    cards = Cards(store, client)
    # edited by hand since the mirror read it: the plan made ahead moves a route as it was
    route = next(r for r in sim.state.routes.values() if r.get("provider") == DEMO_PROVIDER_ID)
    route["extension"] = "201"
    sim.latency = 2.0  # time to store and make the card ahead, on a busy machine too
    proposal = await propose(warm, ADD, card=cards, audit_later=True)
    row = proposal.row
    guessed, final = cards.made
    assert guessed["id"] != row.id and final["id"] == row.id  # stored ahead, then replaced
    assert guessed["lists_answered"] == set() and final["lists_answered"] == LISTS
    assert final["stored"] == [row.id]  # the guess was gone before the plan was stored
    assert proposal.card == f"card of {row.id}"
    assert any(
        s.before.get("extension") == "201" for s in proposal.plan.steps if s.target == str(route["id"])
    )
    assert [p.id for p in store.plans.find()] == [row.id]
    assert locks(engine) == sorted((login, row.id) for login in proposal.plan.logins)
    assert {"847706", "847900"} <= set(proposal.plan.logins)
    await warm.write_audit(proposal.row.id)
    assert not [e for e in store.audit.trail() if e.plan_id == guessed["id"]]  # nobody saw it: no trace


async def test_a_plan_stored_ahead_goes_when_the_pbx_then_says_there_is_nothing_to_do(
    warm, sim, client, store, engine
):
    cards = Cards(store, client)
    # the mirror has 847706 at the queue; by hand it now goes to the IVR, as the command asks
    route = next(r for r in sim.state.routes.values() if r.get("provider") == DEMO_PROVIDER_ID)
    assert route["extension"] == DEMO_QUEUE_EXTENSION
    route["extension"] = DEMO_IVR_EXTENSION
    sim.latency = 2.0  # time to store and make the card ahead, on a busy machine too
    proposal = await propose(warm, f"/route 847706 → {DEMO_IVR_EXTENSION}", card=cards)
    assert [c["stored"] for c in cards.made] == [[cards.made[0]["id"]]]  # the guess: stored ahead
    assert proposal.row is None and proposal.plan.empty
    assert store.plans.find() == [] and locks(engine) == []


async def test_a_plan_stored_ahead_goes_when_the_read_fails(warm, sim, store, engine):
    sim.inject("/incoming-routes", method="GET", status=403, delay=0.5)
    with pytest.raises(PbxError):
        await propose(warm, ADD)
    assert store.plans.find() == [] and locks(engine) == []
    assert [e.event for e in store.audit.trail() if e.event != "api_call"] == []


async def test_a_proposal_cancelled_while_the_pbx_answers_leaves_nothing(warm, sim, store, engine):
    sim.latency = 5.0
    task = asyncio.ensure_future(propose(warm, ADD))
    deadline = asyncio.get_running_loop().time() + 30
    while not store.plans.find():  # stored ahead
        assert asyncio.get_running_loop().time() < deadline, "the plan was never stored ahead"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    while store.plans.find() or locks(engine):  # discarded, shielded from the cancel
        assert asyncio.get_running_loop().time() < deadline, "the plan stored ahead stayed"
        await asyncio.sleep(0.01)


async def test_a_plan_stored_ahead_then_discarded_locks_no_other_command_out(warm, sim, store, monkeypatch):
    """A's plan made ahead (on a mirror a hand edit outdated) is stored and locks 847706;
    the PBX then says A has nothing to do. B, proposed meanwhile on the same number, is
    not refused because of a plan nobody saw: it waits for A's fate, then stores itself."""
    discard = Repos.discard_plan

    def slow_discard(self, plan_id: str) -> None:  # B's insert comes while A's plan is still there
        time.sleep(0.3)
        discard(self, plan_id)

    monkeypatch.setattr(Repos, "discard_plan", slow_discard)
    route = next(r for r in sim.state.routes.values() if r.get("provider") == DEMO_PROVIDER_ID)
    assert route["extension"] == DEMO_QUEUE_EXTENSION
    route["extension"] = DEMO_IVR_EXTENSION  # by hand, since the mirror read it
    sim.latency = 0.5
    a = asyncio.ensure_future(propose(warm, f"/route 847706 → {DEMO_IVR_EXTENSION}"))
    deadline = asyncio.get_running_loop().time() + 30
    while not store.plans.find():  # A's plan stored ahead
        assert asyncio.get_running_loop().time() < deadline, "A's plan was never stored ahead"
        await asyncio.sleep(0.01)
    held_by_a = store.plans.find()[0].id
    b = await propose(warm, "/route 847706 → 201")
    assert (await a).row is None  # A: nothing to do, nothing stored
    assert b.row is not None and b.row.id != held_by_a
    assert [p.id for p in store.plans.find()] == [b.row.id]


async def test_a_proposal_cancelled_while_its_card_is_made_leaves_nothing_and_locks_nobody_out(
    warm, sim, store, engine
):
    """A is cancelled once the lists confirmed its plan, while its card (made in the
    insert's task) is still being made: the insert's task ends, and the plan goes; B on
    the same logins is not held up by it (the review found B waiting forever)."""
    making = asyncio.Event()

    async def slow_card(row: Any, facts: Any) -> str:
        making.set()
        await asyncio.sleep(3600)  # a card that takes its time (render awaits the database)
        return "card"

    sim.latency = 0.05
    a = asyncio.ensure_future(propose(warm, ADD, card=slow_card, audit_later=True))
    await asyncio.wait_for(making.wait(), 30)
    await asyncio.sleep(0.5)  # the lists have answered: A waits in _settled for its draft
    a.cancel()
    try:
        await a
    except asyncio.CancelledError:
        pass
    deadline = asyncio.get_running_loop().time() + 30
    while store.plans.find() or locks(engine):  # discarded once the card's task has ended
        assert asyncio.get_running_loop().time() < deadline, [p.id for p in store.plans.find()]
        await asyncio.sleep(0.02)
    left = (list(warm.lifecycle._ahead), [p.id for p in store.plans.find()], locks(engine))
    try:
        b = await asyncio.wait_for(propose(warm, ADD), 10)
    except TimeoutError:
        raise AssertionError(f"B hangs on A's unresolved fate; left: {left}") from None
    assert left == ([], [], []), f"A's plan (no card, no audit) stays: {left}; B: {b.row}"


async def test_a_proposal_cancelled_while_its_draft_is_inserted_leaves_nothing(
    warm, sim, store, engine, monkeypatch
):
    """Cancelled while the INSERT runs in a database thread (which commits whatever the
    task does): the plan goes all the same."""
    add_plan = Repos.add_plan
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_add_plan(self, *args: Any, **kwargs: Any) -> Any:
        loop.call_soon_threadsafe(started.set)
        time.sleep(0.5)
        return add_plan(self, *args, **kwargs)

    monkeypatch.setattr(Repos, "add_plan", slow_add_plan)
    sim.latency = 0.05
    a = asyncio.ensure_future(propose(warm, ADD))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.2)  # the lists have answered; the draft's insert is in its thread
    a.cancel()
    try:
        await a
    except asyncio.CancelledError:
        pass
    deadline = loop.time() + 30
    while store.plans.find() or locks(engine):  # discarded once the insert has ended
        assert loop.time() < deadline, [p.id for p in store.plans.find()]
        await asyncio.sleep(0.02)


async def test_a_plans_trail_stays_in_order_while_its_held_rows_are_being_written(
    warm, sim, store, monkeypatch
):
    """The late write of the held rows (AUDIT_WAIT passed, Telegram holds the card) is
    under way when the card is given up and the plan released: "cancelled" waits for it."""
    proposal = await propose(warm, ADD, audit_later=True)
    first = [True]

    def slow(*events: Any) -> None:
        if first:
            first.clear()
            time.sleep(0.3)
        store.audit.add(*events)

    async def slow_add(*events: Any) -> None:
        await warm.db.run(slow, *events)

    monkeypatch.setattr(warm.db.audit, "add", slow_add)
    late = asyncio.ensure_future(warm.write_audit(proposal.row.id))  # the AUDIT_WAIT timer's task
    await asyncio.sleep(0.05)
    await warm.release(proposal.row.id, "card_not_posted")  # post_card's release
    await late
    events = [e.event for e in store.audit.trail(plan_id=proposal.row.id)]
    assert events == ["proposed", "cancelled"], events
