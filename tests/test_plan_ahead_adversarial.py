"""read_then under pressure (see tests/test_plan_ahead.py): what lands while the list
calls are on the wire, and a caller that gives up meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from bot.plans.planner import plan_add_number
from bot.plans.snapshot import SnapshotReader
from storage.aio import AsyncRepos
from storage.repos import Repos
from tests.test_changes import OLGA, PASSWORD, propose
from tests.test_changes import changes as changes  # a fixture
from tests.test_changes import clock as clock  # a fixture
from tests.test_mirror import ZADARMA, grow
from tests.test_plan_ahead import Planner


class Held:
    """The client, with its next `count` list calls held until `release` is set: their
    answers (`before=False`: the requests go out) or the calls themselves (`before=True`:
    nothing is written yet, as behind the rate limit)."""

    def __init__(self, client: Any):
        self._client = client
        self.name = client.name
        self.count = 0
        self.before = False
        self.release = asyncio.Event()
        self.holding = 0
        self.all_held = asyncio.Event()
        self.cancelled = 0
        self.all_cancelled = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def _held(self, call: Callable[[], Awaitable[Any]]) -> Any:
        hold = self.count > 0
        if not hold:
            return await call()
        self.count -= 1
        result = None if self.before else await call()
        self.holding += 1
        if self.count == 0:
            self.all_held.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            if self.cancelled == self.holding:
                self.all_cancelled.set()
            raise
        return await call() if self.before else result

    async def list_providers(self, **kw: Any) -> Any:
        return await self._held(lambda: self._client.list_providers(**kw))

    async def list_routes(self) -> Any:
        return await self._held(self._client.list_routes)

    async def destinations(self) -> Any:
        return await self._held(self._client.destinations)


async def warm(sim, client, engine) -> tuple[SnapshotReader, Held]:
    grow(sim, 5)
    held = Held(client)
    reader = SnapshotReader(held, mirror=AsyncRepos(Repos(engine)))
    await reader.read(host=ZADARMA)
    await reader.read(host=ZADARMA)  # the lists compared with nothing fetched since: a guess may be made
    return reader, held


async def test_a_reread_of_a_setting_the_model_does_not_name_landing_meanwhile_voids_the_plan_made_ahead(
    sim, client, engine
):
    """MikoPBX answers settings the model keeps as extras (cid_source, did_source); a plan
    writes them back (update steps) and its fingerprint hashes them. The refresher's
    re-read of an account edited there by hand lands while the lists are on the wire:
    the plan made ahead on the account as it was is not the plan on the snapshot read."""
    reader, held = await warm(sim, client, engine)
    edited = "SIP-TRUNK-00000000"  # on the host: the plan's update step writes its settings back
    sim.state.providers[edited]["cid_source"] = "by-hand"
    work = Planner("/addnumber zadarma 847900 → IVR")
    refreshing: list[asyncio.Future[list[str]]] = []

    def planner(snapshot):
        if not refreshing:  # the refresher's round runs while the answers are held, and ends first
            refreshing.append(asyncio.ensure_future(reader.refresh(100)))
            refreshing[0].add_done_callback(lambda _: held.release.set())
        return work(snapshot)

    held.count = 3
    snapshot, plan = await reader.read_then(planner, host=ZADARMA)
    assert edited in await refreshing[0]
    assert reader._details[edited][1].model_extra["cid_source"] == "by-hand"  # what a read gives now
    planned = plan_add_number(work.intent, await reader.read(host=ZADARMA))
    step = next(s for s in planned.steps if s.target == edited)
    assert step.after["cid_source"] == "by-hand"
    assert snapshot.details[edited].model_extra["cid_source"] == "by-hand"
    assert plan.fingerprint == planned.fingerprint
    assert [s.to_dict() for s in plan.steps] == [s.to_dict() for s in planned.steps]


async def test_a_read_then_given_up_before_the_lists_are_written_leaves_no_list_call_behind(
    sim, client, engine
):
    """A command cancelled while its list calls wait (behind the rate limit, say) takes
    them with it, as `read` does: nothing keeps reading (or fails later, unretrieved)."""
    reader, held = await warm(sim, client, engine)
    held.count, held.before = 3, True
    work = Planner("/addnumber zadarma 847900 → IVR")
    proposing = asyncio.ensure_future(reader.read_then(work, host=ZADARMA))
    await held.all_held.wait()
    proposing.cancel()
    await asyncio.gather(proposing, return_exceptions=True)
    try:
        await asyncio.wait_for(held.all_cancelled.wait(), 5)
    finally:
        held.release.set()
    assert held.cancelled == 3


async def test_a_read_given_up_leaves_no_list_call_behind(sim, client, engine):
    """The baseline read_then must match: `read` cancelled takes its list calls with it."""
    reader, held = await warm(sim, client, engine)
    held.count, held.before = 3, True
    reading = asyncio.ensure_future(reader.read(host=ZADARMA))
    await held.all_held.wait()
    reading.cancel()
    await asyncio.gather(reading, return_exceptions=True)
    try:
        await asyncio.wait_for(held.all_cancelled.wait(), 5)
    finally:
        held.release.set()
    assert held.cancelled == 3


async def test_the_facts_a_fresh_proposal_carries_are_what_its_card_would_read(changes):
    """Proposal.facts (the card of a plan just proposed, without asking the database) is
    card_facts of the stored plan: passwords given for logins the plan does not need, or
    for the number as typed, or only some of those it needs."""
    cases = [
        ("/addnumber zadarma 847900 → IVR", {"847900": PASSWORD, "847999": PASSWORD}),
        ("/addnumber zadarma 847901 → IVR", {"847999": PASSWORD}),
        ("/addnumber zadarma 847902 → IVR", None),
        ("/password 847706", {"847706": PASSWORD}),
    ]
    missing = []
    for text, secrets in cases:
        proposal = await propose(changes, OLGA, text, secrets)
        assert proposal.row is not None and proposal.facts is not None, text
        assert proposal.facts == await changes.card_facts(proposal.row), text
        missing.append(proposal.facts.missing)
        await changes.cancel(OLGA, proposal.row.id)  # its logins free for the next
    assert missing == [[], ["847901"], ["847902"], []]
