"""The change lifecycle: propose, approve, apply, cancel, expire, undo, recover.

    proposed -> approved -> applying -> applied | rolled_back | failed
    proposed | approved -> cancelled | expired
    applying -> stale (the PBX changed under the plan; a new version is proposed)

A live apply holds a lease on its plan (renewed while it runs). A plan left
`applying` by a process that died is reconciled as soon as its lease expires
(at once when its owner is known dead): the PBX is read for every journaled
step and the plan ends applied (every step had landed) or rolled back.

The same calls serve the Telegram handlers, the CLI and the scheduler. Every
step is an audit event; every API call made for a plan is one too (method,
path, status: never a body). SIP passwords are sealed by the vault and erased
when the plan ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import os
import secrets as _secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.config import PolicySettings
from bot.errors import ChangeError
from pbx.base import Pbx
from pbx.errors import PbxError
from storage.aio import AsyncStore
from storage.repo import Store
from storage.tables import ApprovalRow, AuditRow, PlanRow, utcnow

from .commands import (
    AddNumber,
    AddNumbers,
    FixHost,
    Intent,
    RemoveNumber,
    RouteNumber,
    Undo,
    intent_from_dict,
    intent_to_dict,
)
from .destinations import label
from .executor import ApplyError, ApplyResult, ApplyStatus, Executor
from .planner import (
    Plan,
    PlanError,
    PlanKind,
    Step,
    plan_add_numbers,
    plan_fix_host,
    plan_remove,
    plan_route,
    plan_undo,
)
from .policy import LOCAL_ADMIN_ID, Action, Tally, may, refuse_approval, refuse_cancel, tally
from .snapshot import Snapshot, SnapshotReader
from .validate import sip_password, sip_passwords
from .vault import Vault, VaultError

log = logging.getLogger("pbxbot.changes")


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


LEASE = timedelta(seconds=60)  # an apply renews its lease every third of this


def process_id() -> str:
    """Who holds a lease: host, pid, and a nonce (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_secrets.token_hex(3)}"


def owner_is_dead(owner: str | None) -> bool:
    """A lease owner on this host whose process no longer runs."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _LIVE_OWNERS  # this process, but not a lease it holds now
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_LIVE_OWNERS: set[str] = set()

_calls: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("calls", default=None)


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
    calls = _calls.get()
    if calls is not None:
        calls.append({"method": record.method, "path": record.path, "status": record.status})


@dataclass
class Proposal:
    plan: Plan
    row: PlanRow | None  # None: the plan changes nothing, and nothing is stored
    tally: Tally | None = None


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


class Changes:
    def __init__(
        self,
        store: Store,
        policy: PolicySettings,
        vault: Vault,
        pbxs: Mapping[str, PbxHandle],
        *,
        clock: Any = utcnow,
        default_extension: str = "busy",
        lease: timedelta = LEASE,
    ):
        self.owner = process_id()
        self.lease = lease
        self.store = store  # synchronous: for tests and code already off the event loop
        self.db = AsyncStore(store)  # what the core awaits: the database never blocks the event loop
        self.policy = policy
        self.vault = vault
        self.pbxs = pbxs
        self.clock = clock
        self.default_extension = default_extension

    # ------------------------------------------------------------------ helpers

    def _pbx(self, name: str) -> PbxHandle:
        if name not in self.pbxs:
            raise ChangeError("unknown_pbx", pbx=name, known=", ".join(sorted(self.pbxs)))
        return self.pbxs[name]

    async def _audit(
        self, event: str, actor: Actor | None, row: PlanRow | None = None, **detail: Any
    ) -> None:
        await self.db.audit(self._event(event, actor, row, **detail))

    def _event(self, event: str, actor: Actor | None, row: PlanRow | None = None, **detail: Any) -> AuditRow:
        return AuditRow(
            at=self.clock(),
            plan_id=row.id if row else detail.pop("plan_id", None),
            pbx=row.pbx if row else detail.pop("pbx", None),
            actor_id=actor.id if actor else None,
            actor_name=actor.name if actor else "",
            event=event,
            detail=detail,
        )

    async def _flush_calls(
        self, calls: list[dict[str, Any]], actor: Actor | None, row: PlanRow | None, **kw
    ) -> None:
        if calls:
            await self.db.audit(*(self._event("api_call", actor, row, **call, **kw) for call in calls))
            calls.clear()

    async def _move(self, plan_id: str, from_status: Any, to_status: PlanStatus, **fields: Any) -> bool:
        """Compare-and-set a plan's status, from whichever of `from_status` `TRANSITIONS` allows."""
        given = [from_status] if isinstance(from_status, str) else list(from_status)
        sources = [s for s in given if to_status in TRANSITIONS[PlanStatus(s)]]
        if not sources:
            raise AssertionError(f"a plan never moves from {given} to {to_status}")
        return await self.db.transition(plan_id, sources, to_status, **fields)

    async def _get(self, plan_id: str) -> PlanRow:
        row = await self.db.get_plan(plan_id)
        if row is None:
            raise ChangeError("no_plan", plan=plan_id)
        return row

    async def _require(self, actor: Actor, action: Action) -> None:
        if not may(self.policy, actor.id, action):
            await self._audit("refused", actor, None, action=action.value)
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
        approvals = await self.db.approvals(row.id, row.version)
        approvers = [a.user_id for a in approvals if a.decision == "approve"]
        return tally(self.policy, row.kind, row.proposer_id, approvers)

    # ------------------------------------------------------------------ propose

    async def plan(self, pbx: str, intent: Intent) -> tuple[Plan, Snapshot]:
        """Read the PBX and plan, storing nothing (what `pbxbot plan` shows)."""
        handle = self._pbx(pbx)
        if isinstance(intent, AddNumber):
            intent = AddNumbers(intent.provider, (intent,))
        if isinstance(intent, AddNumbers):
            snapshot = await handle.reader.read(host=intent.provider.host)
            return plan_add_numbers(intent, snapshot, default_extension=self.default_extension), snapshot
        if isinstance(intent, RouteNumber):
            snapshot = await handle.reader.read(number=intent.number)
            return plan_route(intent, snapshot), snapshot
        if isinstance(intent, RemoveNumber):
            snapshot = await handle.reader.read(number=intent.number)
            return plan_remove(intent, snapshot), snapshot
        if isinstance(intent, FixHost):
            snapshot = await handle.reader.read(host=intent.host)
            return plan_fix_host(intent, snapshot, default_extension=self.default_extension), snapshot
        if isinstance(intent, Undo):
            original = await self._get(intent.plan_id)
            if original.status not in (APPLIED, FAILED) or not original.results:
                raise ChangeError("undo_not_applied", plan=original.id, status=original.status)
            if original.pbx != pbx:
                raise ChangeError("undo_other_pbx", plan=original.id, pbx=original.pbx)
            snapshot = await handle.reader.read(host=original.host, fresh=True)
            steps = [Step.from_dict(s) for s in original.steps]
            results = {int(k): v for k, v in original.results.items()}
            return plan_undo(steps, results, snapshot, pbx=pbx), snapshot
        raise ChangeError("not_a_change")

    async def propose(
        self,
        actor: Actor,
        pbx: str,
        intent: Intent,
        *,
        secrets: Mapping[str, str] | None = None,
        command: str = "",
        chat_id: int | None = None,
        version: int = 1,
    ) -> Proposal:
        await self._require(actor, Action.PROPOSE)
        secrets = sip_passwords(secrets, also=ChangeError)  # one validator for chat, CSV and CLI
        calls: list[dict[str, Any]] = []
        token = _calls.set(calls)
        try:
            plan, snapshot = await self.plan(pbx, intent)
            plan.summary["names"] = display_names(plan, snapshot)
        except PlanError as exc:
            await self._audit("plan_refused", actor, None, pbx=pbx, code=exc.code, command=command)
            raise
        finally:
            _calls.reset(token)
            await self._flush_calls(calls, actor, None, pbx=pbx)
        if plan.empty:
            await self._audit("plan_empty", actor, None, pbx=pbx, command=command)
            return Proposal(plan, None)
        now = self.clock()
        row = PlanRow(
            id="",
            pbx=pbx,
            kind=plan.kind.value,
            status=PROPOSED,
            version=version,
            command=command,
            intent=intent_to_dict(intent),
            proposer_id=actor.id,
            proposer_name=actor.name,
            chat_id=chat_id,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(hours=self.policy.expiry_hours),
            fingerprint=plan.fingerprint,
            host=plan.host,
            steps=[s.to_dict() for s in plan.steps],
            notes=plan.notes,
            summary=plan.summary,
            needs_secret=plan.needs_secret,
            undo_of=intent.plan_id if isinstance(intent, Undo) else None,
        )
        holder = await self.db.add_plan(row, plan.logins)
        if holder is not None:
            logins = plan.logins
            await self._audit("plan_locked_out", actor, None, pbx=pbx, holder=holder, logins=logins[:20])
            raise ChangeError("locked", plan=holder, logins=", ".join(logins[:5]))
        wanted = set(plan.needs_secret)
        if secrets:
            await self.db.put_secrets(
                row.id, self.vault.seal_all({k: v for k, v in secrets.items() if k in wanted})
            )
        await self._audit(
            "proposed", actor, row, kind=row.kind, steps=len(plan.steps), command=command, version=version
        )
        count = await self.tally_of(row)
        if count.done:
            await self._promote(row, actor)
        return Proposal(plan, await self.db.get_plan(row.id), count)

    async def add_secret(
        self, actor: Actor, plan_id: str, login: str | None, password: str
    ) -> tuple[str, bool]:
        """The SIP password of a login the plan creates (asked for in a private chat).
        A named login gets it, replacing an earlier one (the second element says so);
        None: the plan's next login still missing, in the plan's order. Two passwords
        at once never collide: each insert is its own check. Returns the login it went to."""
        row = await self._get(plan_id)
        if actor.id != row.proposer_id and not may(self.policy, actor.id, Action.CANCEL_ANY):
            raise ChangeError("not_allowed", action="secret")
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=plan_id, status=row.status)
        if login is not None and login not in row.needs_secret:
            raise ChangeError("no_such_login", plan=plan_id, login=login)
        password = sip_password(password, also=ChangeError)  # refused with the rule, never echoed
        token = self.vault.seal(password)
        if login is not None:
            replaced = bool(await self.db.put_secret(plan_id, login, token, replace=True))
            await self._audit("secret_replaced" if replaced else "secret_received", actor, row, login=login)
            return login, replaced
        for candidate in await self.missing_secrets(row):
            if await self.db.put_secret(plan_id, candidate, token, replace=False) is not None:
                await self._audit("secret_received", actor, row, login=candidate)
                return candidate, False
        raise ChangeError("secrets_complete", plan=plan_id)

    async def missing_secrets(self, row: PlanRow) -> list[str]:
        have = await self.db.secrets(row.id)
        return [login for login in row.needs_secret if login not in have]

    async def awaiting_secret(self, user_id: int) -> list[tuple[PlanRow, list[str]]]:
        """Open plans of this proposer still waiting for SIP passwords, oldest first."""
        rows = [r for r in await self.db.plans(status=OPEN, proposer=user_id, limit=500) if r.needs_secret]
        waiting = [(r, await self.missing_secrets(r)) for r in reversed(rows)]
        return [(r, missing) for r, missing in waiting if missing]

    async def pasted_secret(self, pbx: str, text: str) -> tuple[PlanRow, str] | None:
        """The plan of this PBX, and the login, whose sealed SIP password `text` is or holds
        as a word: a password pasted where it must not be. Open and applying plans only."""
        words = {text.strip(), *text.split()} - {""}
        for row in await self.db.plans(pbx=pbx, status=[*OPEN, APPLYING], limit=500):
            for login, token in (await self.db.secrets(row.id)).items():
                try:
                    if self.vault.matches(token, words):
                        return row, login
                except VaultError:
                    continue
        return None

    async def next_step(self, row: PlanRow) -> Next:
        """What happens to the plan next; the handlers only render and send it."""
        if row.status == APPLYING:
            return Next.RUNNING
        if row.status not in OPEN:
            return Next.ENDED
        if await self.missing_secrets(row):
            return Next.NEED_SECRET
        return Next.APPLY if row.status == APPROVED else Next.WAIT_APPROVALS

    async def approvers_of(self, row: PlanRow) -> list[str]:
        return [
            a.user_name or str(a.user_id)
            for a in await self.db.approvals(row.id, row.version)
            if a.decision == "approve"
        ]

    # ------------------------------------------------------------------ approve

    async def _promote(self, row: PlanRow, actor: Actor) -> None:
        if await self._move(row.id, [PROPOSED], APPROVED):
            await self._audit("approved", actor, row, version=row.version)

    async def _check_open(self, row: PlanRow, version: int | None = None) -> None:
        if row.status in OPEN and self.clock() >= row.expires_at:
            await self._end(row, EXPIRED, None)
            raise ChangeError("expired", plan=row.id)
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=row.id, status=row.status)
        if version is not None and version != row.version:
            raise ChangeError("old_version", plan=row.id, version=version)

    async def approve(
        self, actor: Actor, plan_id: str, *, version: int | None = None
    ) -> tuple[PlanRow, Tally]:
        row = await self._get(plan_id)
        await self._check_open(row, version)
        approvals = await self.db.approvals(row.id, row.version)
        already = [a.user_id for a in approvals if a.decision == "approve"]
        reason = refuse_approval(self.policy, actor.id, row.proposer_id, already)
        if reason is not None:
            await self._audit("approval_refused", actor, row, reason=reason)
            raise ChangeError(reason.removeprefix("policy."), plan=row.id)
        await self.db.add_approval(
            ApprovalRow(
                plan_id=row.id,
                version=row.version,
                user_id=actor.id,
                user_name=actor.name,
                decision="approve",
            )
        )
        await self._audit("approval", actor, row, version=row.version)
        count = await self.tally_of(row)
        if count.done:
            await self._promote(row, actor)
        return await self._get(plan_id), count

    async def reject(self, actor: Actor, plan_id: str) -> PlanRow:
        row = await self._get(plan_id)
        await self._check_open(row)
        if not may(self.policy, actor.id, Action.APPROVE):
            await self._audit("approval_refused", actor, row, reason="policy.not_approver")
            raise ChangeError("not_approver", plan=row.id)
        await self.db.add_approval(
            ApprovalRow(
                plan_id=row.id, version=row.version, user_id=actor.id, user_name=actor.name, decision="reject"
            )
        )
        return await self._end(row, CANCELLED, actor, reason="rejected")

    async def cancel(self, actor: Actor, plan_id: str) -> PlanRow:
        row = await self._get(plan_id)
        reason = refuse_cancel(self.policy, actor.id, row.proposer_id)
        if reason is not None:
            await self._audit("cancel_refused", actor, row, reason=reason)
            raise ChangeError(reason.removeprefix("policy."), plan=row.id)
        await self._check_open(row)
        return await self._end(row, CANCELLED, actor, reason="cancelled")

    async def _end(self, row: PlanRow, status: str, actor: Actor | None, **outcome: Any) -> PlanRow:
        """Close an open plan: its locks go, its secrets are erased."""
        if not await self._move(row.id, [*OPEN, APPLYING], status, outcome={**row.outcome, **outcome}):
            current = await self._get(row.id)
            raise ChangeError("plan_closed", plan=row.id, status=current.status)
        await self.db.release_locks(row.id)
        erased = await self.db.erase_secrets(row.id)
        await self._audit(status, actor, row, secrets_erased=erased, **outcome)
        return await self._get(row.id)

    async def expire(self) -> list[PlanRow]:
        """Close every open plan past its expiry (the scheduler calls this)."""
        ended = []
        for row in await self.db.due(OPEN, self.clock()):
            try:
                ended.append(await self._end(row, EXPIRED, None, reason="expired"))
            except ChangeError:
                continue  # approved or applied a moment ago
        return ended

    # ------------------------------------------------------------------ apply

    async def apply(
        self,
        actor: Actor,
        plan_id: str,
        *,
        at_once: bool = False,
        progress: Callable[[PlanRow, int, int], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Apply an approved plan. `at_once`: the local admin applies a proposed
        plan without approvals (`pbxbot plan --apply`), audited as such."""
        row = await self._get(plan_id)
        await self._check_open(row)
        if at_once:
            if actor.id != LOCAL_ADMIN_ID:
                raise ChangeError("not_allowed", action="apply_at_once")
            if await self._move(row.id, [PROPOSED], APPROVED):
                await self._audit("approved_at_once", actor, row)
        if not await self._move(row.id, [APPROVED], APPLYING, **self._lease_fields()):
            current = await self._get(plan_id)
            raise ChangeError("not_approved", plan=plan_id, status=current.status)
        await self._audit("applying", actor, row, owner=self.owner)
        plan = self.plan_of(row)
        secrets = self.vault.open_all(await self.db.secrets(row.id))
        calls: list[dict[str, Any]] = []

        async def on_step(name: str, detail: dict[str, Any]) -> None:
            if progress is not None and name == "step_applied":
                await progress(row, detail["step"] + 1, len(plan.steps))

        executor = self._executor(row, actor, calls, on_step)
        token = _calls.set(calls)
        try:
            async with self._leased(row.id, executor):
                result = await executor.apply(plan, secrets)
        except ApplyError as exc:
            await self._move(row.id, [APPLYING], APPROVED, lease_owner=None, lease_until=None)
            await self._audit("apply_refused", actor, row, error=str(exc))
            raise ChangeError(
                "secret_missing", plan=row.id, logins=", ".join(await self.missing_secrets(row))
            ) from exc
        except PbxError as exc:
            # the stale check could not read the PBX: nothing was written
            await self._move(row.id, [APPLYING], APPROVED, lease_owner=None, lease_until=None)
            await self._audit("apply_refused", actor, row, error=str(exc))
            raise ChangeError("pbx_unreachable", plan=row.id, error=str(exc)) from exc
        finally:
            _calls.reset(token)
            await self._flush_calls(calls, actor, row)
        del secrets
        if result.status is ApplyStatus.STALE:
            return await self._replan(row, actor, result)
        return await self._finish(row, actor, result)

    def _executor(
        self,
        row: PlanRow,
        actor: Actor | None,
        calls: list[dict[str, Any]],
        on_step: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> Executor:
        """An executor for this plan whose every event is journaled in the audit
        trail before the next write (`step_intent` before, `step_applied` after)."""
        handle = self._pbx(row.pbx)

        async def on_event(name: str, detail: dict[str, Any]) -> None:
            # the calls made so far and the event, in one transaction, before the executor goes on
            made = [self._event("api_call", actor, row, **call) for call in calls]
            calls.clear()
            await self.db.audit(*made, self._event(name, actor, row, **detail))
            if on_step is not None:
                await on_step(name, detail)

        return Executor(
            handle.client,
            reader=handle.reader,
            reload_wait=handle.reload_wait,
            verify_timeout=handle.verify_timeout,
            verify_interval=handle.verify_interval,
            on_event=on_event,
        )

    def _lease_fields(self) -> dict[str, Any]:
        return {"lease_owner": self.owner, "lease_until": self.clock() + self.lease}

    @contextlib.asynccontextmanager
    async def _leased(self, plan_id: str, executor: Executor) -> AsyncIterator[None]:
        """Renew the plan's apply lease while the body runs. Should the lease be
        lost (this process stalled past it and another took over), the executor
        stops before its next write and puts back what it wrote."""
        _LIVE_OWNERS.add(self.owner)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.lease.total_seconds() / 3)
                until = self.clock() + self.lease
                if not await self.db.renew_lease(plan_id, self.owner, until):
                    log.error("plan %s: the apply lease was lost; stopping before the next write", plan_id)
                    executor.halt = True
                    return

        task = asyncio.create_task(heartbeat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _finish(self, row: PlanRow, actor: Actor | None, result: ApplyResult, **extra: Any) -> Outcome:
        """End an applying plan as the PBX now is: applied, rolled back, or failed
        with its leftovers (kept as the results an /undo reverts)."""
        outcome = {
            "error": result.error,
            "failed_step": result.failed_step,
            "leftovers": [vars(left) for left in result.leftovers],
            "registration": result.registration,
            **extra,
        }
        results = {str(k): v for k, v in result.results.items()}
        if result.status is not ApplyStatus.APPLIED:  # keep what is still on the PBX, for /undo
            results = {str(left.step): left.state or {} for left in result.leftovers}
        status = {ApplyStatus.APPLIED: APPLIED, ApplyStatus.ROLLED_BACK: ROLLED_BACK}.get(
            result.status, FAILED
        )
        await self.db.update_plan(row.id, results=results)
        ended = await self._end(row, status, actor, **outcome)
        return Outcome(ended, result)

    async def _replan(self, row: PlanRow, actor: Actor, result: ApplyResult) -> Outcome:
        """A stale plan ends; a new version from the same intent is proposed in its
        name, with its passwords moved over, and needs approval again."""
        await self._move(row.id, [APPLYING], STALE, outcome={"found": result.fingerprint})
        await self.db.release_locks(row.id)
        await self._audit(STALE, actor, row, expected=row.fingerprint, found=result.fingerprint)
        proposer = Actor(row.proposer_id, row.proposer_name)
        replacement: Proposal | None = None
        try:
            replacement = await self.propose(
                proposer,
                row.pbx,
                intent_from_dict(row.intent),
                command=row.command,
                chat_id=row.chat_id,
                version=row.version + 1,
            )
        except (PlanError, ChangeError) as exc:
            code = getattr(exc, "code", "")
            params = {k: v for k, v in getattr(exc, "params", {}).items() if isinstance(v, str | int)}
            await self._audit("replan_failed", actor, row, code=code)
            await self.db.update_plan(
                row.id,
                outcome={"found": result.fingerprint, "replan_error": {"code": code, "params": params}},
            )
            await self.db.erase_secrets(row.id)
            ended = await self._get(row.id)
            return Outcome(ended, result)
        if replacement.row is not None:
            await self.db.move_secrets(row.id, replacement.row.id)
            await self.db.update_plan(row.id, replaced_by=replacement.row.id)
        await self.db.erase_secrets(row.id)
        return Outcome(await self._get(row.id), result, replacement)

    # ------------------------------------------------------------------ recovery

    async def recover(self, *, pbx: str | None = None) -> list[Recovery]:
        """Reconcile every plan a dead process left `applying`: at once when its
        owner is known dead, else as soon as its lease expires; never while a live
        apply holds it. Run by the bot at start and by housekeeping, by every CLI
        command that writes, and by `pbxbot recover`."""
        done: list[Recovery] = []
        for row in await self.db.plans(status=[APPLYING], pbx=pbx, limit=1000):
            if row.pbx not in self.pbxs:
                continue
            now = self.clock()
            dead = [row.lease_owner] if row.lease_owner and owner_is_dead(row.lease_owner) else []
            if not await self.db.take_lease(row.id, self.owner, now + self.lease, now, dead):
                continue  # a live apply holds it, or another process took it a moment ago
            done.append(await self._reconcile(row, previous=row.lease_owner))
        return done

    async def _reconcile(self, row: PlanRow, *, previous: str | None) -> Recovery:
        journal = await self.db.audit_trail(plan_id=row.id, limit=100_000)
        tried = 0
        known_routes: list[str] | None = None
        for event in journal:
            if event.event in ("step_intent", "step_applied"):
                tried = max(tried, int(event.detail.get("step", -1)) + 1)
            elif event.event == "apply_started":
                known_routes = [str(r) for r in event.detail.get("routes", [])]
        plan = self.plan_of(row)
        if known_routes is None:  # journaled before this version: the routes the plan itself names
            known_routes = [s.target for s in plan.steps if not s.kind.on_provider and s.target]
        await self._audit("recovery_started", None, row, previous_owner=previous, tried=tried)
        calls: list[dict[str, Any]] = []
        executor = self._executor(row, None, calls)
        token = _calls.set(calls)
        try:
            await self._pbx(row.pbx).client.list_providers()  # is the PBX there to be read?
        except PbxError as exc:
            await self.db.renew_lease(row.id, self.owner, self.clock())  # free: try again later
            await self._audit("recovery_postponed", None, row, error=str(exc))
            return Recovery(await self._get(row.id), None, postponed=str(exc))
        finally:
            _calls.reset(token)
            await self._flush_calls(calls, None, row)
        token = _calls.set(calls)
        try:
            async with self._leased(row.id, executor):
                result = await executor.reconcile(plan, tried, known_routes)
        finally:
            _calls.reset(token)
            await self._flush_calls(calls, None, row)
        await self.db.update_plan(row.id, card_stale=True)
        outcome = await self._finish(row, None, result, recovered=result.status.value, tried=tried)
        return Recovery(outcome.row, result)

    async def cards_to_refresh(self) -> list[PlanRow]:
        """Plans that ended where no card could be edited (`pbxbot recover`)."""
        return await self.db.plans(card_stale=True, limit=100)

    async def card_refreshed(self, plan_id: str) -> None:
        await self.db.update_plan(plan_id, card_stale=False)

    # ------------------------------------------------------------------ undo

    async def undo(
        self,
        actor: Actor,
        plan_id: str,
        *,
        secrets: Mapping[str, str] | None = None,
        chat_id: int | None = None,
    ) -> Proposal:
        """The inverse of an applied plan, proposed like any plan."""
        original = await self._get(plan_id)
        return await self.propose(
            actor, original.pbx, Undo(plan_id), secrets=secrets, command=f"/undo {plan_id}", chat_id=chat_id
        )

    # ------------------------------------------------------------------ delivery

    async def release(self, plan_id: str, reason: str, **detail: Any) -> PlanRow:
        """Cancel an open plan nobody can act on (its card could not be posted), with the
        reason; its locks go and its secrets are erased. ChangeError when it already ended."""
        row = await self._get(plan_id)
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=row.id, status=row.status)
        return await self._end(row, CANCELLED, None, reason=reason, **detail)
