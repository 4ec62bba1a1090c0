"""The change lifecycle: propose, approve, apply, cancel, expire, undo.

    proposed -> approved -> applying -> applied | rolled_back | failed
    proposed | approved -> cancelled | expired
    approved -> stale (the PBX changed under the plan; a new version is proposed)

The same calls serve the Telegram handlers, the CLI and the scheduler. Every
step is an audit event; every API call made for a plan is one too (method,
path, status: never a body). SIP passwords are sealed by the vault and erased
when the plan ends.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pbx.base import Pbx
from pbx.errors import PbxError
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
from .config import PolicySettings
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
from .vault import Vault

log = logging.getLogger("pbxbot.changes")

PROPOSED, APPROVED, APPLYING = "proposed", "approved", "applying"
APPLIED, ROLLED_BACK, FAILED = "applied", "rolled_back", "failed"
CANCELLED, EXPIRED, STALE = "cancelled", "expired", "stale"
OPEN = (PROPOSED, APPROVED)
ENDED = (APPLIED, ROLLED_BACK, FAILED, CANCELLED, EXPIRED, STALE)

_calls: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("calls", default=None)


@dataclass(frozen=True)
class Actor:
    id: int
    name: str = ""


LOCAL_ADMIN = Actor(LOCAL_ADMIN_ID, "local admin")


class ChangeError(Exception):
    """A refused or impossible request; `code` is a message-catalogue key under `change.`."""

    def __init__(self, code: str, **params: Any):
        self.code = code
        self.params = params
        super().__init__(f"{code}: {params}")


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
    ):
        self.store = store
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

    def _audit(self, event: str, actor: Actor | None, row: PlanRow | None = None, **detail: Any) -> None:
        self.store.audit(self._event(event, actor, row, **detail))

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

    def _flush_calls(
        self, calls: list[dict[str, Any]], actor: Actor | None, row: PlanRow | None, **kw
    ) -> None:
        if calls:
            self.store.audit(*(self._event("api_call", actor, row, **call, **kw) for call in calls))
            calls.clear()

    def _get(self, plan_id: str) -> PlanRow:
        row = self.store.get_plan(plan_id)
        if row is None:
            raise ChangeError("no_plan", plan=plan_id)
        return row

    def _require(self, actor: Actor, action: Action) -> None:
        if not may(self.policy, actor.id, action):
            self._audit("refused", actor, None, action=action.value)
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

    def tally_of(self, row: PlanRow) -> Tally:
        approvals = self.store.approvals(row.id, row.version)
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
            original = self._get(intent.plan_id)
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
        self._require(actor, Action.PROPOSE)
        calls: list[dict[str, Any]] = []
        token = _calls.set(calls)
        try:
            plan, snapshot = await self.plan(pbx, intent)
            plan.summary["names"] = display_names(plan, snapshot)
        except PlanError as exc:
            self._audit("plan_refused", actor, None, pbx=pbx, code=exc.code, command=command)
            raise
        finally:
            _calls.reset(token)
            self._flush_calls(calls, actor, None, pbx=pbx)
        if plan.empty:
            self._audit("plan_empty", actor, None, pbx=pbx, command=command)
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
        holder = self.store.add_plan(row, plan.logins)
        if holder is not None:
            logins = plan.logins
            self._audit("plan_locked_out", actor, None, pbx=pbx, holder=holder, logins=logins[:20])
            raise ChangeError("locked", plan=holder, logins=", ".join(logins[:5]))
        wanted = set(plan.needs_secret)
        if secrets:
            self.store.put_secrets(
                row.id, self.vault.seal_all({k: v for k, v in secrets.items() if k in wanted})
            )
        self._audit(
            "proposed", actor, row, kind=row.kind, steps=len(plan.steps), command=command, version=version
        )
        count = self.tally_of(row)
        if count.done:
            self._promote(row, actor)
        return Proposal(plan, self.store.get_plan(row.id), count)

    def add_secret(self, actor: Actor, plan_id: str, login: str, password: str) -> None:
        """The SIP password of a login the plan creates (asked for in a private chat)."""
        row = self._get(plan_id)
        if actor.id != row.proposer_id and not may(self.policy, actor.id, Action.CANCEL_ANY):
            raise ChangeError("not_allowed", action="secret")
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=plan_id, status=row.status)
        if login not in row.needs_secret:
            raise ChangeError("no_such_login", plan=plan_id, login=login)
        self.store.put_secrets(plan_id, {login: self.vault.seal(password)})
        self._audit("secret_received", actor, row, login=login)

    def missing_secrets(self, row: PlanRow) -> list[str]:
        have = self.store.secrets(row.id)
        return [login for login in row.needs_secret if login not in have]

    def awaiting_secret(self, user_id: int) -> list[tuple[PlanRow, list[str]]]:
        """Open plans of this proposer still waiting for SIP passwords, oldest first."""
        rows = [r for r in self.store.plans(status=OPEN, proposer=user_id, limit=500) if r.needs_secret]
        waiting = [(r, self.missing_secrets(r)) for r in reversed(rows)]
        return [(r, missing) for r, missing in waiting if missing]

    def ready(self, row: PlanRow) -> bool:
        """Approved, with every password it needs: the next step is to apply it."""
        return row.status == APPROVED and not self.missing_secrets(row)

    def approvers_of(self, row: PlanRow) -> list[str]:
        return [
            a.user_name or str(a.user_id)
            for a in self.store.approvals(row.id, row.version)
            if a.decision == "approve"
        ]

    # ------------------------------------------------------------------ approve

    def _promote(self, row: PlanRow, actor: Actor) -> None:
        if self.store.transition(row.id, [PROPOSED], APPROVED):
            self._audit("approved", actor, row, version=row.version)

    def _check_open(self, row: PlanRow, version: int | None = None) -> None:
        if row.status in OPEN and self.clock() >= row.expires_at:
            self._end(row, EXPIRED, None)
            raise ChangeError("expired", plan=row.id)
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=row.id, status=row.status)
        if version is not None and version != row.version:
            raise ChangeError("old_version", plan=row.id, version=version)

    async def approve(
        self, actor: Actor, plan_id: str, *, version: int | None = None
    ) -> tuple[PlanRow, Tally]:
        row = self._get(plan_id)
        self._check_open(row, version)
        approvals = self.store.approvals(row.id, row.version)
        already = [a.user_id for a in approvals if a.decision == "approve"]
        reason = refuse_approval(self.policy, actor.id, row.proposer_id, already)
        if reason is not None:
            self._audit("approval_refused", actor, row, reason=reason)
            raise ChangeError(reason.removeprefix("policy."), plan=row.id)
        self.store.add_approval(
            ApprovalRow(
                plan_id=row.id,
                version=row.version,
                user_id=actor.id,
                user_name=actor.name,
                decision="approve",
            )
        )
        self._audit("approval", actor, row, version=row.version)
        count = self.tally_of(row)
        if count.done:
            self._promote(row, actor)
        return self._get(plan_id), count

    async def reject(self, actor: Actor, plan_id: str) -> PlanRow:
        row = self._get(plan_id)
        self._check_open(row)
        if not may(self.policy, actor.id, Action.APPROVE):
            self._audit("approval_refused", actor, row, reason="policy.not_approver")
            raise ChangeError("not_approver", plan=row.id)
        self.store.add_approval(
            ApprovalRow(
                plan_id=row.id, version=row.version, user_id=actor.id, user_name=actor.name, decision="reject"
            )
        )
        return self._end(row, CANCELLED, actor, reason="rejected")

    async def cancel(self, actor: Actor, plan_id: str) -> PlanRow:
        row = self._get(plan_id)
        reason = refuse_cancel(self.policy, actor.id, row.proposer_id)
        if reason is not None:
            self._audit("cancel_refused", actor, row, reason=reason)
            raise ChangeError(reason.removeprefix("policy."), plan=row.id)
        self._check_open(row)
        return self._end(row, CANCELLED, actor, reason="cancelled")

    def _end(self, row: PlanRow, status: str, actor: Actor | None, **outcome: Any) -> PlanRow:
        """Close an open plan: its locks go, its secrets are erased."""
        if not self.store.transition(row.id, [*OPEN, APPLYING], status, outcome={**row.outcome, **outcome}):
            current = self._get(row.id)
            raise ChangeError("plan_closed", plan=row.id, status=current.status)
        self.store.release_locks(row.id)
        erased = self.store.erase_secrets(row.id)
        self._audit(status, actor, row, secrets_erased=erased, **outcome)
        return self._get(row.id)

    async def expire(self) -> list[PlanRow]:
        """Close every open plan past its expiry (the scheduler calls this)."""
        ended = []
        for row in self.store.due(OPEN, self.clock()):
            try:
                ended.append(self._end(row, EXPIRED, None, reason="expired"))
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
        row = self._get(plan_id)
        self._check_open(row)
        if at_once:
            if actor.id != LOCAL_ADMIN_ID:
                raise ChangeError("not_allowed", action="apply_at_once")
            if self.store.transition(row.id, [PROPOSED], APPROVED):
                self._audit("approved_at_once", actor, row)
        if not self.store.transition(row.id, [APPROVED], APPLYING):
            current = self._get(plan_id)
            raise ChangeError("not_approved", plan=plan_id, status=current.status)
        self._audit("applying", actor, row)
        handle = self._pbx(row.pbx)
        plan = self.plan_of(row)
        secrets = self.vault.open_all(self.store.secrets(row.id))
        calls: list[dict[str, Any]] = []

        async def on_event(name: str, detail: dict[str, Any]) -> None:
            self._flush_calls(calls, actor, row)
            self.store.audit(self._event(name, actor, row, **detail))
            if progress is not None and name == "step_applied":
                await progress(row, detail["step"] + 1, len(plan.steps))

        executor = Executor(
            handle.client,
            reader=handle.reader,
            reload_wait=handle.reload_wait,
            verify_timeout=handle.verify_timeout,
            verify_interval=handle.verify_interval,
            on_event=on_event,
        )
        token = _calls.set(calls)
        try:
            result = await executor.apply(plan, secrets)
        except ApplyError as exc:
            self.store.transition(row.id, [APPLYING], APPROVED)
            self._audit("apply_refused", actor, row, error=str(exc))
            raise ChangeError(
                "secret_missing", plan=row.id, logins=", ".join(self.missing_secrets(row))
            ) from exc
        except PbxError as exc:
            # the stale check could not read the PBX: nothing was written
            self.store.transition(row.id, [APPLYING], APPROVED)
            self._audit("apply_refused", actor, row, error=str(exc))
            raise ChangeError("pbx_unreachable", plan=row.id, error=str(exc)) from exc
        finally:
            _calls.reset(token)
            self._flush_calls(calls, actor, row)
        del secrets

        outcome = {
            "error": result.error,
            "failed_step": result.failed_step,
            "leftovers": [vars(left) for left in result.leftovers],
            "registration": result.registration,
        }
        results = {str(k): v for k, v in result.results.items()}
        if result.status is not ApplyStatus.APPLIED:  # keep what is still on the PBX, for /undo
            results = {str(left.step): left.state or {} for left in result.leftovers}
        if result.status is ApplyStatus.STALE:
            return await self._replan(row, actor, result)
        status = {ApplyStatus.APPLIED: APPLIED, ApplyStatus.ROLLED_BACK: ROLLED_BACK}.get(
            result.status, FAILED
        )
        self.store.update_plan(row.id, results=results)
        ended = self._end(row, status, actor, **outcome)
        return Outcome(ended, result)

    async def _replan(self, row: PlanRow, actor: Actor, result: ApplyResult) -> Outcome:
        """A stale plan ends; a new version from the same intent is proposed in its
        name, with its passwords moved over, and needs approval again."""
        self.store.transition(row.id, [APPLYING], STALE, outcome={"found": result.fingerprint})
        self.store.release_locks(row.id)
        self._audit(STALE, actor, row, expected=row.fingerprint, found=result.fingerprint)
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
            self._audit("replan_failed", actor, row, code=getattr(exc, "code", ""))
            self.store.erase_secrets(row.id)
            ended = self._get(row.id)
            return Outcome(ended, result)
        if replacement.row is not None:
            self.store.move_secrets(row.id, replacement.row.id)
            self.store.update_plan(row.id, replaced_by=replacement.row.id)
        self.store.erase_secrets(row.id)
        return Outcome(self._get(row.id), result, replacement)

    async def recover(self, *, older_than: timedelta = timedelta(minutes=30)) -> list[PlanRow]:
        """Plans left `applying` by a process that died mid-apply: marked `failed`,
        with the steps the audit trail shows applied as leftovers (and as the
        results an /undo reverts). Run at start and by the scheduler."""
        ended = []
        for row in self.store.plans(status=[APPLYING], limit=1000):
            if row.updated_at > self.clock() - older_than:
                continue  # may still be running
            applied: dict[int, dict[str, Any]] = {}
            for event in self.store.audit_trail(plan_id=row.id, limit=100_000):
                if event.event == "step_applied":
                    applied[event.detail["step"]] = event.detail.get("result") or {}
                elif event.event == "step_rolled_back":
                    applied.pop(event.detail["step"], None)
            steps = row.steps
            leftovers = [
                {
                    "step": i,
                    "kind": steps[i]["kind"],
                    "record": str(record.get("id") or steps[i].get("target") or steps[i].get("login")),
                    "state": record or None,
                    "before": steps[i].get("before"),
                    "error": "interrupted",
                }
                for i, record in sorted(applied.items())
            ]
            self.store.update_plan(row.id, results={str(i): r for i, r in applied.items()})
            try:
                ended.append(
                    self._end(row, FAILED, None, error="interrupted", failed_step=None, leftovers=leftovers)
                )
            except ChangeError:
                continue
        return ended

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
        original = self._get(plan_id)
        return await self.propose(
            actor, original.pbx, Undo(plan_id), secrets=secrets, command=f"/undo {plan_id}", chat_id=chat_id
        )

    # ------------------------------------------------------------------ delivery

    def release(self, plan_id: str, reason: str, **detail: Any) -> PlanRow:
        """Cancel an open plan nobody can act on (its card could not be posted), with the
        reason; its locks go and its secrets are erased. ChangeError when it already ended."""
        row = self._get(plan_id)
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=row.id, status=row.status)
        return self._end(row, CANCELLED, None, reason=reason, **detail)
