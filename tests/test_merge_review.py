"""The merge of plan-ahead and rss (aa4de09), reviewed: a read that ends after the
mirror dropped or re-read its account, and a batch in which one read fails."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from bot.plans.mirror import MirrorRefresher
from bot.plans.snapshot import SnapshotReader
from pbx.budget import Priority, current_priority
from storage.aio import AsyncRepos
from storage.repos import Repos
from tests.test_mirror import ZADARMA, Gated, details_read, grow


class Drifts(list):
    """A reader's `on_drift`: every (before, after) it is told, in order."""

    async def __call__(self, before: Any, after: Any) -> None:
        self.append((before, after))


async def read_once_gated(client: Any, drifts: Drifts) -> tuple[Gated, SnapshotReader]:
    """A reader over a Gated client (open), after one read of the host; `asked` cleared."""
    gated = Gated(client)
    gated.open.set()
    reader = SnapshotReader(gated, on_drift=drifts)
    await reader.read(host=ZADARMA)
    gated.asked.clear()
    return gated, reader


class Answered:
    """The client, with the answers of some detail reads held: the PBX answered (the
    record is as it was when asked), the answer reaches the bot when `release` is set."""

    def __init__(self, client: Any, *, hold: str, priority: Priority | None = None):
        self._client = client
        self.name = client.name
        self.hold, self.priority = hold, priority
        self.release = asyncio.Event()
        self.answered = asyncio.Event()
        self.active = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_provider(self, provider_id: str) -> Any:
        answer = await self._client.get_provider(provider_id)
        held = self.active and provider_id == self.hold
        if held and (self.priority is None or current_priority() is self.priority):
            self.answered.set()
            await self.release.wait()
        return answer


async def test_a_read_ending_after_forget_does_not_bring_the_forgotten_account_back(sim, client, engine):
    """`forget` drops an account written with an unknown outcome, so that the next read
    reads it. A read begun before that write, answered before it and ending after the
    forget, must not put the old record back: in memory or in the stored mirror."""
    ids = grow(sim, 2)
    pid = ids[0]
    held = Answered(client, hold=pid)
    reader = SnapshotReader(held, mirror=AsyncRepos(Repos(engine)))
    await reader.read(host=ZADARMA)
    held.active = True
    early = asyncio.create_task(reader.read(host=ZADARMA, fresh=[pid]))
    await asyncio.wait_for(held.answered.wait(), 30)  # the PBX answered with the old record
    sim.state.providers[pid]["manualattributes"] = "[endpoint]\nlanguage=en"  # the bot's write...
    await reader.forget([pid])  # ...whose outcome is unknown
    held.release.set()
    await early
    held.active = False
    snapshot = await reader.read(host=ZADARMA)
    assert snapshot.details[pid].manualattributes == "[endpoint]\nlanguage=en"
    other = await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert other.details[pid].manualattributes == "[endpoint]\nlanguage=en"


async def test_the_refreshers_older_answer_never_overwrites_a_newer_stored_record(sim, client, engine):
    """The refresher's read (not joined by commands) answered before a hand edit and
    ending after a command's fresh read of the edit: the mirror in memory keeps the
    command's record, and so must the stored mirror (what other processes and a restart take)."""
    (pid,) = grow(sim, 1)
    held = Answered(client, hold=pid, priority=Priority.BACKGROUND)
    reader = SnapshotReader(held, mirror=AsyncRepos(Repos(engine)))
    await reader.read(host=ZADARMA)
    held.active = True
    refresher = MirrorRefresher(reader, per_minute=360, share=1.0, every=1)
    background = asyncio.create_task(refresher.run_once())
    await asyncio.wait_for(held.answered.wait(), 30)
    sim.state.providers[pid]["manualattributes"] = "[endpoint]\nlanguage=en"  # by hand
    fresh = await reader.read(host=ZADARMA, fresh=[pid])  # the stale check's own read
    assert fresh.details[pid].manualattributes == "[endpoint]\nlanguage=en"
    held.release.set()
    await background
    assert reader._details[pid][1].manualattributes == "[endpoint]\nlanguage=en"
    other = await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert other.details[pid].manualattributes == "[endpoint]\nlanguage=en"


class OneFails:
    """The client, whose read of `failing` fails once the other reads have been answered."""

    def __init__(self, client: Any, *, failing: str, others: int):
        self._client = client
        self.name = client.name
        self.failing, self.others = failing, others
        self.answered = 0
        self.all_answered = asyncio.Event()
        self.active = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def get_provider(self, provider_id: str) -> Any:
        if self.active and provider_id == self.failing:
            await self.all_answered.wait()
            raise RuntimeError("the PBX failed this one")
        answer = await self._client.get_provider(provider_id)
        if self.active:
            self.answered += 1
            if self.answered == self.others:
                self.all_answered.set()
        return answer


async def test_a_failed_read_in_a_batch_loses_no_drift_of_the_accounts_read_with_it(sim, client, engine):
    """One detail read of a batch fails (an account removed meanwhile, a timeout): the
    others were read and are kept. Their hand edits are still told as drift, and stored."""
    ids = grow(sim, 3)
    drifts = Drifts()
    failing = OneFails(client, failing=ids[0], others=2)
    reader = SnapshotReader(failing, mirror=AsyncRepos(Repos(engine)), on_drift=drifts)
    await reader.read(host=ZADARMA)
    sim.state.providers[ids[1]]["manualattributes"] = "[endpoint]\nlanguage=en"  # by hand
    failing.active = True
    with pytest.raises(RuntimeError):
        await reader.read(host=ZADARMA, fresh=True)
    failing.active = False
    await reader.read(host=ZADARMA, fresh=True)
    told = {pid for _, after in drifts for pid in after.details}
    assert ids[1] in told
    other = await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert other.details[ids[1]].manualattributes == "[endpoint]\nlanguage=en"


async def test_a_hand_edit_read_once_by_two_commands_at_once_is_told_once(sim, client):
    """Two commands read a host at once; an account's list entry changed by hand, so both
    want it, and the second joins the first one's read. The edit is one drift event."""
    ids = grow(sim, 2)
    drifts = Drifts()
    gated, reader = await read_once_gated(client, drifts)
    gated.open.clear()
    sim.state.providers[ids[0]]["port"] = 5080  # by hand
    fetching = asyncio.Event()
    fetch = reader._fetch

    async def counted(pids, forced):
        fetching.set()
        return await fetch(pids, forced)

    reader._fetch = counted  # type: ignore[method-assign]
    first = asyncio.create_task(reader.read(host=ZADARMA))
    await gated.wait_asked(1)
    fetching.clear()
    second = asyncio.create_task(reader.read(host=ZADARMA))
    await asyncio.wait_for(fetching.wait(), 30)  # the second read's batch begins: it joins
    gated.open.set()
    await asyncio.gather(first, second)
    assert [pid for pid, _ in gated.asked] == [ids[0]]  # read once, by the first
    told = [
        pid for before, after in drifts for pid, p in after.details.items() if before.details.get(pid) != p
    ]
    assert told == [ids[0]]


async def test_a_read_ending_after_the_bots_own_write_does_not_store_the_record_it_replaced(
    sim, client, engine
):
    """A read answered before the bot's write and ending after `remember` (the PBX's answer
    to that write): the stored mirror keeps the written record, not the one read before it."""
    (pid,) = grow(sim, 1)
    held = Answered(client, hold=pid)
    reader = SnapshotReader(held, mirror=AsyncRepos(Repos(engine)))
    await reader.read(host=ZADARMA)
    held.active = True
    early = asyncio.create_task(reader.read(host=ZADARMA, fresh=[pid]))
    await asyncio.wait_for(held.answered.wait(), 30)
    sim.state.providers[pid]["manualattributes"] = "[endpoint]\nlanguage=en"  # the bot's write
    held.active = False
    await reader.remember(await client.get_provider(pid))
    held.release.set()
    await early
    assert reader._details[pid][1].manualattributes == "[endpoint]\nlanguage=en"
    other = await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert other.details[pid].manualattributes == "[endpoint]\nlanguage=en"


async def test_an_account_the_bot_removed_in_another_process_is_no_drift(sim, client, engine):
    """Two processes on one database: one removes an account (the executor's delete step,
    then `forget`). The other's next read must not tell it as removed by hand."""
    ids = grow(sim, 2)
    drifts = Drifts()
    other = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=drifts)
    await other.read(host=ZADARMA)
    writer = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    await writer.read(host=ZADARMA)
    await client.delete_provider(ids[0])  # the executor's DELETE_PROVIDER step...
    await writer.forget([ids[0]])  # ...and what it tells the mirror
    await other.read(host=ZADARMA)
    assert drifts == []


async def test_a_removal_by_hand_is_told_by_the_process_that_sees_it_first_only(sim, client, engine):
    """Two processes on one database, both holding an account removed by hand: the first
    to read tells the drift; its tombstone keeps the other from telling it again."""
    ids = grow(sim, 2)
    first, second = Drifts(), Drifts()
    one = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=first)
    two = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=second)
    await one.read(host=ZADARMA)
    await two.read(host=ZADARMA)
    del sim.state.providers[ids[0]]  # an admin, in the web interface
    await one.read(host=ZADARMA)
    await two.read(host=ZADARMA)
    assert len(first) == 1 and second == []
    assert ids[0] not in (await two.read(host=ZADARMA)).details


async def test_an_account_read_again_after_its_tombstone_is_kept_by_the_other_process(sim, client, engine):
    """Dropped with an unknown outcome, then read again (the next read): the record stored
    since replaces the tombstone, and another process takes that record from the mirror."""
    ids = grow(sim, 2)
    other = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    await other.read(host=ZADARMA)
    writer = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    await writer.read(host=ZADARMA)
    sim.state.providers[ids[0]]["manualattributes"] = "[endpoint]\nlanguage=en"  # the bot's write...
    await writer.forget([ids[0]])  # ...its outcome unknown
    await writer.read(host=ZADARMA)  # read again, and stored
    assert {row.kind for row in Repos(engine).mirror.load("demo", None) if row.key == ids[0]} == {"account"}
    reads = details_read(sim)
    snapshot = await other.read(host=ZADARMA)
    assert snapshot.details[ids[0]].manualattributes == "[endpoint]\nlanguage=en"
    assert details_read(sim) == reads  # from the mirror


async def test_a_read_begun_before_a_removal_and_stored_after_it_leaves_the_tombstone(sim, client, engine):
    """One process re-reads an account and the PBX answers; another then removes it and
    forgets it. The first read is stored after that, stamped when it began: the newer
    tombstone stands, and the first process drops the account instead of telling the
    bot's own removal as one by hand (found by a review of df30383)."""
    ids = grow(sim, 2)
    pid = ids[0]
    drifts = Drifts()
    held = Answered(client, hold=pid)
    other = SnapshotReader(held, mirror=AsyncRepos(Repos(engine)), on_drift=drifts)
    await other.read(host=ZADARMA)
    writer = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    await writer.read(host=ZADARMA)
    held.active = True
    early = asyncio.create_task(other.read(host=ZADARMA, fresh=[pid]))
    await asyncio.wait_for(held.answered.wait(), 30)  # the PBX answered: the account exists
    await client.delete_provider(pid)  # the executor's delete step, in the other process...
    await writer.forget([pid])  # ...and its tombstone
    held.release.set()
    await early
    held.active = False
    assert {(r.kind, r.key) for r in Repos(engine).mirror.load("demo", None) if r.key == pid} == {
        ("gone", pid)
    }
    await other.read(host=ZADARMA)
    assert drifts == []


async def test_a_tombstone_stamped_before_a_row_already_synced_is_seen(sim, client, engine):
    """A row is stamped before it commits, by its process's clock: a tombstone may commit
    after a row stamped later that another process has synced already (found by a review)."""
    ids = grow(sim, 2)
    drifts = Drifts()
    other = SnapshotReader(
        client, mirror=AsyncRepos(Repos(engine)), on_drift=drifts, clock=lambda: time.time() - 2
    )
    await other.read(host=ZADARMA)  # its records stamped 2 s back
    await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).registrations()  # a row stamped now
    await other.read(host=ZADARMA)  # synced: the newest row seen is that one
    writer = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), clock=lambda: time.time() - 0.5)
    await writer.read(host=ZADARMA)
    await client.delete_provider(ids[0])
    await writer.forget([ids[0]])  # stamped 0.5 s back: after other's record, before the newest row
    await other.read(host=ZADARMA)
    assert drifts == []


def test_two_processes_forgetting_one_account_at_once_both_go_through(engine):
    """Two replicas telling one removal at once: the second forget waits for the first's
    tombstone and writes over it, rather than failing on the key and losing its chunk
    (PostgreSQL; SQLite has one writer at a time). Found by a review."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers")
    repos = Repos(engine)
    at = datetime.now(UTC)
    repos.mirror.put("demo", "account", {"A": {"id": "A"}, "B": {"id": "B"}}, at=at)
    with engine.connect() as first:
        tx = first.begin()  # the first process's forget of A, not committed yet
        first.execute(
            text("DELETE FROM mirror WHERE pbx = 'demo' AND kind IN ('account', 'gone') AND key = 'A'")
        )
        first.execute(
            text(
                "INSERT INTO mirror (pbx, kind, key, data, read_at) VALUES ('demo', 'gone', 'A', '{}', :at)"
            ),
            {"at": at},
        )
        failure: list[BaseException] = []

        def second() -> None:
            try:
                Repos(engine).mirror.forget("demo", ["A", "B"])
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        with engine.connect() as look:  # until the second waits on the first's row lock
            waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
            while look.execute(waiting).scalar() == 0:
                assert time.monotonic() < deadline, "the second forget never waited"
                time.sleep(0.01)
        tx.commit()
    thread.join(30)
    assert not failure, failure
    assert {(r.kind, r.key) for r in repos.mirror.load("demo", None)} == {("gone", "A"), ("gone", "B")}


async def test_a_wall_clock_stepped_back_never_serves_a_detail_its_list_entry_contradicts(sim, client):
    """The clock is the wall clock (NTP may step it back). A list entry changed by hand
    makes a read want the account; the detail kept from before the step looks "begun
    since this read began", yet it is the very one the list contradicts."""
    (pid,) = grow(sim, 1)
    now = [1_000_000.0]
    reader = SnapshotReader(client, clock=lambda: now[0])
    await reader.read(host=ZADARMA)
    now[0] -= 5  # stepped back
    sim.state.providers[pid]["port"] = 5080  # by hand: the list shows it
    snapshot = await reader.read(host=ZADARMA)
    assert snapshot.details[pid].port == 5080


class FailingGet:
    """The mirror repo (awaitable), whose next `get` fails (the database went away a moment)."""

    def __init__(self, repo: Any):
        self._repo = repo
        self.fail = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)

    async def get(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            self.fail = False
            raise RuntimeError("the database went away")
        return await self._repo.get(*args, **kwargs)


class Mirror:
    def __init__(self, repos: AsyncRepos):
        self.mirror = FailingGet(repos.mirror)


async def test_records_another_process_stored_are_taken_though_a_sync_failed_before_loading_them(
    sim, client, engine
):
    """`_sync` asks which records are newer, then loads them. If the load fails (or the
    read is given up) in between, the next sync still loads them: else the other process's
    write is never taken, and its record (a list cannot show) is served stale."""
    (pid,) = grow(sim, 1)
    mirror = Mirror(AsyncRepos(Repos(engine)))
    reader = SnapshotReader(client, mirror=mirror)  # type: ignore[arg-type]
    await reader.read(host=ZADARMA)
    writer = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    await writer.read(host=ZADARMA)
    sim.state.providers[pid]["manualattributes"] = "[endpoint]\nlanguage=en"  # the bot's write there
    await writer.remember(await client.get_provider(pid))
    mirror.mirror.fail = True
    with pytest.raises(RuntimeError):
        await reader.read(host=ZADARMA)
    snapshot = await reader.read(host=ZADARMA)
    assert snapshot.details[pid].manualattributes == "[endpoint]\nlanguage=en"


async def test_an_account_added_by_hand_seen_by_two_reads_at_once_is_read_and_told_once(sim, client):
    """Two reads at once both list an account added by hand: it is read once and told once."""
    (first,) = grow(sim, 1)
    drifts = Drifts()
    gated, reader = await read_once_gated(client, drifts)
    added = "SIP-TRUNK-ADDED"
    sim.state.providers[added] = {
        **sim.state.providers[first],
        "id": added,
        "username": "999999",
        "host": "sip.novofon.ru",
    }
    await asyncio.gather(reader.read(host=ZADARMA), reader.read(host=ZADARMA))
    assert [pid for pid, _ in gated.asked] == [added]  # read once
    told = [pid for before, after in drifts for pid in after.details if pid not in before.details]
    assert told == [added]


async def test_a_hand_edit_is_told_though_the_refresher_re_read_it_before_the_read_ended(sim, client):
    """A command's read of a big batch keeps each detail as it comes; the refresher's
    round re-reads one of them (the command's record is its "before": no change to tell)
    before the command's batch ends. The hand edit the command read is still told, once."""
    first, other = grow(sim, 2)
    drifts = Drifts()
    held = Answered(client, hold=other, priority=Priority.COMMAND)
    reader = SnapshotReader(held, on_drift=drifts)
    await reader.read(host=ZADARMA)
    sim.state.providers[first]["manualattributes"] = "[endpoint]\nlanguage=en"  # by hand
    held.active = True
    command = asyncio.create_task(reader.read(host=ZADARMA, fresh=True))
    await asyncio.wait_for(held.answered.wait(), 30)  # the batch waits for `other`
    await MirrorRefresher(reader, per_minute=360, share=1.0, every=1).run_once()
    held.release.set()
    await command
    told = [
        pid for before, after in drifts for pid, p in after.details.items() if before.details.get(pid) != p
    ]
    assert told == [first]
