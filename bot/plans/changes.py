"""A change's vocabulary, shared by its lifecycle, its secrets and its recovery:
the plan statuses and their one transition table, what a plan needs next, who
acts, the error, a PBX as changes use it, and `Ledger`, the state and the
bookkeeping the three share (the repositories, the audit trail, a plan's status
compare-and-set).

    bot/plans/lifecycle.py  propose, approve, apply, cancel, expire, undo
    bot/plans/secrets.py    SIP passwords: bound to a plan, asked for, held, found pasted
    bot/plans/lease.py      the apply lease a live apply holds
    bot/plans/recovery.py   plans a dead process left applying, reconciled from the journal
    bot/plans/service.py    `Changes`, the one door the handlers, the CLI and the scheduler use
"""

from __future__ import annotations

import asyncio
import contextvars
import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from bot.config import PolicySettings
from bot.errors import ChangeError
from pbx.base import Pbx
from storage.aio import AsyncRepos
from storage.repos import Repos
from storage.tables import AuditRow, PlanRow, utcnow

from .destinations import label
from .executor import ApplyResult
from .planner import Plan, PlanKind, Step
from .policy import LOCAL_ADMIN_ID, Action, Tally, may, tally
from .snapshot import Snapshot, SnapshotReader
from .vault import Vault


class PlanStatus(enum.StrEnum):
    PROPOSED = "proposed"
    APPROVED = "approved"
    APPLYING = "applying"
    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    STALE = "stale"


PROPOSED, APPROVED, APPLYING = PlanStatus.PROPOSED, PlanStatus.APPROVED, PlanStatus.APPLYING
APPLIED, ROLLED_BACK, FAILED = PlanStatus.APPLIED, PlanStatus.ROLLED_BACK, PlanStatus.FAILED
CANCELLED, EXPIRED, STALE = PlanStatus.CANCELLED, PlanStatus.EXPIRED, PlanStatus.STALE
OPEN = (PROPOSED, APPROVED)
ENDED = (APPLIED, ROLLED_BACK, FAILED, CANCELLED, EXPIRED, STALE)

# The one table of moves a plan may make; every status change goes through `_move`.
TRANSITIONS: dict[PlanStatus, frozenset[PlanStatus]] = {
    PROPOSED: frozenset({APPROVED, CANCELLED, EXPIRED}),
    APPROVED: frozenset({APPLYING, CANCELLED, EXPIRED}),
    APPLYING: frozenset({APPROVED, APPLIED, ROLLED_BACK, FAILED, STALE}),
    **{status: frozenset() for status in ENDED},
}


class Next(enum.StrEnum):
    """What a plan needs next, as the core decides it."""

    WAIT_APPROVALS = "wait_approvals"  # the card waits for approvers
    NEED_SECRET = "need_secret"  # a SIP password is still to come, in private
    APPLY = "apply"  # approved with all it needs: apply it now
    RUNNING = "running"  # an apply is running
    ENDED = "ended"  # nothing more: the card shows the outcome


# the PBX calls made for the plan at hand: each is audited (method, path, status; never a body)
api_calls: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("calls", default=None)


@dataclass(frozen=True)
class Actor:
    id: int
    name: str = ""


LOCAL_ADMIN = Actor(LOCAL_ADMIN_ID, "local admin")


@dataclass
class PbxHandle:
    """One configured PBX as the change service uses it."""

    client: Pbx
    reader: SnapshotReader
    reload_wait: float = 15.0
    verify_timeout: float = 30.0
    verify_interval: float = 3.0

    @classmethod
    def of(cls, client: Pbx, **kwargs: Any) -> PbxHandle:
        handle = cls(client, SnapshotReader(client), **kwargs)
        listeners = getattr(client, "listeners", None)
        if listeners is not None and _record_call not in listeners:
            listeners.append(_record_call)
        return handle


def _record_call(record: Any) -> None:
    calls = api_calls.get()
    if calls is not None:
        call = {"method": record.method, "path": record.path, "status": record.status}
        if getattr(record, "joined", False):  # answered by a call begun for someone else, or ahead
            call["joined"] = True
        calls.append(call)


@dataclass(frozen=True)
class CardFacts:
    """A plan's state as its card shows it (besides the plan): see Lifecycle.card_facts."""

    tally: Tally
    approvers: list[str]  # the names of those who approved this version
    missing: list[str]  # logins whose SIP password is still to come


@dataclass
class Proposal:
    plan: Plan
    row: PlanRow | None  # None: the plan changes nothing, and nothing is stored
    tally: Tally | None = None
    facts: CardFacts | None = None  # for the card of a plan just stored, when known without asking
    card: Any = None  # what `propose(card=...)` made of it while the PBX answered


@dataclass
class Outcome:
    row: PlanRow
    result: ApplyResult | None = None
    replacement: Proposal | None = None  # the new version of a stale plan


@dataclass
class Recovery:
    """A plan found interrupted: how it ended, or why it waits (`postponed`: the PBX is unreachable)."""

    row: PlanRow
    result: ApplyResult | None
    postponed: str | None = None

    @property
    def whole(self) -> bool:
        return self.postponed is None and self.row.status in (APPLIED, ROLLED_BACK)


def display_names(plan: Plan, snapshot: Snapshot) -> dict[str, dict[str, str]]:
    """Names the plan card shows for the destinations and accounts its steps refer to."""
    records = [r for s in plan.steps for r in (s.before, s.after) if r]
    used_ext = {r.get("extension") for r in records if r.get("extension")}
    used_pid = {r.get("providerid") for r in records if r.get("providerid")}
    return {
        "destinations": {d.value: label(d) for d in snapshot.destinations if d.value in used_ext},
        "providers": {
            p.id: f"{p.username or p.description} @ {p.host}" for p in snapshot.providers if p.id in used_pid
        },
    }


class Ledger:
    """What lifecycle, secrets and recovery share: the repositories (`store` for code
    off the event loop and tests, `db` awaited), the policy, the vault, the PBXs, the
    clock; the audit trail and a plan's status moves."""

    def __init__(
        self,
        store: Repos,
        policy: PolicySettings,
        vault: Vault,
        pbxs: Mapping[str, PbxHandle],
        *,
        clock: Any = utcnow,
    ):
        self.store = store  # synchronous: for tests and code already off the event loop
        self.db = AsyncRepos(store)  # what the core awaits: the database never blocks the event loop
        for handle in pbxs.values():  # each PBX's mirror lives in this database
            handle.reader.attach(self.db)
        self.policy = policy
        self.vault = vault
        self.pbxs = pbxs
        self.clock = clock
        self._held: dict[str, list[Callable[[], list[AuditRow]]]] = {}  # plan id -> rows to write (`hold`)
        self._writing: dict[str, asyncio.Future[None]] = {}  # plan id -> its held rows being written

    def handle(self, name: str) -> PbxHandle:
        if name not in self.pbxs:
            raise ChangeError("unknown_pbx", pbx=name, known=", ".join(sorted(self.pbxs)))
        return self.pbxs[name]

    async def audit(self, event: str, actor: Actor | None, row: PlanRow | None = None, **detail: Any) -> None:
        await self.add(self.event(event, actor, row, **detail))

    async def add(self, *rows: AuditRow) -> None:
        """Audit rows, after the rows still held for their plans (`hold`): a plan's trail
        is in order whoever writes next."""
        await self._write(dict.fromkeys(r.plan_id for r in rows if r.plan_id), rows)

    def hold(self, plan_id: str, rows: Callable[[], list[AuditRow]]) -> None:
        """A proposal's audit rows, made and written by `write_held` once its card is out
        (or before the plan's next audit row, whoever writes it). Made then, not now: a
        row is a model to validate (~0.05 ms each), and the card is waiting."""
        self._held.setdefault(plan_id, []).append(rows)

    async def write_held(self, plan_id: str) -> None:
        await self._write([plan_id], ())

    async def _write(self, plans: Iterable[str], rows: Iterable[AuditRow]) -> None:
        """The rows held for `plans`, then `rows`, in one transaction. A write of a plan's
        held rows under way goes first; failed, they are held again."""
        plans = list(plans)
        while waits := [w for plan in plans if (w := self._writing.get(plan)) is not None]:
            await asyncio.shield(waits[0])
        held = {plan: self._held.pop(plan) for plan in plans if plan in self._held}
        made = {plan: [r for make in makers for r in make()] for plan, makers in held.items()}
        rows = list(rows)
        if not held and not rows:
            return
        writing = asyncio.get_running_loop().create_future()
        for plan in held:
            self._writing[plan] = writing
        try:
            await self.db.audit.add(*(r for rows_of in made.values() for r in rows_of), *rows)
        except BaseException:
            for plan, rows_of in made.items():
                self._held[plan] = [partial(list, rows_of), *self._held.get(plan, [])]
            raise
        finally:
            for plan in held:
                del self._writing[plan]
            writing.set_result(None)

    def event(
        self,
        event: str,
        actor: Actor | None,
        row: PlanRow | None = None,
        *,
        at: datetime | None = None,
        **detail: Any,
    ) -> AuditRow:
        return AuditRow(
            at=at or self.clock(),
            plan_id=row.id if row else detail.pop("plan_id", None),
            pbx=row.pbx if row else detail.pop("pbx", None),
            actor_id=actor.id if actor else None,
            actor_name=actor.name if actor else "",
            event=event,
            detail=detail,
        )

    async def flush_calls(
        self, calls: list[dict[str, Any]], actor: Actor | None, row: PlanRow | None, **kw: Any
    ) -> None:
        if calls:
            await self.add(*(self.event("api_call", actor, row, **call, **kw) for call in calls))
            calls.clear()

    async def move(self, plan_id: str, from_status: Any, to_status: PlanStatus, **fields: Any) -> bool:
        """Compare-and-set a plan's status, from whichever of `from_status` `TRANSITIONS` allows."""
        given = [from_status] if isinstance(from_status, str) else list(from_status)
        sources = [s for s in given if to_status in TRANSITIONS[PlanStatus(s)]]
        if not sources:
            raise AssertionError(f"a plan never moves from {given} to {to_status}")
        return await self.db.plans.transition(plan_id, sources, to_status, **fields)

    async def get(self, plan_id: str) -> PlanRow:
        row = await self.db.plans.get(plan_id)
        if row is None:
            raise ChangeError("no_plan", plan=plan_id)
        return row

    async def require(self, actor: Actor, action: Action) -> None:
        if not may(self.policy, actor.id, action):
            await self.audit("refused", actor, None, action=action.value)
            raise ChangeError("not_allowed", action=action.value)

    @staticmethod
    def plan_of(row: PlanRow) -> Plan:
        return Plan(
            pbx=row.pbx,
            kind=PlanKind(row.kind),
            steps=[Step.from_dict(s) for s in row.steps],
            fingerprint=row.fingerprint,
            host=row.host,
            notes=list(row.notes),
            summary=dict(row.summary),
            needs_secret=list(row.needs_secret),
        )

    async def tally_of(self, row: PlanRow) -> Tally:
        approvals = await self.db.approvals.of(row.id, row.version)
        approvers = [a.user_id for a in approvals if a.decision == "approve"]
        return tally(self.policy, row.kind, row.proposer_id, approvers)
