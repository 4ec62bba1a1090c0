"""Recovery: a plan left `applying` by a process that died is reconciled as soon
as its lease expires (at once when its owner is known dead): the PBX is read for
every journaled step and the plan ends applied (every step had landed) or rolled
back. Also the cards that could not be edited when their plan ended."""

from __future__ import annotations

from typing import Any

from pbx.budget import Priority, at
from pbx.errors import PbxError
from storage.tables import PlanRow

from .changes import APPLYING, Ledger, Recovery, api_calls
from .lease import Lease
from .lifecycle import Lifecycle


class Reconciler:
    def __init__(self, ledger: Ledger, lifecycle: Lifecycle, lease: Lease):
        self.ledger = ledger
        self.db = ledger.db
        self.lifecycle = lifecycle
        self.lease = lease

    @at(Priority.APPLY)
    async def recover(self, *, pbx: str | None = None) -> list[Recovery]:
        """Reconcile every plan a dead process left `applying`: at once when its
        owner is known dead, else as soon as its lease expires; never while a live
        apply holds it. Run by the bot at start and by housekeeping, by every CLI
        command that writes, and by `pbxbot recover`."""
        done: list[Recovery] = []
        for row in await self.db.plans.find(status=[APPLYING], pbx=pbx, limit=1000):
            if row.pbx not in self.ledger.pbxs:
                continue
            if not await self.lease.take_over(row):
                continue  # a live apply holds it, or another process took it a moment ago
            done.append(await self._reconcile(row, previous=row.lease_owner))
        return done

    async def _reconcile(self, row: PlanRow, *, previous: str | None) -> Recovery:
        journal = await self.db.audit.trail(plan_id=row.id, limit=100_000)
        tried = 0
        known_routes: list[str] | None = None
        for event in journal:
            if event.event in ("step_intent", "step_applied"):
                tried = max(tried, int(event.detail.get("step", -1)) + 1)
            elif event.event == "apply_started":
                known_routes = [str(r) for r in event.detail.get("routes", [])]
        plan = self.ledger.plan_of(row)
        if known_routes is None:  # journaled before this version: the routes the plan itself names
            known_routes = [s.target for s in plan.steps if not s.kind.on_provider and s.target]
        await self.ledger.audit("recovery_started", None, row, previous_owner=previous, tried=tried)
        calls: list[dict[str, Any]] = []
        executor = self.lifecycle.executor(row, None, calls)
        token = api_calls.set(calls)
        try:
            await self.ledger.handle(row.pbx).client.list_providers()  # is the PBX there to be read?
        except PbxError as exc:
            await self.lease.free(row.id)  # try again later
            await self.ledger.audit("recovery_postponed", None, row, error=str(exc))
            return Recovery(await self.ledger.get(row.id), None, postponed=str(exc))
        finally:
            api_calls.reset(token)
            await self.ledger.flush_calls(calls, None, row)
        token = api_calls.set(calls)
        try:
            async with self.lease.held(row.id, executor):
                result = await executor.reconcile(plan, tried, known_routes)
        finally:
            api_calls.reset(token)
            await self.ledger.flush_calls(calls, None, row)
        await self.db.plans.update(row.id, card_stale=True)
        outcome = await self.lifecycle.finish(row, None, result, recovered=result.status.value, tried=tried)
        return Recovery(outcome.row, result)

    async def cards_to_refresh(self) -> list[PlanRow]:
        """Plans that ended where no card could be edited (`pbxbot recover`)."""
        return await self.db.plans.find(card_stale=True, limit=100)

    async def card_refreshed(self, plan_id: str) -> None:
        await self.db.plans.update(plan_id, card_stale=False)
