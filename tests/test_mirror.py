"""The PBX mirror: kept in the database (SQLite and PostgreSQL) across restarts,
updated by the bot's own writes, never trusted for a write (the stale check
reads what a plan writes afresh), refreshed oldest first in the background,
and telling `on_drift` what someone else changed."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from bot.entry.cli import main
from bot.plans import snapshot
from bot.plans.commands import parse
from bot.plans.executor import ApplyStatus
from bot.plans.mirror import MirrorRefresher
from bot.plans.planner import Plan, plan_add_number
from bot.plans.snapshot import SlowRead, Snapshot, SnapshotReader, slow_read_notice
from pbx.budget import Priority, current_priority
from sandbox.demo import DEMO_PROVIDER_ID, PROVIDER_DEFAULTS
from storage.aio import AsyncRepos
from storage.db import alembic_config, migrate
from storage.repos import Repos
from storage.tables import utcnow
from tests.conftest import API_KEY
from tests.personas import OLGA
from tests.test_bot_e2e import GROUP, World
from tests.test_bot_e2e import world as world  # the bot end to end (a fixture)
from tests.test_cli_plan import served_pbx as served_pbx  # the simulator in a thread (a fixture)
from tests.test_executor import PASSWORD, executor

ZADARMA = "sip.zadarma.com"


def grow(sim, n: int, host: str = ZADARMA, recipe: str | None = None) -> list[str]:
    """n more accounts on `host`, as someone made them by hand (or as the bot does: `recipe`)."""
    ids = []
    for i in range(n):
        pid = f"SIP-TRUNK-{i:08X}"
        login = str(900000 + i)
        sim.state.providers[pid] = {
            **PROVIDER_DEFAULTS,
            "id": pid,
            "description": f"Zadarma {login}",
            "username": login,
            "secret": f"pw-{i}",
            "host": host,
            "transport": "udp",
            "manualattributes": recipe if recipe is not None else f"[endpoint]\nlanguage=ru\n; {i}",
            "additionalHosts": [],
        }
        ids.append(pid)
    return ids


def details_read(sim) -> int:
    return sim.stats["GET sip-providers/{id}"]


def test_the_migration_adds_and_removes_the_mirror(engine):
    assert "mirror" in inspect(engine).get_table_names()
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
    assert "mirror" not in inspect(engine).get_table_names()
    migrate(engine)
    assert "mirror" in inspect(engine).get_table_names()


def test_mirror_rows_are_kept_written_over_and_dropped(store):
    at = utcnow()
    store.mirror.put("office", "account", {"a": {"id": "a", "x": 1}, "b": {"id": "b"}}, at=at)
    store.mirror.put("office", "account", {"a": {"id": "a", "x": 2}})  # written over, read later
    store.mirror.put("other", "account", {"a": {"id": "a"}})
    rows = {row.key: row for row in store.mirror.load("office")}
    assert rows["a"].data == {"id": "a", "x": 2} and rows["b"].data == {"id": "b"}
    assert rows["a"].read_at > rows["b"].read_at and rows["b"].read_at == at
    assert [row.key for row in store.mirror.changed_since("office", at)] == ["a"]
    assert store.mirror.drop("office", "account", ["b"]) == 1
    assert [row.key for row in store.mirror.load("office")] == ["a"]
    assert store.mirror.drop("office") == 1
    assert store.mirror.load("office") == [] and len(store.mirror.load("other")) == 1


async def test_a_restart_keeps_the_mirror(sim, client, engine):
    """A new process (a new reader over the same database) reads a 200-account host
    with the 3 list calls and no detail."""
    grow(sim, 199)
    first = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    sim.stats.clear()
    cold = await first.read(host=ZADARMA)
    assert len(cold.details) == 200 and details_read(sim) == 200

    sim.stats.clear()
    again = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))  # the restarted process
    warm = await again.read(host=ZADARMA)
    assert sim.reads() == 3, sim.stats  # the lists only
    assert {pid: p.manualattributes for pid, p in warm.details.items()} == {
        pid: p.manualattributes for pid, p in cold.details.items()
    }
    # no SIP password is ever kept: the mirror has the mask, as the PBX answers for outbound accounts
    rows = Repos(engine).mirror.load("demo")
    assert rows and not any("secret" in row.data for row in rows)

    # an account whose list entry changed is read again, and only it
    sim.state.providers["SIP-TRUNK-00000005"]["port"] = 5080
    sim.stats.clear()
    await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert details_read(sim) == 1


async def test_a_propose_right_after_an_apply_reads_no_detail(sim, client, engine):
    grow(sim, 199)
    drifts: list[tuple[Snapshot, Snapshot]] = []

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    plan = await propose_with(reader, "/addnumber zadarma 847900 → IVR")
    assert (await executor(client, reader=reader).apply(plan, {"847900": PASSWORD})).status is (
        ApplyStatus.APPLIED
    )
    sim.stats.clear()
    await propose_with(reader, "/addnumber zadarma 847901 → IVR")
    assert details_read(sim) <= 10, sim.stats
    assert drifts == []  # the bot's own writes (200 accounts, a route) are no drift
    # and in a new process, from the database
    sim.stats.clear()
    await propose_with(
        SnapshotReader(client, mirror=AsyncRepos(Repos(engine))), "/addnumber zadarma 847902 → IVR"
    )
    assert details_read(sim) <= 10, sim.stats


async def propose_with(reader: SnapshotReader, text: str) -> Plan:
    intent = parse(text)
    return plan_add_number(intent, await reader.read(host=intent.provider.host))


async def test_an_edit_between_propose_and_apply_is_caught_though_the_mirror_has_the_old(sim, client, engine):
    """The plan edits the demo account (its sibling gets the recipe); someone edits its
    extra parameters by hand (invisible in the list) before the apply, which runs in
    another process whose mirror still holds the old: the stale check reads it afresh."""
    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    plan = await propose_with(reader, "/addnumber zadarma 847900 → IVR")
    assert DEMO_PROVIDER_ID in plan.depends.accounts
    sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"] = "[endpoint]\nlanguage=en"
    drifts: list[tuple[Snapshot, Snapshot]] = []

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    later = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    sim.stats.clear()
    result = await executor(client, reader=later).apply(plan, {"847900": PASSWORD})
    assert result.status is ApplyStatus.STALE
    assert sim.writes() == 0
    assert details_read(sim) == 1  # exactly the account the plan writes
    assert [after.details[DEMO_PROVIDER_ID].manualattributes for _, after in drifts] == [
        "[endpoint]\nlanguage=en"
    ]


async def test_the_refresher_finds_a_hand_edit_and_tells_on_drift(sim, client, engine):
    ids = grow(sim, 9)
    drifts: list[tuple[Snapshot, Snapshot]] = []
    priorities: list[Priority] = []
    client.listeners.append(lambda record: priorities.append(current_priority()))

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    refresher = MirrorRefresher(reader, per_minute=40, share=0.2, every=60)  # 8 calls: 3 lists + 5 details
    assert refresher.batch == 5 and refresher.bound(1000) == 200 * 60
    # a cold mirror: never-read accounts first, then the oldest
    assert len(set(await refresher.run_once())) == 5
    assert len(set(await refresher.run_once())) == 5  # the other five (ten accounts in all)
    assert set(priorities) == {Priority.BACKGROUND}
    assert drifts == []
    edited = ids[3]
    old = sim.state.providers[edited]["manualattributes"]
    sim.state.providers[edited]["manualattributes"] = "[endpoint]\nlanguage=de"
    found = await refresher.run_once() + await refresher.run_once()
    assert sorted(found) == sorted([DEMO_PROVIDER_ID, *ids])  # each once, oldest first
    [(before, after)] = drifts
    assert before.pbx == after.pbx == "demo"
    assert before.details[edited].manualattributes == old
    assert after.details[edited].manualattributes == "[endpoint]\nlanguage=de"
    # both sides hold the whole mirror (the hook traces through it); only `edited` differs
    assert set(before.details) == set(after.details) == {DEMO_PROVIDER_ID, *ids}
    assert [pid for pid in before.details if before.details[pid] != after.details[pid]] == [edited]
    # the mirror holds the edit now: a read takes it without a detail call
    sim.stats.clear()
    snapshot = await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert snapshot.details[edited].manualattributes == "[endpoint]\nlanguage=de"
    assert details_read(sim) == 0


async def test_an_account_removed_by_hand_is_drift_and_leaves_the_mirror(sim, client, engine):
    ids = grow(sim, 2)
    drifts: list[tuple[Snapshot, Snapshot]] = []

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    await reader.read(host=ZADARMA)
    del sim.state.providers[ids[0]]
    await reader.read(host=ZADARMA)
    [(before, after)] = drifts
    assert ids[0] in before.details and set(before.details) - set(after.details) == {ids[0]}
    assert ids[0] not in {row.key for row in Repos(engine).mirror.load("demo")}


async def test_a_long_read_is_announced_first(sim, client):
    grow(sim, 20)
    told: list[SlowRead] = []

    async def notice(read: SlowRead) -> None:
        told.append(read)
        assert details_read(sim) == 0  # before the first detail

    reader = SnapshotReader(client)
    token = slow_read_notice.set(notice)
    try:
        await reader.read(host=ZADARMA)
        await reader.read(host=ZADARMA)  # from the mirror: nothing to announce
    finally:
        slow_read_notice.reset(token)
    [read] = told
    assert read.accounts == 21 and read.pbx == "demo" and read.seconds > 0


async def test_a_command_that_reads_many_accounts_says_so_at_once_and_the_notice_becomes_the_card(
    world: World,
):
    w = world
    grow(w.sim, 20)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/route 847706 → IVR")  # reads the host of 847706: 21 accounts
    notice = await w.said(GROUP, r"Читаю 21 SIP-аккаунт АТС office целиком.*около \d+ с", after=start)
    card = await w.said(GROUP, r"План \w{6}", kinds=("edit", "send"), after=start)
    assert card["kind"] == "edit" and card["message_id"] == notice["message_id"], [
        (e["kind"], e.get("message_id"), (e.get("text") or "")[:50]) for e in w.tg.events[start:]
    ]
    assert w.card()["message_id"] == notice["message_id"]  # the card, with its buttons, is that message

    # the next command reads from the mirror: nothing to announce
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/trace 900005")
    await w.said(GROUP, "900005", after=start)
    assert not [e for e in w.tg.events[start:] if "Читаю" in (e.get("text") or "")]


async def test_a_trace_over_many_accounts_answers_over_its_notice(world: World):
    w = world
    grow(w.sim, 20)
    start = w.mark()
    w.tg.send(OLGA, GROUP, "/trace 900005")
    notice = await w.said(GROUP, r"Читаю 21 SIP-аккаунт", after=start)
    answer = await w.said(GROUP, "900005", kinds=("edit",), after=start)
    assert answer["message_id"] == notice["message_id"]


async def test_the_refresher_runs_in_the_schedules_owner(world: World):
    [refresher] = world.app.refreshers
    assert refresher.reader is world.app.services.changes.pbxs["office"].reader
    deadline = asyncio.get_running_loop().time() + 30
    while (job := world.app.scheduler.aps.get_job("mirror:office")) is None:  # once the process owns them
        assert asyncio.get_running_loop().time() < deadline, "the refresher was never scheduled"
        await asyncio.sleep(0.05)
    assert job is not None and job.trigger.interval.total_seconds() == 60
    assert refresher.bound(1000) <= 35 * 60  # the default: 20 % of 165 calls/min


def test_the_command_line_reads_the_same_mirror(served_pbx, tmp_path, capsys):
    """`pbxbot plan` in a new process is as fast as in the bot: the second run (and a
    trace) reads no account detail; the data directory holds the mirror."""
    grow(served_pbx, 30)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[pbx.office]\nurl = "{served_pbx.url}"\napi_key = "{API_KEY}"\nreload_wait = 0\n',
        encoding="utf-8",
    )
    argv = ["--config", str(config), "--lang", "en"]
    assert main([*argv, "plan", "--pbx", "office", "/route 847706 → IVR"]) == 0, capsys.readouterr()
    assert details_read(served_pbx) == 31
    served_pbx.stats.clear()
    assert main([*argv, "plan", "--pbx", "office", "/route 847706 → IVR"]) == 0
    assert "Plan" in capsys.readouterr().out
    assert details_read(served_pbx) == 0 and served_pbx.reads() == 3
    assert main([*argv, "trace", "--pbx", "office", "900007"]) in (0, 1)
    assert details_read(served_pbx) == 0


class Gated:
    """The client, with account details held until `open` is set; who asked, at which priority."""

    def __init__(self, client):
        self.client = client
        self.name = client.name
        self.open = asyncio.Event()
        self.asked: list[tuple[str, Priority]] = []
        self.arrived = asyncio.Event()

    async def wait_asked(self, n: int) -> None:
        while len(self.asked) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 30)

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def get_provider(self, provider_id: str):
        self.asked.append((provider_id, current_priority()))
        self.arrived.set()
        await self.open.wait()
        return await self.client.get_provider(provider_id)


async def test_a_command_never_waits_behind_the_refreshers_read(sim, client):
    """A read the refresher has under way (spare budget only) is not joined by a command:
    the command reads the account itself, at its own priority."""
    ids = grow(sim, 2)
    gated = Gated(client)
    gated.open.set()
    reader = SnapshotReader(gated)
    await reader.read(host=ZADARMA)
    gated.open.clear()
    gated.asked.clear()
    sim.state.providers[ids[0]]["port"] = 5080  # its list entry changed: a command must read it
    refresher = MirrorRefresher(reader, per_minute=360, share=1.0, every=1)  # 3 lists + 3 details
    background = asyncio.create_task(refresher.run_once())
    await gated.wait_asked(3)  # the refresher's three reads are under way
    command = asyncio.create_task(reader.read(host=ZADARMA))
    await gated.wait_asked(4)  # the command's own read of the changed account
    gated.open.set()
    snapshot = await command
    await background
    assert snapshot.details[ids[0]].port == 5080
    assert sorted(p for pid, p in gated.asked if pid == ids[0]) == [Priority.COMMAND, Priority.BACKGROUND]


async def test_another_process_writes_are_no_drift_and_a_hand_edit_of_a_route_is(sim, client, engine):
    """Two processes on one database: what one writes, the other's mirror takes from the
    database (no drift); a route edited by hand is drift, with the lists before and after."""
    drifts: list[tuple[Snapshot, Snapshot]] = []

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    other = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    await other.read(host=ZADARMA)
    writer = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))
    plan = await propose_with(writer, "/addnumber zadarma 847900 → IVR")
    assert (await executor(client, reader=writer).apply(plan, {"847900": PASSWORD})).status is (
        ApplyStatus.APPLIED
    )
    sim.stats.clear()
    await other.read(host=ZADARMA)
    assert drifts == [] and details_read(sim) == 0

    route = next(r for r in sim.state.routes.values() if r["number"] == "847900")
    route["extension"] = "201"
    await other.read(host=ZADARMA)
    [(before, after)] = drifts
    assert {r.number: r.extension for r in before.routes}["847900"] != "201"
    assert {r.number: r.extension for r in after.routes}["847900"] == "201"
    assert before.details == after.details  # no account changed; both hold the mirror to trace


async def test_a_refresher_round_sees_routes_and_disabled_accounts_edited_by_hand(sim, client, engine):
    """The lists are read every round: a route moved by hand and an account disabled by
    hand are drift within one round, whatever the oldest-first order of the details."""
    ids = grow(sim, 40)
    drifts: list[tuple[Snapshot, Snapshot]] = []

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    await reader.read(every_host=True)
    refresher = MirrorRefresher(reader, per_minute=40, share=0.2, every=60)  # 5 details a round of 41
    sim.state.routes[2]["extension"] = "201"
    await refresher.run_once()
    [(before, after)] = drifts
    assert (
        {r.id: r.extension for r in after.routes}[2] == "201" != {r.id: r.extension for r in before.routes}[2]
    )
    newest = ids[-1]  # read last: the oldest-first order would reach it last
    sim.state.set_provider_disabled(newest, True)
    assert newest in await refresher.run_once()  # its list entry moved: read this round
    assert drifts[-1][1].details[newest].disabled and not drifts[-1][0].details[newest].disabled


async def test_an_account_added_by_hand_is_drift_and_the_bots_own_is_not(sim, client, engine):
    """The mirror keeps the ids the PBX listed: an account that appears without the bot
    having written it is read and told as added; one the bot created is not."""
    drifts: list[tuple[Snapshot, Snapshot]] = []

    async def on_drift(before: Snapshot, after: Snapshot) -> None:
        drifts.append((before, after))

    reader = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    await reader.read(host=ZADARMA)
    plan = await propose_with(reader, "/addnumber zadarma 847900 → IVR")
    applied = await executor(client, reader=reader).apply(plan, {"847900": PASSWORD})
    assert applied.status is ApplyStatus.APPLIED
    await reader.read(host=ZADARMA)
    assert drifts == []  # the bot's own account
    (added,) = grow(sim, 1, host="sip.novofon.ru")
    restarted = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)), on_drift=on_drift)
    await restarted.read(host=ZADARMA)  # another host, a new process: the new id is still seen
    [(before, after)] = drifts
    assert added in after.details and added not in before.details
    assert {p.id for p in after.providers} - {p.id for p in before.providers} == {added}


class Counted:
    """The client, counting the detail reads under way at once (and the most ever)."""

    def __init__(self, client, on_ask=None):
        self.client = client
        self.name = client.name
        self.under_way = self.most = 0
        self.on_ask = on_ask

    def __getattr__(self, name):
        return getattr(self.client, name)

    async def get_provider(self, provider_id: str):
        if self.on_ask is not None:
            self.on_ask()
        self.under_way += 1
        self.most = max(self.most, self.under_way)
        try:
            return await self.client.get_provider(provider_id)
        finally:
            self.under_way -= 1


async def test_a_cold_read_of_a_big_host_goes_batch_by_batch_each_stored_before_the_next(
    sim, client, engine, monkeypatch
):
    """120 accounts, 50 a batch: never more than 50 detail reads under way, and the
    mirror holds each batch before the next one is asked (a crash mid-read keeps them)."""
    monkeypatch.setattr(snapshot, "FETCH_BATCH", 50)
    grow(sim, 119)
    stored_when_asked: list[int] = []
    counted = Counted(client, on_ask=lambda: stored_when_asked.append(len(Repos(engine).mirror.load("demo"))))
    reader = SnapshotReader(counted, mirror=AsyncRepos(Repos(engine)))
    sim.stats.clear()
    cold = await reader.read(host=ZADARMA)
    assert len(cold.details) == 120 and details_read(sim) == 120
    assert counted.most == 50
    assert stored_when_asked[0] == stored_when_asked[49] == 0
    assert stored_when_asked[50] == stored_when_asked[99] == 50 and stored_when_asked[100] == 100
    assert len(Repos(engine).mirror.load("demo")) == 120
    # and a new process loads them all, batch by batch, reading no detail
    sim.stats.clear()
    again = await SnapshotReader(client, mirror=AsyncRepos(Repos(engine))).read(host=ZADARMA)
    assert details_read(sim) == 0 and again.details.keys() == cold.details.keys()


async def test_two_commands_reading_a_big_host_at_once_read_each_account_once(sim, client, monkeypatch):
    """The second command begins while the first is in its second batch: what the
    first has read, is reading or reads later is never read twice."""
    monkeypatch.setattr(snapshot, "FETCH_BATCH", 50)
    grow(sim, 119)
    gated = Gated(client)
    gated.open.set()
    reader = SnapshotReader(gated)
    original = gated.get_provider
    holding = [True]

    async def held_after_60(provider_id: str):
        if holding[0] and len(gated.asked) >= 60:
            gated.open.clear()  # from the 61st on, details wait
        return await original(provider_id)

    gated.get_provider = held_after_60
    sim.stats.clear()
    first = asyncio.create_task(reader.read(host=ZADARMA))
    await gated.wait_asked(100)  # the first command's second batch is under way, 40 of it held
    second = asyncio.create_task(reader.read(host=ZADARMA))
    await gated.wait_asked(110)  # the second command's own reads of the third batch's accounts
    holding[0] = False
    gated.open.set()
    a, b = await asyncio.gather(first, second)
    assert len(a.details) == len(b.details) == 120
    assert details_read(sim) == 120, sim.stats
    assert len({pid for pid, _ in gated.asked}) == len(gated.asked) == 120


async def test_a_reader_does_not_load_back_what_it_stored_itself(sim, client, engine):
    """The next read after a cold one asks the mirror which records are newer than its
    own and loads none of its own back (at 5,000 accounts that reload was a 30 MB peak);
    a record another process stored since is loaded."""
    grow(sim, 59)
    store = Repos(engine)
    reader = SnapshotReader(client, mirror=AsyncRepos(store))
    await reader.read(host=ZADARMA)
    loaded: list[tuple[str, list[str]]] = []
    get = store.mirror.get

    def counting_get(pbx, kind, keys):
        keys = list(keys)
        loaded.append((kind, keys))
        return get(pbx, kind, keys)

    store.mirror.get = counting_get
    await reader.read(host=ZADARMA)
    assert loaded == []
    other = SnapshotReader(client, mirror=AsyncRepos(Repos(engine)))  # another process
    await other.read(host=ZADARMA, accounts=["SIP-TRUNK-00000003"], fresh=["SIP-TRUNK-00000003"])
    await reader.read(host=ZADARMA)
    assert loaded == [("account", ["SIP-TRUNK-00000003"])]


def test_memory_is_given_back_only_where_glibc_is(monkeypatch):
    """malloc_trim is glibc's: elsewhere (macOS, Windows) nothing is called and nothing fails."""
    snapshot._malloc_trim.cache_clear()
    monkeypatch.setattr(snapshot.sys, "platform", "darwin")
    assert snapshot._malloc_trim() is None
    snapshot.release_memory()
    snapshot._malloc_trim.cache_clear()
    monkeypatch.undo()
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert snapshot._malloc_trim() is not None
    snapshot._malloc_trim.cache_clear()
