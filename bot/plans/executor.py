"""Plan -> PBX writes: stale check, step-by-step writes, rollback, verify.

    check     re-read the records the plan depends on; a changed fingerprint
              means stale: re-plan, never apply blind
    write     one step at a time; `@new:<login>` providerids resolve to the
              account created earlier in the same plan
    judge     only an answer that proves nothing was saved (MikoPBX's refusal
              before the save, 401/403, nginx's 429, a connection never opened)
              means "not written". After anything else (5xx, a body not in
              MikoPBX's shape, a dropped connection, a timeout) the record is
              read back (by id; a create by login@host or DID + provider) and
              the step judged by what is there: as planned, as before (then
              written once more), or otherwise. Never a blind retry.
    rollback  a failed step puts back every step up to and including itself,
              in reverse order, each judged the same way; what cannot be put
              back leaves the plan `failed` naming each record and its state now
    reconcile a plan a dead process left half-applied is judged the same way:
              applied when every step stands as planned, rolled back otherwise
    verify    after MikoPBX's reload, the registration state of every account
              the plan wrote
    passwords a SIP password is never readable (MikoPBX masks it): its step is
              judged by the PBX's answer, an unclear answer by writing the same
              password once more, and the account's registration says whether
              it works; what stays unclear is left over as unknown, never
              called written or not written

The executor knows nothing of storage or Telegram: it reports each event to
`on_event` and returns an ApplyResult.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.routing.rules import host_key, masked_attributes, same_host
from pbx.base import Pbx
from pbx.errors import PbxError, PbxNotFound
from pbx.models import Provider, RegistrationState, Route

from .planner import NEW_PREFIX, Plan, Step, StepKind, provider_record, route_record
from .snapshot import SnapshotReader

log = logging.getLogger("pbxbot.executor")

FINAL_STATES = {RegistrationState.REGISTERED, RegistrationState.REJECTED, RegistrationState.UNREACHABLE}


class StepState(enum.StrEnum):
    """Where a step's record stands, read from the PBX."""

    AS_PLANNED = "as_planned"
    AS_BEFORE = "as_before"
    OTHER = "other"  # neither: landed differently, or changed by someone else
    UNKNOWN = "unknown"  # the PBX could not be read


class ApplyStatus(enum.StrEnum):
    APPLIED = "applied"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    STALE = "stale"


@dataclass
class Leftover:
    """A record the plan changed and could not put back: what it is and what to do."""

    step: int
    kind: str
    record: str  # the record id (or the login of an account)
    state: dict[str, Any] | None  # the record as the plan left it
    before: dict[str, Any] | None  # what it should go back to
    error: str
    now: str = StepState.OTHER.value  # as_planned | other | unknown: where it stands, as read last


@dataclass
class ApplyResult:
    status: ApplyStatus
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # step -> record after the write
    failed_step: int | None = None
    error: str | None = None
    leftovers: list[Leftover] = field(default_factory=list)
    registration: dict[str, str] = field(default_factory=dict)  # login -> state after the reload
    fingerprint: str | None = None  # the current one, when stale


EventSink = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class ApplyError(Exception):
    """A step cannot even be tried (a missing SIP password, an unresolved reference)."""


class StepFailed(Exception):
    """A step did not land as planned; `reason` says what the PBX answered."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Executor:
    def __init__(
        self,
        pbx: Pbx,
        *,
        reader: SnapshotReader | None = None,
        reload_wait: float = 15.0,
        verify_timeout: float = 30.0,
        verify_interval: float = 3.0,
        on_event: EventSink | None = None,
    ):
        self.pbx = pbx
        self.reader = reader or SnapshotReader(pbx)
        self.reload_wait = reload_wait
        self.verify_timeout = verify_timeout
        self.verify_interval = verify_interval
        self._on_event = on_event
        self._existing: dict[tuple[str, str], str] = {}  # (host, login) -> account id, as last read
        self._created: dict[str, str] = {}  # "@new:<login>" -> the id of the account created for it
        self._known_routes: set[str] = set()  # ids of the routes that existed before the apply
        self._ours: set[str] = set()  # ids of the routes this apply created
        self._secret_saved: set[str] = set()  # accounts whose new password the PBX answered as saved
        self._secret_unsure: set[str] = set()  # accounts whose password write had an unclear answer
        self._plan: Plan | None = None
        self.halt = False  # set when this process lost the plan's lease: no further write

    async def _event(self, name: str, **detail: Any) -> None:
        if self._on_event is not None:
            outcome = self._on_event(name, detail)
            if outcome is not None:
                await outcome

    # ------------------------------------------------------------------ check

    async def current_fingerprint(self, plan: Plan) -> str:
        # exactly what the plan depends on: the lists, its written and relied-on accounts afresh
        depends = plan.depends
        snapshot = await depends.read(self.reader)
        self._existing = {
            _key({"host": p.host, "username": p.username}): p.id for p in snapshot.providers if p.username
        }
        # routes that existed before the apply: a created route is never mistaken for one of them
        self._known_routes = {str(r.id) for r in snapshot.routes if r.id is not None}
        return depends.fingerprint(snapshot)

    # ------------------------------------------------------------------ apply

    async def apply(self, plan: Plan, secrets: Mapping[str, str] | None = None) -> ApplyResult:
        secrets = secrets or {}
        self._plan = plan
        missing = [
            s.login
            for s in plan.steps
            if s.kind in (StepKind.CREATE_PROVIDER, StepKind.SET_SECRET) and s.login not in secrets
        ]
        if missing:
            raise ApplyError(f"no SIP password for {', '.join(missing)}")
        now = await self.current_fingerprint(plan)
        if now != plan.fingerprint:
            await self._event("stale", expected=plan.fingerprint, found=now)
            return ApplyResult(ApplyStatus.STALE, fingerprint=now)
        await self._event("apply_started", routes=sorted(self._known_routes, key=_int_or_str))

        result = ApplyResult(ApplyStatus.APPLIED)
        for index, step in enumerate(plan.steps):
            await self._event(
                "step_intent", step=index, kind=step.kind.value, record=step.target or step.login
            )
            try:
                if self.halt:
                    raise StepFailed("the apply was taken over by another process")
                record = await self._write(index, step, secrets)
            except StepFailed as failed:
                result.failed_step, result.error = index, failed.reason
                await self._event("step_failed", step=index, kind=step.kind.value, error=failed.reason)
                await self._restore(plan, index, result)
                return result
            result.results[index] = record or {}
            if step.kind is StepKind.CREATE_PROVIDER and record:
                self._created[NEW_PREFIX + step.login] = record["id"]
            # the record as written: what recovery and undo need if this process dies mid-plan
            await self._event(
                "step_applied",
                step=index,
                kind=step.kind.value,
                record=_rid(step, record),
                result=_audited(record),
            )
        result.registration = await self.verify(plan, result)
        return result

    async def reconcile(self, plan: Plan, tried: int, known_routes: Iterable[str] = ()) -> ApplyResult:
        """A plan a dead process left half-applied: steps `0 .. tried-1` may have been
        written. When every step of the plan is on the PBX as planned, the plan is
        applied; otherwise each tried step is put back as it was, judged by what the
        PBX holds (never by what the dead process believed)."""
        self._plan = plan
        self._known_routes = {str(r) for r in known_routes}
        # a password the dead process may have sent: nothing on the PBX tells whether it did
        tried_steps = plan.steps[: max(tried, 0)]
        self._secret_unsure |= {s.target for s in tried_steps if s.kind is StepKind.SET_SECRET}
        result = ApplyResult(ApplyStatus.APPLIED)
        states: list[tuple[StepState, dict[str, Any] | None]] = []
        for step in plan.steps[: max(tried, 0)]:
            state, record = await self.inspect(step)
            states.append((state, record))
        if tried >= len(plan.steps) and all(state is StepState.AS_PLANNED for state, _ in states):
            result.results = {i: record or {} for i, (_, record) in enumerate(states)}
            await self._event("reconciled", outcome="applied")
            result.registration = await self.verify(plan, result)
            return result
        result.error = "interrupted"
        await self._restore(plan, tried - 1, result)
        await self._event("reconciled", outcome=result.status.value)
        return result

    async def _write(self, index: int, step: Step, secrets: Mapping[str, str]) -> dict[str, Any] | None:
        """One step's write, judged by what the PBX holds unless its answer proves
        nothing was saved. Written again only after a read-back shows it did not land."""
        try:
            record = await self._write_judged(index, step, secrets)
        except BaseException:
            if step.kind.on_provider:  # the mirrored details of this account may be stale now
                await self.reader.forget([step.target] if step.target else [])
            raise
        await self._mirror(step, record)
        return record

    async def _mirror(self, step: Step, record: dict[str, Any] | None) -> None:
        """The mirror holds what the PBX answered to (or holds after) the bot's own write."""
        kind = step.kind
        if kind is StepKind.DELETE_PROVIDER:
            await self.reader.forget([step.target])
        elif kind.on_provider:
            if record and record.get("id"):
                await self.reader.remember(Provider.model_validate(record))
            else:
                await self.reader.forget([step.target] if step.target else [])
        elif kind is StepKind.DELETE_ROUTE:
            await self.reader.forget_route(step.target)
        elif record and record.get("id") is not None:
            await self.reader.remember_route(Route.model_validate(record))

    async def _write_judged(
        self, index: int, step: Step, secrets: Mapping[str, str]
    ) -> dict[str, Any] | None:
        error: Exception
        for attempt in (1, 2):
            try:
                return await self._do(step, secrets)
            except ApplyError as exc:
                raise StepFailed(str(exc)) from exc
            except PbxError as exc:
                if exc.refused_before_save:
                    raise StepFailed(str(exc)) from exc
                error = exc
            except Exception as exc:  # a bug of ours mid-write: the PBX decides what happened
                log.exception("step %s (%s) failed unexpectedly", index, step.kind.value)
                error = exc
            await self._event("write_unknown", step=index, kind=step.kind.value, error=_text(error))
            if step.kind is StepKind.SET_SECRET:
                self._secret_unsure.add(step.target)
            state, record = await self.inspect(step)
            await self._event("write_judged", step=index, kind=step.kind.value, state=state.value)
            if state is StepState.AS_PLANNED:
                return record
            if step.kind is StepKind.SET_SECRET and state is StepState.UNKNOWN and record and attempt == 1:
                continue  # the account stands as it was: sending the same password again is harmless
            if state is not StepState.AS_BEFORE or attempt == 2:
                raise StepFailed(_text(error))
        raise AssertionError("unreachable")

    async def _do(self, step: Step, secrets: Mapping[str, str]) -> dict[str, Any] | None:
        kind = step.kind
        if kind is StepKind.CREATE_PROVIDER:
            existing = self._existing.get(_key(step.after))
            if existing:  # an earlier try of this very write landed: adopt it, never duplicate
                return provider_record(await self.pbx.get_provider(existing))
            account = await self.pbx.create_provider(_provider(step.after), secret=secrets[step.login])
            self._existing[_key(step.after)] = account.id
            return provider_record(account)
        if kind is StepKind.UPDATE_PROVIDER:
            return provider_record(await self.pbx.update_provider(_provider(step.after, step.target)))
        if kind is StepKind.SET_SECRET:  # the account as read by the stale check, with its new password
            account = _provider(step.before, step.target)
            saved = await self.pbx.update_provider(account, secret=secrets[step.login])
            self._secret_saved.add(step.target)
            return provider_record(saved)
        if kind is StepKind.DELETE_PROVIDER:
            await self.pbx.delete_provider(step.target)
            self._existing.pop(_key(step.before), None)
            return None
        if kind is StepKind.CREATE_ROUTE:
            route = await self.pbx.create_route(_route(step.after, self._created))
            self._ours.add(str(route.id))
            return route_record(route)
        if kind is StepKind.UPDATE_ROUTE:
            return route_record(await self.pbx.update_route(_route(step.after, self._created, step.target)))
        await self.pbx.delete_route(int(step.target))
        return None

    # ------------------------------------------------------------------ judging by what the PBX holds

    async def inspect(self, step: Step) -> tuple[StepState, dict[str, Any] | None]:
        """Where the step's record stands now: as planned, as before, otherwise, or
        unknown (the PBX could not be read). Never writes."""
        try:
            return await self._inspect(step)
        except PbxError as exc:
            log.warning("cannot read back step %s: %s", step.kind.value, exc)
            return StepState.UNKNOWN, None
        finally:
            if step.kind.on_provider:
                await self.reader.forget([step.target] if step.target else [])

    async def _inspect(self, step: Step) -> tuple[StepState, dict[str, Any] | None]:
        kind = step.kind
        if kind is StepKind.CREATE_PROVIDER:
            now = await self._find_account(step.after)
            if now is None:
                return StepState.AS_BEFORE, None
            self._created[NEW_PREFIX + step.login] = now["id"]
            return _judge(now, step.after, None), now
        if kind is StepKind.CREATE_ROUTE:
            now = await self._find_created_route(step)
            return (
                (StepState.AS_BEFORE, None) if now is None else (_judge(now, self._wanted(step), None), now)
            )
        record = await self._read(step)
        if kind is StepKind.SET_SECRET:
            return _judge_secret(record, step, self._secret_saved, self._secret_unsure), record
        if kind is StepKind.DELETE_PROVIDER:
            return (
                (StepState.AS_PLANNED, None)
                if record is None
                else (_judge(record, None, step.before), record)
            )
        if kind is StepKind.DELETE_ROUTE:
            if record is None:  # gone; or put back under a new id by a rollback
                again = await self._find_route_like(step.before)
                return (StepState.AS_BEFORE, again) if again is not None else (StepState.AS_PLANNED, None)
            return _judge(record, None, step.before), record
        if record is None:
            return StepState.OTHER, None  # an updated record that no longer exists
        return _judge(record, self._wanted(step), step.before), record

    async def _read(self, step: Step) -> dict[str, Any] | None:
        try:
            if step.kind.on_provider:
                return provider_record(await self.pbx.get_provider(step.target))
            return route_record(await self.pbx.get_route(int(step.target)))
        except PbxNotFound:
            return None

    async def _find_account(self, record: Mapping[str, Any] | None) -> dict[str, Any] | None:
        host, login = _key(record)
        for summary in await self.pbx.list_providers():
            if same_host(summary.host, host) and summary.username == login:
                self._existing[(host, login)] = summary.id
                return provider_record(await self.pbx.get_provider(summary.id))
        self._existing.pop((host, login), None)
        return None

    async def _find_created_route(self, step: Step) -> dict[str, Any] | None:
        """The route this create step made: same DID and provider, not one that existed before."""
        pid = (step.after or {}).get("providerid") or None
        if pid and pid.startswith(NEW_PREFIX):
            if pid not in self._created and await self._find_account(self._account_of(pid)) is None:
                return None  # its account was never created: neither was the route
            pid = self._created.get(pid)
        number = (step.after or {}).get("number", "")
        for route in await self.pbx.list_routes():
            if str(route.id) in self._known_routes - self._ours:
                continue
            if route.number == number and (route.providerid or None) == pid:
                self._ours.add(str(route.id))
                return route_record(route)
        return None

    async def _find_route_like(self, record: Mapping[str, Any] | None) -> dict[str, Any] | None:
        wanted = {k: v for k, v in (record or {}).items() if k not in ("id", "priority")}
        for route in await self.pbx.list_routes():
            now = route_record(route)
            if all(now.get(k) == v for k, v in wanted.items()):
                return now
        return None

    def _account_of(self, ref: str) -> dict[str, Any] | None:
        """The account the plan creates for `@new:<login>`."""
        for step in self._plan.steps if self._plan else ():
            if step.kind is StepKind.CREATE_PROVIDER and NEW_PREFIX + step.login == ref:
                return step.after
        return None

    def _wanted(self, step: Step) -> dict[str, Any] | None:
        """The step's `after` with `@new:` references resolved to the ids created."""
        after = dict(step.after or {})
        pid = after.get("providerid")
        if isinstance(pid, str) and pid.startswith(NEW_PREFIX):
            after["providerid"] = self._created.get(pid, pid)
        return after

    # ------------------------------------------------------------------ rollback

    async def _restore(self, plan: Plan, last: int, result: ApplyResult) -> None:
        """Put steps `last .. 0` back as they were, in reverse order, each judged by
        what the PBX holds (the failed step included: it may have landed). What
        cannot be put back is a leftover, with its state now."""
        result.status = ApplyStatus.ROLLED_BACK
        for index in range(last, -1, -1):
            step = plan.steps[index]
            state, record = await self.inspect(step)
            if state is StepState.AS_BEFORE:
                result.results.pop(index, None)
                await self._event("step_rolled_back", step=index, kind=step.kind.value, how="was not written")
                continue
            error = ""
            if state is StepState.UNKNOWN and step.kind is StepKind.SET_SECRET and record is not None:
                error = "MikoPBX never shows a SIP password: whether the new one was saved is not known"
            elif state is StepState.UNKNOWN:
                error = "the PBX could not be read"
            else:
                try:
                    await self._undo_step(step, record)
                except (PbxError, ApplyError) as exc:
                    error = str(exc)
                state, record = await self.inspect(step)
                if state is StepState.AS_BEFORE:
                    result.results.pop(index, None)
                    await self._event("step_rolled_back", step=index, kind=step.kind.value, how="put back")
                    continue
                error = error or f"the record is {state.value.replace('_', ' ')} after the rollback"
            log.warning("rollback of step %s (%s) failed: %s", index, step.kind.value, error)
            result.status = ApplyStatus.FAILED
            result.leftovers.append(
                Leftover(index, step.kind.value, _rid(step, record), record, step.before, error, state.value)
            )
            await self._event(
                "rollback_failed", step=index, kind=step.kind.value, error=error, state=state.value
            )
        result.leftovers.sort(key=lambda left: left.step)

    async def _undo_step(self, step: Step, record: Mapping[str, Any] | None) -> None:
        kind = step.kind
        if kind is StepKind.CREATE_PROVIDER:
            if record is not None:
                await _tolerate_missing(self.pbx.delete_provider(record["id"]))
            self._existing.pop(_key(step.after), None)
        elif kind is StepKind.UPDATE_PROVIDER:
            await self.pbx.update_provider(_provider(step.before, step.target))
        elif kind is StepKind.DELETE_PROVIDER:
            raise ApplyError("a removed account cannot be re-created without its SIP password")
        elif kind is StepKind.SET_SECRET:
            raise ApplyError("the old SIP password was never known to the bot: it cannot be put back")
        elif kind is StepKind.CREATE_ROUTE:
            if record is not None:
                await _tolerate_missing(self.pbx.delete_route(int(record["id"])))
        elif kind is StepKind.UPDATE_ROUTE:
            await self.pbx.update_route(_route(step.before, {}, step.target))
        else:
            await self.pbx.create_route(
                _route({k: v for k, v in (step.before or {}).items() if k != "id"}, {})
            )
        await self.reader.forget([step.target] if kind.on_provider and step.target else [])

    # ------------------------------------------------------------------ verify

    async def verify(self, plan: Plan, result: ApplyResult) -> dict[str, str]:
        """Registration state of the accounts the plan created or changed, after
        MikoPBX's reload: polled until each is final or `verify_timeout` passes."""
        accounts: dict[str, str] = {}
        for index, step in enumerate(plan.steps):
            record = result.results.get(index) or {}
            written = (StepKind.CREATE_PROVIDER, StepKind.UPDATE_PROVIDER, StepKind.SET_SECRET)
            if step.kind in written and record.get("id"):
                if not record.get("disabled"):
                    accounts[record["id"]] = step.login
        if not accounts:
            return {}
        await asyncio.sleep(self.reload_wait)
        deadline = time.monotonic() + self.verify_timeout
        states: dict[str, str] = {}
        force = True
        while True:
            try:
                statuses = await self.reader.registrations(force=force)
            except PbxError as exc:
                log.warning("verify: registration states unavailable: %s", exc)
                return {login: RegistrationState.UNKNOWN.value for login in accounts.values()}
            force = False
            found = {pid: statuses.get(pid) for pid in accounts}
            states = {
                accounts[pid]: (s.state.value if s else RegistrationState.UNKNOWN.value)
                for pid, s in found.items()
            }
            if all(s is not None and s.state in FINAL_STATES for s in found.values()):
                break
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(self.verify_interval)
        await self._event("verified", registration=states)
        return states


async def _tolerate_missing(call: Awaitable[None]) -> None:
    try:
        await call
    except PbxNotFound:
        pass  # already gone: the rollback's goal holds


def _key(record: Mapping[str, Any] | None) -> tuple[str, str]:
    record = record or {}
    return (host_key(str(record.get("host", ""))), str(record.get("username", "")))


def _rid(step: Step, record: Mapping[str, Any] | None) -> str:
    return str((record or {}).get("id") or step.target or step.login)


def _provider(record: Mapping[str, Any] | None, provider_id: str = "") -> Provider:
    data = dict(record or {})
    data["id"] = provider_id or ""
    return Provider.model_validate(data)


def _route(record: Mapping[str, Any] | None, created: Mapping[str, str], route_id: str = "") -> Route:
    data = dict(record or {})
    pid = data.get("providerid") or ""
    if pid.startswith(NEW_PREFIX):
        if pid not in created:
            raise ApplyError(f"route refers to {pid}, which this plan did not create")
        data["providerid"] = created[pid]
    data["id"] = int(route_id) if route_id else None
    return Route.model_validate(data)


# Fields MikoPBX fills in itself: never a sign that a write landed differently.
_ASSIGNED = {"id", "secret", "priority"}


def _holds(now: Mapping[str, Any], expected: Mapping[str, Any] | None) -> bool:
    """`now` holds every field of `expected` with its value (but those MikoPBX
    assigns itself); fields `expected` does not name may differ."""
    expected = expected or {}
    return all(now.get(k) == v for k, v in expected.items() if k not in _ASSIGNED)


def _judge(
    now: Mapping[str, Any], after: Mapping[str, Any] | None, before: Mapping[str, Any] | None
) -> StepState:
    if after is not None and _holds(now, after):
        return StepState.AS_PLANNED
    if before is not None and _holds(now, before):
        return StepState.AS_BEFORE
    return StepState.OTHER


def _judge_secret(
    record: Mapping[str, Any] | None, step: Step, saved: set[str], unsure: set[str]
) -> StepState:
    """A password step by what can be known: the account must stand as it was read
    (else OTHER); then the PBX's answer decides, since the password itself is masked."""
    if record is None or not _holds(record, step.before):
        return StepState.OTHER
    if step.target in saved:
        return StepState.AS_PLANNED
    return StepState.UNKNOWN if step.target in unsure else StepState.AS_BEFORE


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _int_or_str(value: str) -> tuple[int, str]:
    return (int(value), "") if value.isdigit() else (0, value)


def _audited(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """A record as the audit trail keeps it: an extra parameter's credential masked (the
    journal's `result` is for people; recovery reads the PBX itself)."""
    if not record or not record.get("manualattributes"):
        return record
    return {**record, "manualattributes": masked_attributes(record["manualattributes"])}
