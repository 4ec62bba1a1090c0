"""The PBX's call budget (pbx/budget.py): one per PBX, served by priority, shared
by replicas through Redis, never over nginx's limit.

Time is scaled: rates of tens or thousands a minute and the simulator's window
of 2 s instead of 60 stand for MikoPBX's 180 a minute; orders are checked as
orders and waits in tokens, not in fixed sleeps."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from bot.config import load_settings
from bot.entry.wiring import budget_key, pbx_budget
from pbx.budget import (
    Claim,
    LocalBudget,
    Priority,
    RedisBudget,
    claimed,
    current_claim,
    current_priority,
    priority,
)
from pbx.errors import PbxRateLimited
from tests.conftest import fast_client

REDIS_URL = os.environ.get("PBXBOT_TEST_REDIS", "redis://127.0.0.1:6379/9")
LEVELS = list(Priority)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _redis_or_skip() -> None:
    import redis.asyncio as aioredis

    probe = aioredis.from_url(REDIS_URL)
    try:
        await probe.ping()
    except Exception:
        pytest.skip("needs Redis")
    finally:
        await probe.aclose()


def _key(name: str) -> str:
    return f"test-{name}-{os.getpid()}-{time.time_ns()}"


async def _drain(budget, n: int) -> None:
    with priority(Priority.COMMAND):
        for _ in range(n):
            await budget.acquire()


async def _take_in_order(budget, levels: list[Priority], order: list[tuple[Priority, int]]) -> None:
    """Queue one waiter per level (in this order, all before the first is served) and
    wait for every one; `order` gets (level, its rank in its level) as they are served."""
    seen: dict[Priority, int] = {}

    async def one(level: Priority, rank: int) -> None:
        with priority(level):
            await budget.acquire()
        order.append((level, rank))

    tasks = []
    for level in levels:
        seen[level] = seen.get(level, 0) + 1
        tasks.append(asyncio.create_task(one(level, seen[level])))
    await asyncio.wait_for(asyncio.gather(*tasks), 30)


# ---------------------------------------------------------------- the context


def test_priority_and_claims_travel_with_the_task():
    assert current_priority() is Priority.COMMAND
    with priority(Priority.BACKGROUND):
        assert current_priority() is Priority.BACKGROUND
        claim = current_claim()
        assert claim.level is Priority.BACKGROUND
        with claimed(claim):
            claim.raise_to(Priority.APPLY)
            assert current_priority() is Priority.APPLY  # joined by an apply
            claim.raise_to(Priority.REPORT)  # never lowered
            assert current_priority() is Priority.APPLY
            with priority(Priority.REPORT):  # a block of its own is its own
                assert current_priority() is Priority.REPORT
        assert current_priority() is Priority.BACKGROUND
    assert current_priority() is Priority.COMMAND


# ---------------------------------------------------------------- one process


async def test_waiters_are_served_by_priority_then_first_come():
    budget = LocalBudget(600, burst=1, background_share=1.0)  # a token every 0.1 s
    await _drain(budget, 1)
    levels = [Priority.BACKGROUND, Priority.REPORT, Priority.APPLY, Priority.COMMAND] * 3
    order: list[tuple[Priority, int]] = []
    await _take_in_order(budget, levels, order)
    assert order == [(level, rank) for level in LEVELS for rank in (1, 2, 3)]


def test_background_takes_at_most_its_share_of_the_rate():
    clock = FakeClock()
    # 120 a minute, 2 a second; background: 20 %, 0.4 a second, 2 back to back
    budget = LocalBudget(120, burst=10, background_share=0.2, clock=clock)
    taken = 0
    for _ in range(600):  # asking every 0.1 s for a minute
        taken += budget._take_now(Priority.BACKGROUND) == 0
        clock.now += 0.1
    assert taken <= 0.2 * 120 + 2
    assert taken >= 0.2 * 120 - 1
    # the rest stayed in the bucket: a command finds the whole burst
    assert all(budget._take_now(Priority.COMMAND) == 0 for _ in range(10))
    # while others take all, the background waits
    assert budget._take_now(Priority.BACKGROUND) > 0


async def test_background_share_holds_in_real_time_too():
    budget = LocalBudget(6000, burst=10, background_share=0.2)  # background: 20 a second, 2 at once
    granted: list[float] = []

    async def read() -> None:
        with priority(Priority.BACKGROUND):
            await budget.acquire()
        granted.append(time.monotonic())

    started = time.monotonic()
    tasks = [asyncio.create_task(read()) for _ in range(40)]
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    for i, at in enumerate(granted):  # at no moment more than the share allowed so far
        assert i + 1 <= 2 + 20 * (at - started) + 1
    assert granted[-1] - started >= (40 - 2) / 20 * 0.9


async def test_a_command_waits_one_token_at_most_behind_a_queue_of_background_reads():
    budget = LocalBudget(600, burst=1, background_share=1.0)  # a token every 0.1 s
    served = asyncio.Event()

    async def background() -> None:
        with priority(Priority.BACKGROUND):
            await budget.acquire()
        if budget.granted[Priority.BACKGROUND] >= 3:
            served.set()

    tasks = [asyncio.create_task(background()) for _ in range(30)]
    await asyncio.wait_for(served.wait(), 30)
    before = budget.granted[Priority.BACKGROUND]
    started = time.monotonic()
    await budget.acquire()  # a command
    waited = time.monotonic() - started
    assert budget.granted[Priority.BACKGROUND] <= before + 1  # at most the token already on its way
    assert waited < 0.1 + 0.1  # one token's interval, and slack for a busy machine
    assert budget.waiting()[Priority.BACKGROUND] >= 30 - before - 2
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert budget.waiting() == {}


async def test_a_cancelled_waiter_leaves_the_queue_and_the_others_go_on():
    budget = LocalBudget(600, burst=1)
    await _drain(budget, 1)
    first = asyncio.create_task(budget.acquire())
    second = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait_for(second, 5)
    assert first.cancelled() and budget.waiting() == {}


async def test_a_waiter_cancelled_as_its_token_comes_does_not_fail_the_others():
    clock = FakeClock()
    budget = LocalBudget(60, burst=1, clock=clock)
    await _drain(budget, 1)
    first = asyncio.create_task(budget.acquire())
    second = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)  # both queued; the budget's server is due to run
    clock.now += 10  # tokens for both
    first.cancel()  # its wait is cancelled, its task not yet told
    await asyncio.wait_for(second, 5)
    assert first.cancelled() and budget.waiting() == {}


async def test_a_waiting_claim_raised_by_a_command_is_served_as_one():
    budget = LocalBudget(600, burst=1, background_share=1.0)
    await _drain(budget, 1)
    order: list[str] = []
    shared = Claim(Priority.BACKGROUND)

    async def one(name: str, claim: Claim) -> None:
        await budget.acquire(claim)
        order.append(name)

    tasks = [asyncio.create_task(one(f"bg{i}", Claim(Priority.BACKGROUND))) for i in range(3)]
    tasks.append(asyncio.create_task(one("shared", shared)))
    await asyncio.sleep(0)
    shared.raise_to(Priority.COMMAND)  # a command joined the shared read
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order[0] == "shared"


async def test_the_client_serves_a_command_first_and_lifts_a_background_read_it_joins(sim):
    budget = LocalBudget(600, burst=1, background_share=1.0)  # a call every 0.1 s
    async with fast_client(sim.url, budget=budget) as client:
        await client.ping()  # the bucket is empty now
        done: list[str] = []

        async def read(name: str, level: Priority, n: int) -> None:
            with priority(level):
                await client._call("GET", "/incoming-routes", params={"n": n})
            done.append(name)

        background = [asyncio.create_task(read(f"bg{n}", Priority.BACKGROUND, n)) for n in range(4)]
        await asyncio.sleep(0)
        shared = asyncio.create_task(read("bg-shared", Priority.BACKGROUND, 99))
        await asyncio.sleep(0)
        command = asyncio.create_task(read("command", Priority.COMMAND, 99))  # joins the shared read
        report = asyncio.create_task(read("report", Priority.REPORT, 7))
        await asyncio.wait_for(asyncio.gather(*background, shared, command, report), 30)
        assert set(done[:2]) == {"bg-shared", "command"}  # one call, served first
        assert done[2] == "report"
        assert sim.stats["GET incoming-routes"] == 6  # the command and the background read: one call


# ---------------------------------------------------------------- replicas


async def _blast(client, count: int, offset: int) -> list[object]:
    reads = (client._call("GET", "/incoming-routes", params={"n": offset + n}) for n in range(count))
    return await asyncio.gather(*reads, return_exceptions=True)


def _scaled_nginx(sim) -> None:
    """nginx's 180/min + 20 in a fixed window, the window scaled to 2 s (30 x faster)."""
    sim.state.settings["PBXRateLimitEnabled"] = "1"
    sim.rate_limit, sim.rate_burst, sim.rate_window, sim.block_seconds = 180, 20, 2.0, 0.5
    sim._windows.clear()


async def test_two_replicas_sharing_a_redis_budget_stay_under_nginx_together(sim):
    await _redis_or_skip()
    _scaled_nginx(sim)
    key = _key("replicas")
    per_minute = 165 * 30  # the profile's 165 a minute, on the 30 x faster clock

    def budget() -> RedisBudget:
        return RedisBudget(REDIS_URL, key, per_minute, 10, prefix="pbxbot:test:")

    one, two = budget(), budget()
    async with (
        fast_client(sim.url, retries=0, budget=one) as a,
        fast_client(sim.url, retries=0, budget=two) as b,
    ):
        sim.stats.clear()
        started = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(_blast(a, 180, 0), _blast(b, 180, 1000)), 60)
        elapsed = time.monotonic() - started
        failures = [r for batch in results for r in batch if isinstance(r, BaseException)]
        assert failures == []  # 0 x 429
        assert sim.stats["GET incoming-routes"] == 360
        assert not one.degraded and not two.degraded
        # 360 calls at 82.5 a second for both together (10 back to back): not 165 each
        assert elapsed >= (360 - 10) / (per_minute / 60) * 0.9
        await _cleanup(one)


async def test_two_replicas_each_with_its_own_budget_would_be_blocked(sim):
    """The control: the same load without sharing is refused by the simulated nginx."""
    _scaled_nginx(sim)
    per_minute = 165 * 30
    async with (
        fast_client(sim.url, retries=0, budget=LocalBudget(per_minute, 10)) as a,
        fast_client(sim.url, retries=0, budget=LocalBudget(per_minute, 10)) as b,
    ):
        results = await asyncio.wait_for(asyncio.gather(_blast(a, 180, 0), _blast(b, 180, 1000)), 60)
    refused = [r for batch in results for r in batch if isinstance(r, PbxRateLimited)]
    assert refused


async def test_priorities_hold_across_replicas():
    await _redis_or_skip()
    key = _key("priorities")
    a = RedisBudget(REDIS_URL, key, 600, 2, background_share=1.0, prefix="pbxbot:test:")
    b = RedisBudget(REDIS_URL, key, 600, 2, background_share=1.0, prefix="pbxbot:test:")
    try:
        await _drain(a, 2)
        order: list[tuple[Priority, int]] = []
        await asyncio.gather(
            _take_in_order(a, [Priority.COMMAND] * 4, order),
            _take_in_order(b, [Priority.BACKGROUND] * 4, order),
        )
        levels = [level for level, _ in order]
        assert levels == [Priority.COMMAND] * 4 + [Priority.BACKGROUND] * 4
    finally:
        await _cleanup(a)
        await b.aclose()


async def test_redis_down_falls_back_to_a_share_of_the_rate(caplog):
    caplog.set_level(logging.WARNING, logger="pbxbot.pbx")
    budget = RedisBudget("redis://127.0.0.1:9/0", _key("down"), 6000, 10, fallback_share=0.5)
    try:
        started = time.monotonic()
        for _ in range(10):
            await asyncio.wait_for(budget.acquire(), 10)
        elapsed = time.monotonic() - started
    finally:
        await budget.aclose()
    assert budget.degraded
    # 50 a second alone, starting empty: 10 calls take 0.2 s, not the shared rate's 0 s burst
    assert elapsed >= 10 / 50 * 0.9
    warnings = [r for r in caplog.records if "PBX budget in Redis unavailable" in r.getMessage()]
    assert len(warnings) == 1


async def _cleanup(budget: RedisBudget) -> None:
    redis = budget._client()
    await redis.delete(*budget.keys)
    await budget.aclose()


# ---------------------------------------------------------------- wiring


def test_the_budget_is_local_without_redis_and_shared_with_it(tmp_path):
    base = '[pbx.office]\nurl = "https://PBX.example:8443"\napi_key = "k"\nrate_limit_per_min = 150\n'
    (tmp_path / "local.toml").write_text(base + "[pbx_budget]\nbackground_share = 0.1\n")
    settings = load_settings(tmp_path / "local.toml")
    local = pbx_budget(settings, settings.pbx["office"])
    assert isinstance(local, LocalBudget)
    assert local.per_minute == 150 and local.background_share == 0.1

    (tmp_path / "shared.toml").write_text(base + '[redis]\nurl = "redis://127.0.0.1:6379/3"\n')
    settings = load_settings(tmp_path / "shared.toml")
    shared = pbx_budget(settings, settings.pbx["office"])
    assert isinstance(shared, RedisBudget)
    assert shared.url == "redis://127.0.0.1:6379/3" and shared.fallback_share == 0.5
    assert budget_key(settings.pbx["office"]) == "pbx.example:8443"
    assert shared.keys[0].endswith("pbx.example:8443:bucket")
