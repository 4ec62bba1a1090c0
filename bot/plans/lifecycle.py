"""A plan's life: propose, approve, apply, cancel, expire, undo.

    proposed -> approved -> applying -> applied | rolled_back | failed
    proposed | approved -> cancelled | expired
    applying -> stale (the PBX changed under the plan; a new version is proposed)

Every status change goes through `Ledger.move` and the one `TRANSITIONS` table.
Every step is an audit event; every API call made for a plan is one too (method,
path, status: never a body). A live apply holds a lease on its plan (`lease.py`);
SIP passwords come through `secrets.py` and are erased when the plan ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from pbx.budget import Priority, at
from pbx.errors import PbxError
from storage.repos.locks import Conflict
from storage.tables import ApprovalRow, AuditRow, PlanRow

from .changes import (
    APPLIED,
    APPLYING,
    APPROVED,
    CANCELLED,
    ENDED,
    EXPIRED,
    FAILED,
    OPEN,
    PROPOSED,
    ROLLED_BACK,
    STALE,
    Actor,
    CardFacts,
    ChangeError,
    Ledger,
    Next,
    Outcome,
    PlanStatus,
    Proposal,
    api_calls,
    display_names,
)
from .commands import (
    AddNumber,
    AddNumbers,
    ChangePassword,
    FixHost,
    Intent,
    PutBack,
    RemoveNumber,
    RouteNumber,
    Undo,
    intent_from_dict,
    intent_to_dict,
)
from .executor import ApplyError, ApplyResult, ApplyStatus, Executor
from .lease import Lease
from .planner import (
    Plan,
    PlanError,
    Step,
    plan_add_numbers,
    plan_fix_host,
    plan_password,
    plan_put_back,
    plan_remove,
    plan_route,
    plan_undo,
)
from .policy import LOCAL_ADMIN_ID, Action, Tally, may, refuse_approval, refuse_cancel, tally
from .secrets import Secrets
from .snapshot import Snapshot
from .validate import sip_passwords

T = TypeVar("T")
log = logging.getLogger("pbxbot.changes")
_RETRIES = 5  # a proposal held up by plans stored ahead, then discarded, tries again at most so often
_FATE_WAIT = 30.0  # s: the longest it waits for such a plan's fate


@dataclass(frozen=True)
class _Draft:
    """A plan being stored while the PBX answers (`Lifecycle.propose`)."""

    row: PlanRow
    insert: asyncio.Future[Conflict | None]  # None: stored; else the plan holding its logins
    card: asyncio.Future[Any] | None  # its card, made once it is stored (see propose's `card`)


def _and(
    planner: Callable[[Snapshot], Plan], then: Callable[[Plan, Snapshot], T] | None
) -> Callable[[Snapshot], tuple[Plan, T | None]]:
    """`planner`, then `then` on its plan and snapshot (both pure: read_then may run them twice)."""

    def work(snapshot: Snapshot) -> tuple[Plan, T | None]:
        plan = planner(snapshot)
        return plan, (then(plan, snapshot) if then is not None else None)

    return work


# what `plan` plans with `read_then`: the 3 list calls first
_READ_THEN = (AddNumber, AddNumbers, RouteNumber, RemoveNumber, ChangePassword, FixHost)


class Lifecycle:
    def __init__(
        self,
        ledger: Ledger,
        secrets: Secrets,
        lease: Lease,
        *,
        default_extension: str = "busy",
        recipe_when: str = "always",
        phone_dids: Mapping[str, str] | None = None,
    ):
        self.ledger = ledger
        self.recipe_when = recipe_when
        self.db = ledger.db
        self.secrets = secrets
        self.lease = lease
        self.default_extension = default_extension
        self.phone_dids = dict(phone_dids or {})  # the config's [phone_dids]: family or host -> form
        self._ahead: dict[str, asyncio.Future[bool]] = {}  # plans stored ahead, not yet confirmed: kept?

    def read_ahead(self, pbx: str, intent: Intent) -> asyncio.Event | None:
        """The list calls `plan` will make for this intent, begun now (before the caller
        has checked what it checks first): `plan` joins them. None: nothing begun; else
        an event set once their requests are written."""
        handle = self.ledger.pbxs.get(pbx)
        if handle is None or not isinstance(intent, _READ_THEN):
            return None
        return handle.reader.read_ahead()

    async def plan(self, pbx: str, intent: Intent) -> tuple[Plan, Snapshot]:
        """Read the PBX and plan, storing nothing (what `pbxbot plan` shows)."""
        plan, snapshot, _ = await self._plan(pbx, intent, None)
        return plan, snapshot

    async def _plan(
        self, pbx: str, intent: Intent, then: Callable[[Plan, Snapshot], T] | None
    ) -> tuple[Plan, Snapshot, T | None]:
        """`plan`, and `then(plan, snapshot)` done with it: while the PBX answers, when the
        plan is made then (`then` must not await or keep state: it may run twice)."""
        handle = self.ledger.handle(pbx)
        if isinstance(intent, AddNumber):
            intent = AddNumbers(intent.provider, (intent,))
        # planned while the lists are read, on what the mirror holds, when it holds it all
        # (the plan is the one on the snapshot read: see read_then)
        planner: Callable[[Snapshot], Plan] | None = None
        where: dict[str, str] = {}
        if isinstance(intent, AddNumbers):
            planner = partial(
                plan_add_numbers,
                intent,
                default_extension=self.default_extension,
                recipe_when=self.recipe_when,
                phone_dids=self.phone_dids,
            )
            where = {"host": intent.provider.host}
        elif isinstance(intent, RouteNumber):
            planner, where = (
                partial(plan_route, intent, phone_dids=self.phone_dids),
                {"number": intent.number},
            )
        elif isinstance(intent, RemoveNumber):
            planner, where = partial(plan_remove, intent), {"number": intent.number}
        elif isinstance(intent, ChangePassword):
            planner, where = partial(plan_password, intent), {"number": intent.number}
        elif isinstance(intent, FixHost):
            planner = partial(
                plan_fix_host, intent, default_extension=self.default_extension, phone_dids=self.phone_dids
            )
            where = {"host": intent.host}
        if planner is not None:
            snapshot, (plan, done) = await handle.reader.read_then(_and(planner, then), **where)
            return plan, snapshot, done
        if isinstance(intent, PutBack):
            ids = {a["id"] for a in intent.accounts}
            snapshot = await handle.reader.read(accounts=ids, fresh=ids)
            plan, done = _and(partial(plan_put_back, intent), then)(snapshot)
            return plan, snapshot, done
        if isinstance(intent, Undo):
            original = await self.ledger.get(intent.plan_id)
            if original.status not in (APPLIED, FAILED) or not original.results:
                raise ChangeError("undo_not_applied", plan=original.id, status=original.status)
            if original.pbx != pbx:
                raise ChangeError("undo_other_pbx", plan=original.id, pbx=original.pbx)
            # the records the plan wrote are read afresh; the rest of the host comes from the mirror
            written = {str(r["id"]) for r in original.results.values() if r and r.get("id")}
            written |= {str(s["target"]) for s in original.steps if s.get("target")}
            snapshot = await handle.reader.read(host=original.host, accounts=written, fresh=written)
            steps = [Step.from_dict(s) for s in original.steps]
            results = {int(k): v for k, v in original.results.items()}
            plan, done = _and(partial(plan_undo, steps, results, pbx=pbx), then)(snapshot)
            return plan, snapshot, done
        raise ChangeError("not_a_change")

    def _row(
        self,
        plan: Plan,
        pbx: str,
        intent: Intent,
        actor: Actor,
        command: str,
        chat_id: int | None,
        version: int,
    ) -> PlanRow:
        """The plan as stored when proposed (its id drawn as it is inserted)."""
        now = self.ledger.clock()
        return PlanRow(
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
            expires_at=now + timedelta(hours=self.ledger.policy.expiry_hours),
            fingerprint=plan.fingerprint,
            host=plan.host,
            steps=[s.to_dict() for s in plan.steps],
            notes=plan.notes,
            summary=plan.summary,
            needs_secret=plan.needs_secret,
            undo_of=intent.plan_id if isinstance(intent, Undo) else None,
        )

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
        audit_later: bool = False,
        card: Callable[[PlanRow, CardFacts], Awaitable[Any]] | None = None,
    ) -> Proposal:
        """Read, plan and store a plan: proposed, or approved at once when the policy
        needs no approval.

        The plan made ahead (on the mirror, while the lists are on the wire: see
        `read_then`) is stored ahead too; when the lists do not confirm it, that row is
        discarded before the plan made on what was read is stored. The audit rows (the
        reads, "proposed") are written once the plan is confirmed; with `audit_later`,
        by the caller's `write_audit(plan_id)` once the card's first sending ends (the card
        waits for no write of its own, and the write does not fight the sending for the
        interpreter), or first thing when the plan's next audit row is written.
        `card(row, facts)`: the card of a plan stored ahead for approval, made while the
        PBX answers (as `Proposal.card`); it must not write.

        A login locked by a plan stored ahead here that its lists then discard is not
        taken by it: the proposal waits for that plan's fate and stores itself then."""
        await self.ledger.require(actor, Action.PROPOSE)
        secrets = sip_passwords(secrets, also=ChangeError)  # one validator for chat, CSV and CLI
        calls: list[dict[str, Any]] = []  # the reads' api_call events: stored with the plan, or alone
        token = api_calls.set(calls)
        drafts: list[_Draft] = []  # plans stored ahead: the last one is the plan's, if any

        def stored(plan: Plan, snapshot: Snapshot) -> PlanRow | None:
            """What is stored, made and stored while the PBX answers (and again if the plan is)."""
            plan.summary["names"] = display_names(plan, snapshot)
            if plan.empty:
                return None
            row = self._row(plan, pbx, intent, actor, command, chat_id, version)
            made = None
            if card is not None and not (facts := self._fresh_facts(row, given(plan))).tally.done:
                made = partial(card, row, facts)
            earlier = drafts[:]  # a guess the lists did not confirm: gone first (it locks the same logins)
            insert = asyncio.ensure_future(self._store(row, plan.logins, earlier))
            drafts[:] = [
                _Draft(row, insert, asyncio.ensure_future(self._card(insert, made)) if made else None)
            ]
            return row

        def given(plan: Plan) -> dict[str, str]:
            if isinstance(intent, ChangePassword) and secrets and intent.number in secrets:
                # given for the number as typed (a phone, maybe): it is the account's login's
                return {login: secrets[intent.number] for login in plan.needs_secret}
            return dict(secrets or {})

        try:
            plan, _, row = await self._plan(pbx, intent, stored)
            conflict, made_card = await self._settled(drafts, row)
            for _ in range(_RETRIES):  # the holder was a plan stored ahead, and is gone: the logins are free
                if row is None or conflict is None or not await self._discarded(conflict.plan_id):
                    break
                again = _Draft(row, asyncio.ensure_future(self._store(row, plan.logins, [])), None)
                drafts.append(again)  # discarded with the others if this ends here
                conflict, _ = await self._settled([again], row)
            secrets = given(plan)
        except BaseException as exc:
            api_calls.reset(token)
            await asyncio.shield(self._settled(drafts, None))  # whatever was stored ahead goes
            await self.ledger.flush_calls(calls, actor, None, pbx=pbx)
            if isinstance(exc, PlanError):
                await self.ledger.audit("plan_refused", actor, None, pbx=pbx, code=exc.code, command=command)
            raise
        api_calls.reset(token)
        if row is None:
            await self.ledger.flush_calls(calls, actor, None, pbx=pbx)
            await self.ledger.audit("plan_empty", actor, None, pbx=pbx, command=command)
            return Proposal(plan, None)
        ledger = self.ledger
        if conflict is not None:
            await ledger.flush_calls(calls, actor, None, pbx=pbx)
            held = await self.db.plans.get(conflict.plan_id)
            who = (held.proposer_name or str(held.proposer_id)) if held is not None else "?"
            await self.ledger.audit(
                "plan_locked_out", actor, None, pbx=pbx, holder=conflict.plan_id, logins=conflict.logins[:20]
            )
            shown = conflict.logins[:5]
            more = len(conflict.logins) - len(shown)
            raise ChangeError(
                "locked",
                plan=conflict.plan_id,
                who=who,
                since=conflict.since,
                logins=", ".join(shown) + (f" (+{more})" if more else ""),
            )
        proposed = dict(kind=row.kind, steps=len(plan.steps), command=command, version=version)
        stamped, read = ledger.clock(), calls[:]  # the rows as of now, made when written

        def audit() -> list[AuditRow]:
            rows = [ledger.event("api_call", actor, None, at=stamped, **call, pbx=pbx) for call in read]
            return [*rows, ledger.event("proposed", actor, row, at=stamped, **proposed)]

        if secrets:
            await self.secrets.seal(row, secrets)
        facts = self._fresh_facts(row, secrets)
        if facts.tally.done or not audit_later:
            await ledger.add(*audit())
        else:
            ledger.hold(row.id, audit)
        if facts.tally.done:
            await self.promote(row, actor)
            return Proposal(plan, await self.db.plans.get(row.id), facts.tally)
        return Proposal(plan, row, facts.tally, facts, made_card)

    def _fresh_facts(self, row: PlanRow, secrets: Mapping[str, str]) -> CardFacts:
        """The card's facts of a plan stored this instant: no approval yet (the policy alone
        says whether it needs any), the passwords given with it."""
        count = tally(self.ledger.policy, row.kind, row.proposer_id, [])
        return CardFacts(count, [], [login for login in row.needs_secret if login not in secrets])

    async def write_audit(self, plan_id: str) -> None:
        """The audit rows `propose(audit_later=True)` left to write (once: then none)."""
        await self.ledger.write_held(plan_id)

    async def _store(self, row: PlanRow, logins: list[str], earlier: list[_Draft]) -> Conflict | None:
        """Store `row` (a fresh id drawn) with its logins locked, once the drafts before it
        are gone: None, or the plan holding its logins (then nothing is stored)."""
        await self._settled(earlier, None)
        held = await self.db.add_plan(row, logins)
        if held is None:  # its fate told to any proposal its locks hold up (`_discarded`)
            self._ahead[row.id] = asyncio.get_running_loop().create_future()
        return held

    @staticmethod
    async def _card(insert: asyncio.Future[Conflict | None], card: Callable[[], Awaitable[Any]]) -> Any:
        """The card of a plan stored ahead, once stored (None when it is not, or fails)."""
        try:
            if await asyncio.shield(insert) is not None:
                return None
            return await card()
        except Exception:  # the card is made again when posted (and fails there, if it must)
            log.exception("a card could not be made ahead")
            return None

    async def _settled(self, drafts: list[_Draft], kept: PlanRow | None) -> tuple[Conflict | None, Any]:
        """Wait for the plans stored ahead; discard all but `kept`. `kept`'s answer: (None,
        its card) when stored, or (the plan holding its logins, None) when not. Whoever
        cancels the caller, an insert begun ends (shielded), and is discarded then."""
        answer: tuple[Conflict | None, Any] = (None, None)
        for draft in drafts:
            try:
                held = await asyncio.shield(draft.insert)
            except Exception:
                if draft.row is kept:
                    raise
                continue  # nothing stored (one transaction)
            if draft.row is kept:
                made = await draft.card if held is None and draft.card is not None else None
                answer = held, made
                self._fate(draft.row.id, kept=True)
                continue
            if draft.card is not None:
                draft.card.cancel()  # it writes nothing
            if held is None:
                try:
                    await self.db.discard_plan(draft.row.id)
                finally:
                    self._fate(draft.row.id, kept=False)
        return answer

    def _fate(self, plan_id: str, *, kept: bool) -> None:
        if (fate := self._ahead.pop(plan_id, None)) is not None and not fate.done():
            fate.set_result(kept)

    async def _discarded(self, plan_id: str) -> bool:
        """Whether the plan holding some logins was one stored ahead whose lists did not
        confirm it: here, once its proposal knows; elsewhere (a replica), if it is gone."""
        fate = self._ahead.get(plan_id)
        if fate is not None:
            try:
                return not await asyncio.wait_for(asyncio.shield(fate), _FATE_WAIT)
            except TimeoutError:  # a proposal stuck on its PBX: its logins are held, as they are
                return False
        return await self.db.plans.get(plan_id) is None

    async def next_step(self, row: PlanRow) -> Next:
        """What happens to the plan next; the handlers only render and send it."""
        if row.status == APPLYING:
            return Next.RUNNING
        if row.status not in OPEN:
            return Next.ENDED
        if await self.secrets.missing(row):
            return Next.NEED_SECRET
        return Next.APPLY if row.status == APPROVED else Next.WAIT_APPROVALS

    async def card_facts(self, row: PlanRow) -> CardFacts:
        """What the card shows besides the plan, in one trip to the database: who approved
        this version, how many approvals count, the logins whose password is still to come."""

        def read() -> tuple[list[ApprovalRow], set[str]]:
            with self.db.sync.transaction() as tx:  # one session for both
                return tx.approvals.of(row.id, row.version), set(tx.secrets.of(row.id))

        approvals, have = await self.db.run(read)
        approving = [a for a in approvals if a.decision == "approve"]
        return CardFacts(
            tally=tally(self.ledger.policy, row.kind, row.proposer_id, [a.user_id for a in approving]),
            approvers=[a.user_name or str(a.user_id) for a in approving],
            missing=[login for login in row.needs_secret if login not in have],
        )

    async def promote(self, row: PlanRow, actor: Actor) -> None:
        if await self.ledger.move(row.id, [PROPOSED], APPROVED):
            await self.ledger.audit("approved", actor, row, version=row.version)

    async def check_open(self, row: PlanRow, version: int | None = None) -> None:
        if row.status in OPEN and self.ledger.clock() >= row.expires_at:
            await self.end(row, EXPIRED, None)
            raise ChangeError("expired", plan=row.id)
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=row.id, status=row.status)
        if version is not None and version != row.version:
            raise ChangeError("old_version", plan=row.id, version=version)

    async def approve(
        self, actor: Actor, plan_id: str, *, version: int | None = None
    ) -> tuple[PlanRow, Tally]:
        row = await self.ledger.get(plan_id)
        await self.check_open(row, version)
        approvals = await self.db.approvals.of(row.id, row.version)
        already = [a.user_id for a in approvals if a.decision == "approve"]
        reason = refuse_approval(self.ledger.policy, actor.id, row.proposer_id, already)
        if reason is not None:
            await self.ledger.audit("approval_refused", actor, row, reason=reason)
            raise ChangeError(reason.removeprefix("policy."), plan=row.id)
        await self.db.approvals.add(
            ApprovalRow(
                plan_id=row.id,
                version=row.version,
                user_id=actor.id,
                user_name=actor.name,
                decision="approve",
            )
        )
        await self.ledger.audit("approval", actor, row, version=row.version)
        count = await self.ledger.tally_of(row)
        if count.done:
            await self.promote(row, actor)
        return await self.ledger.get(plan_id), count

    async def reject(self, actor: Actor, plan_id: str) -> PlanRow:
        row = await self.ledger.get(plan_id)
        await self.check_open(row)
        if not may(self.ledger.policy, actor.id, Action.APPROVE):
            await self.ledger.audit("approval_refused", actor, row, reason="policy.not_approver")
            raise ChangeError("not_approver", plan=row.id)
        await self.db.approvals.add(
            ApprovalRow(
                plan_id=row.id, version=row.version, user_id=actor.id, user_name=actor.name, decision="reject"
            )
        )
        return await self.end(row, CANCELLED, actor, reason="rejected")

    async def cancel(self, actor: Actor, plan_id: str) -> PlanRow:
        row = await self.ledger.get(plan_id)
        reason = refuse_cancel(self.ledger.policy, actor.id, row.proposer_id)
        if reason is not None:
            await self.ledger.audit("cancel_refused", actor, row, reason=reason)
            raise ChangeError(reason.removeprefix("policy."), plan=row.id)
        await self.check_open(row)
        return await self.end(row, CANCELLED, actor, reason="cancelled")

    async def end(self, row: PlanRow, status: PlanStatus, actor: Actor | None, **outcome: Any) -> PlanRow:
        """Close an open plan: its locks go, its secrets are erased."""
        if not await self.ledger.move(row.id, [*OPEN, APPLYING], status, outcome={**row.outcome, **outcome}):
            current = await self.ledger.get(row.id)
            raise ChangeError("plan_closed", plan=row.id, status=current.status)
        await self.db.locks.release(row.id)
        erased = await self.db.secrets.erase_all(row.id)
        await self.ledger.audit(status, actor, row, secrets_erased=erased, **outcome)
        return await self.ledger.get(row.id)

    async def expire(self) -> list[PlanRow]:
        """Close every open plan past its expiry (the scheduler calls this)."""
        ended = []
        for row in await self.db.plans.due(OPEN, self.ledger.clock()):
            try:
                ended.append(await self.end(row, EXPIRED, None, reason="expired"))
            except ChangeError:
                continue  # approved or applied a moment ago
        return ended

    @at(Priority.APPLY)
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
        row = await self.ledger.get(plan_id)
        await self.check_open(row)
        if at_once:
            if actor.id != LOCAL_ADMIN_ID:
                raise ChangeError("not_allowed", action="apply_at_once")
            if await self.ledger.move(row.id, [PROPOSED], APPROVED):
                await self.ledger.audit("approved_at_once", actor, row)
        if not await self.ledger.move(row.id, [APPROVED], APPLYING, **self.lease.fields()):
            current = await self.ledger.get(plan_id)
            raise ChangeError("not_approved", plan=plan_id, status=current.status)
        await self.ledger.audit("applying", actor, row, owner=self.lease.owner)
        plan = self.ledger.plan_of(row)
        secrets = await self.secrets.opened(row)
        calls: list[dict[str, Any]] = []

        async def on_step(name: str, detail: dict[str, Any]) -> None:
            if progress is not None and name == "step_applied":
                await progress(row, detail["step"] + 1, len(plan.steps))

        executor = self.executor(row, actor, calls, on_step)
        token = api_calls.set(calls)
        try:
            async with self.lease.held(row.id, executor):
                result = await executor.apply(plan, secrets)
        except ApplyError as exc:
            await self.ledger.move(row.id, [APPLYING], APPROVED, lease_owner=None, lease_until=None)
            await self.ledger.audit("apply_refused", actor, row, error=str(exc))
            raise ChangeError(
                "secret_missing", plan=row.id, logins=", ".join(await self.secrets.missing(row))
            ) from exc
        except PbxError as exc:
            # the stale check could not read the PBX: nothing was written
            await self.ledger.move(row.id, [APPLYING], APPROVED, lease_owner=None, lease_until=None)
            await self.ledger.audit("apply_refused", actor, row, error=str(exc))
            raise ChangeError("pbx_unreachable", plan=row.id, error=str(exc)) from exc
        finally:
            api_calls.reset(token)
            await self.ledger.flush_calls(calls, actor, row)
        del secrets
        if result.status is ApplyStatus.STALE:
            return await self.replan(row, actor, result)
        return await self.finish(row, actor, result)

    def executor(
        self,
        row: PlanRow,
        actor: Actor | None,
        calls: list[dict[str, Any]],
        on_step: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None,
    ) -> Executor:
        """An executor for this plan whose every event is journaled in the audit
        trail before the next write (`step_intent` before, `step_applied` after)."""
        handle = self.ledger.handle(row.pbx)

        async def on_event(name: str, detail: dict[str, Any]) -> None:
            # the calls made so far and the event, in one transaction, before the executor goes on
            made = [self.ledger.event("api_call", actor, row, **call) for call in calls]
            calls.clear()
            await self.ledger.add(*made, self.ledger.event(name, actor, row, **detail))
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

    async def finish(self, row: PlanRow, actor: Actor | None, result: ApplyResult, **extra: Any) -> Outcome:
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
        await self.db.plans.update(row.id, results=results)
        ended = await self.end(row, status, actor, **outcome)
        return Outcome(ended, result)

    async def replan(self, row: PlanRow, actor: Actor, result: ApplyResult) -> Outcome:
        """A stale plan ends; a new version from the same intent is proposed in its
        name, with its passwords moved over, and needs approval again."""
        await self.ledger.move(row.id, [APPLYING], STALE, outcome={"found": result.fingerprint})
        await self.db.locks.release(row.id)
        await self.ledger.audit(STALE, actor, row, expected=row.fingerprint, found=result.fingerprint)
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
            params = {
                k: v.strftime("%d.%m %H:%M UTC") if isinstance(v, datetime) else v
                for k, v in getattr(exc, "params", {}).items()
                if isinstance(v, str | int | datetime)
            }
            await self.ledger.audit("replan_failed", actor, row, code=code)
            await self.db.plans.update(
                row.id,
                outcome={"found": result.fingerprint, "replan_error": {"code": code, "params": params}},
            )
            await self.db.secrets.erase_all(row.id)
            ended = await self.ledger.get(row.id)
            return Outcome(ended, result)
        if replacement.row is not None:
            await self.db.secrets.move(row.id, replacement.row.id)
            await self.db.plans.update(row.id, replaced_by=replacement.row.id)
        await self.db.secrets.erase_all(row.id)
        return Outcome(await self.ledger.get(row.id), result, replacement)

    async def undo(
        self,
        actor: Actor,
        plan_id: str,
        *,
        secrets: Mapping[str, str] | None = None,
        chat_id: int | None = None,
    ) -> Proposal:
        """The inverse of an applied plan, proposed like any plan."""
        original = await self.ledger.get(plan_id)
        return await self.propose(
            actor, original.pbx, Undo(plan_id), secrets=secrets, command=f"/undo {plan_id}", chat_id=chat_id
        )

    async def release(self, plan_id: str, reason: str, **detail: Any) -> PlanRow:
        """Cancel an open plan nobody can act on (its card could not be posted), with the
        reason; its locks go and its secrets are erased. ChangeError when it already ended."""
        row = await self.ledger.get(plan_id)
        if row.status not in OPEN:
            raise ChangeError("plan_closed", plan=row.id, status=row.status)
        return await self.end(row, CANCELLED, None, reason=reason, **detail)

    # ------------------------------------------------------------------ what the handlers read

    async def row(self, plan_id: str) -> PlanRow | None:
        """The plan as stored now; None when there is no such plan."""
        return await self.db.plans.get(plan_id)

    async def open_plans(self, pbx: str) -> list[PlanRow]:
        """The PBX's plans not ended yet (applying ones too), newest first."""
        return await self.db.plans.find(pbx=pbx, status=[*OPEN, APPLYING])

    async def history(self, pbx: str, n: int) -> list[PlanRow]:
        """The PBX's last `n` ended plans (1 to 100), newest first."""
        return await self.db.plans.find(pbx=pbx, status=ENDED, limit=max(1, min(n, 100)))

    async def card_posted(self, plan_id: str, chat_id: int, message_id: int) -> PlanRow:
        """Where the plan's card is: its buttons are honoured there only."""
        await self.db.plans.update(plan_id, chat_id=chat_id, message_id=message_id)
        return await self.ledger.get(plan_id)
