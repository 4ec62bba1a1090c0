"""Whole or nothing: the fault matrix.

Every write step of four plans (the manual's /addnumber, a lone login whose
route names the account it creates, a two-login CSV, and the undo of the
manual's plan) meets every way a PBX can answer after or instead of a write:
500/502/503/504 before or after the save, a connection dropped after it, no
answer in time, and 2xx bodies that are not MikoPBX's shape. Alone, the plan
must end applied with the PBX exactly as planned; followed by a refusal of a
later step, it must end rolled back with the PBX exactly as before. Judged by
reading the simulator's records, as an admin would look at the PBX."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from bot.plans.commands import AddNumbers, parse, parse_csv
from bot.plans.executor import ApplyStatus, Executor
from bot.plans.planner import Plan, plan_add_numbers, plan_undo
from bot.plans.snapshot import SnapshotReader
from pbx.models import SECRET_MASK
from sandbox.mikopbx import MikoPbxSimulator
from tests.conftest import fast_client, start_demo_sim

PASSWORDS = {"847900": "pw-847900", "0053248": "pw-0053248", "847901": "pw-847901", "847902": "pw-847902"}
TIMEOUT = 0.4  # the client's; a "timeout" fault answers later than this

FAULTS: dict[str, dict[str, Any]] = {
    **{f"{s} before": {"status": s} for s in (500, 502, 503, 504)},
    **{f"{s} after": {"status": s, "when": "after"} for s in (500, 502, 503, 504)},
    "dropped after": {"drop": True, "when": "after"},
    "timeout after": {"delay": TIMEOUT * 3, "when": "after"},
    "data [] after": {"body": [], "when": "after"},
    'data "x" after': {"body": "x", "when": "after"},
    "id of the wrong type after": {"body": {"id": [1], "username": 1}, "when": "after"},
    "HTML 200 after": {"body": "<html><body>Bad gateway</body></html>", "when": "after"},
    "HTML 200 before": {"body": "<html><body>Maintenance</body></html>"},
}

# The API call each kind of step makes: (method, path glob)
CALLS = {
    "create_provider": ("POST", "/sip-providers"),
    "update_provider": ("PUT", "/sip-providers/*"),
    "delete_provider": ("DELETE", "/sip-providers/*"),
    "create_route": ("POST", "/incoming-routes"),
    "update_route": ("PUT", "/incoming-routes/*"),
    "delete_route": ("DELETE", "/incoming-routes/*"),
}


@dataclass(frozen=True)
class Case:
    plan: str  # "manual" | "lone" | "csv" | "undo"
    kinds: tuple[str, ...]  # the plan's step kinds, checked before faults go in


CASES = [
    Case("manual", ("create_provider", "update_provider", "update_route", "create_route")),
    Case("lone", ("create_provider", "create_route")),
    Case(
        "csv",
        (
            "create_provider",
            "create_provider",
            "update_provider",
            "update_route",
            "create_route",
            "create_route",
        ),
    ),
    Case("undo", ("delete_route", "update_route", "update_provider", "delete_provider")),
]


def canonical(sim: MikoPbxSimulator) -> dict[str, Any]:
    """The PBX as an admin judges it: accounts by login@host, routes by what they
    do (their ids and priorities are the PBX's to choose), no duplicates hidden."""
    providers = copy.deepcopy(sim.state.providers)
    names = {pid: f"{p['username']}@{p['host']}" for pid, p in providers.items()}
    accounts = sorted(
        (names[pid], sorted((k, repr(v)) for k, v in p.items() if k != "id")) for pid, p in providers.items()
    )
    routes = sorted(
        sorted(
            (k, names.get(v, v) if k == "provider" else repr(v))
            for k, v in r.items()
            if k not in ("id", "priority")
        )
        for r in sim.state.routes.values()
    )
    return {"accounts": accounts, "routes": routes}


COMMANDS = {
    "manual": "/addnumber zadarma 847900 → IVR",
    "lone": "/addnumber novofon 0053248 → Sales",
    "undo": "/addnumber zadarma 847900 → IVR",  # applied, then undone
}


async def make_plan(client, which: str) -> Plan:
    reader = SnapshotReader(client)
    if which == "csv":
        intent, _ = parse_csv("847901;x;201\n847902;y;Sales\n", "zadarma")
    else:
        one = parse(COMMANDS[which])
        intent = AddNumbers(one.provider, (one,))
    plan = plan_add_numbers(intent, await reader.read(host=intent.provider.host))
    if which != "undo":
        return plan
    applied = await executor(client).apply(plan, PASSWORDS)
    assert applied.status is ApplyStatus.APPLIED, applied.error
    fresh = await SnapshotReader(client).read(host=plan.host)
    return plan_undo(plan.steps, applied.results, fresh, pbx="demo")


def executor(client) -> Executor:
    return Executor(client, reload_wait=0, verify_timeout=2, verify_interval=0.05)


async def start_sim() -> MikoPbxSimulator:
    return await start_demo_sim(registration_delay=0.01)


async def planned_state(case: Case) -> dict[str, Any]:
    """The PBX after the plan, applied where nothing goes wrong."""
    sim = await start_sim()
    try:
        async with fast_client(sim.url, name="demo", timeout=5) as client:
            plan = await make_plan(client, case.plan)
            assert (await executor(client).apply(plan, PASSWORDS)).status is ApplyStatus.APPLIED
        return canonical(sim)
    finally:
        await sim.stop()


_PLANNED: dict[str, dict[str, Any]] = {}


def occurrences(kinds: tuple[str, ...], upto: int) -> int:
    """How many earlier steps make the same API call as step `upto`."""
    return sum(1 for kind in kinds[:upto] if CALLS[kind] == CALLS[kinds[upto]])


def matrix() -> list[Any]:
    params = []
    for case in CASES:
        for step in range(len(case.kinds)):
            for fault in FAULTS:
                for then_refused in (False, True):
                    ident = f"{case.plan}-step{step}-{fault}{'-then-refused' if then_refused else ''}"
                    params.append(pytest.param(case, step, fault, then_refused, id=ident))
    return params


def refusal_for(case: Case, step: int, fault: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    """A 422 refusal of a later step whose API call differs from the faulty one's."""
    for later in range(len(case.kinds) - 1, step, -1):
        if CALLS[case.kinds[later]] != CALLS[case.kinds[step]]:
            method, glob = CALLS[case.kinds[later]]
            # both tries of that step are refused: it cannot land, so the plan rolls back
            return later, {
                "path": glob,
                "method": method,
                "status": 422,
                "count": 2,
                "skip": occurrences(case.kinds, later),
                "message": "Simulated refusal",
            }
    return None


@pytest.mark.parametrize(("case", "step", "fault", "then_refused"), matrix())
async def test_every_write_lands_whole_or_not_at_all(case, step, fault, then_refused):
    if case.plan not in _PLANNED:
        _PLANNED[case.plan] = await planned_state(case)
    sim = await start_sim()
    try:
        async with fast_client(sim.url, name="demo", timeout=TIMEOUT, retries=1) as client:
            plan = await make_plan(client, case.plan)
            assert tuple(s.kind.value for s in plan.steps) == case.kinds
            before = canonical(sim)
            refusal = refusal_for(case, step, FAULTS[fault]) if then_refused else None
            if then_refused and refusal is None:
                pytest.skip("no later step with another API call to refuse")
            method, glob = CALLS[case.kinds[step]]
            sim.inject(glob, method=method, skip=occurrences(case.kinds, step), **FAULTS[fault])
            if refusal is not None:
                sim.inject(**refusal[1])
            result = await executor(client).apply(plan, PASSWORDS)
        after = canonical(sim)
        if then_refused:
            assert result.status is ApplyStatus.ROLLED_BACK, (result.error, result.leftovers)
            assert result.failed_step == refusal[0]
            assert after == before, "rolled back, so the PBX must be exactly as before"
        else:
            assert result.status is ApplyStatus.APPLIED, (result.error, result.leftovers)
            assert after == _PLANNED[case.plan], "applied, so the PBX must be exactly as planned"
        logins = [p["username"] for p in sim.state.providers.values()]
        assert len(logins) == len(set(logins)), "a duplicate account"
        dids = [(r.get("number"), r.get("provider")) for r in sim.state.routes.values()]
        assert len(dids) == len(set(dids)), "a duplicate route"
    finally:
        await sim.stop()


async def test_a_write_that_keeps_failing_is_rolled_back_with_itself(sim, client):
    """A 500 answered after each save of step 2, and a refusal of step 3 after
    that: every step that landed (step 2 too) is put back."""
    plan = await make_plan(client, "manual")
    before = canonical(sim)
    sim.inject("/incoming-routes/*", method="PUT", status=500, when="after", count=5)
    sim.inject("/incoming-routes", method="POST", status=422, count=2)
    result = await executor(client).apply(plan, PASSWORDS)
    assert result.status is ApplyStatus.ROLLED_BACK and result.failed_step == 3
    assert canonical(sim) == before


async def test_what_cannot_be_put_back_is_named_with_its_state_now(sim, client):
    """The PBX refuses every write to routes after step 2 lands: step 2 cannot be
    put back, and the plan says so, with the route as it is now."""
    plan = await make_plan(client, "manual")
    sim.inject("/incoming-routes", method="POST", status=422, count=2)
    sim.inject("/incoming-routes/*", method="PUT", status=403, count=3, skip=1)
    result = await executor(client).apply(plan, PASSWORDS)
    assert result.status is ApplyStatus.FAILED
    (left,) = result.leftovers
    assert (left.step, left.kind, left.record, left.now) == (2, "update_route", "2", "as_planned")
    assert left.state["providerid"] is None and sim.state.routes[2]["provider"] is None
    assert left.before["providerid"] == plan.steps[1].target  # what it should go back to
    # the other steps were put back
    assert sim.state.providers[plan.steps[1].target]["manualattributes"] == ""
    assert "847900" not in [p["username"] for p in sim.state.providers.values()]


async def test_secrets_never_leave_the_executor(sim, client):
    events: list[tuple[str, dict[str, Any]]] = []
    plan = await make_plan(client, "manual")
    sim.inject("/sip-providers", method="POST", status=502, when="after")
    ex = Executor(
        client,
        reload_wait=0,
        verify_timeout=2,
        verify_interval=0.05,
        on_event=lambda name, detail: events.append((name, detail)),
    )
    assert (await ex.apply(plan, PASSWORDS)).status is ApplyStatus.APPLIED
    assert "pw-847900" not in repr(events)
    assert [n for n, _ in events][:3] == ["apply_started", "step_intent", "write_unknown"]
    assert SECRET_MASK not in repr([d.get("result") for n, d in events if n == "step_applied"])
