"""Plan -> PBX writes: stale check, step-by-step writes, rollback, verify.

    check     re-read the records the plan depends on; a changed fingerprint
              means stale: re-plan, never apply blind
    write     one step at a time; `@new:<login>` providerids resolve to the
              account created earlier in the same plan
    timeout   a write that got no answer may have happened: read back, then
              decide (adopt the record, or write again); never a blind retry
    rollback  a failed step undoes the steps before it in reverse order, from
              their before-states; a rollback step that fails too leaves the
              plan `failed` with the exact records left behind
    verify    after MikoPBX's reload, the registration state of every account
              the plan wrote

The executor knows nothing of storage or Telegram: it reports each event to
`on_event` and returns an ApplyResult.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pbx.base import Pbx
from pbx.errors import PbxError, PbxNotFound, PbxTimeout, PbxUnavailable
from pbx.models import Provider, RegistrationState, Route

from .planner import NEW_PREFIX, Plan, Step, StepKind, provider_record, route_record
from .snapshot import SnapshotReader, same_host

log = logging.getLogger("pbxbot.executor")

FINAL_STATES = {RegistrationState.REGISTERED, RegistrationState.REJECTED, RegistrationState.UNREACHABLE}


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
        self._route_ids: set[int | None] = set()  # routes that existed or that this apply created

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
            (p.host.lower().rstrip("."), p.username): p.id for p in snapshot.providers if p.username
        }
        self._route_ids = {r.id for r in snapshot.routes}
        return depends.fingerprint(snapshot)

    # ------------------------------------------------------------------ apply

    async def apply(self, plan: Plan, secrets: Mapping[str, str] | None = None) -> ApplyResult:
        secrets = secrets or {}
        missing = [
            s.login for s in plan.steps if s.kind is StepKind.CREATE_PROVIDER and s.login not in secrets
        ]
        if missing:
            raise ApplyError(f"no SIP password for {', '.join(missing)}")
        now = await self.current_fingerprint(plan)
        if now != plan.fingerprint:
            await self._event("stale", expected=plan.fingerprint, found=now)
            return ApplyResult(ApplyStatus.STALE, fingerprint=now)

        created: dict[str, str] = {}
        result = ApplyResult(ApplyStatus.APPLIED)
        for index, step in enumerate(plan.steps):
            try:
                record = await self._write(step, created, secrets)
            except (PbxError, ApplyError) as exc:
                result.failed_step, result.error = index, str(exc)
                await self._event("step_failed", step=index, kind=step.kind.value, error=str(exc))
                await self._rollback(plan, result)
                return result
            finally:
                if step.kind.on_provider:
                    self.reader.forget([step.target] if step.target else None)
            result.results[index] = record or {}
            if step.kind is StepKind.CREATE_PROVIDER and record:
                created[NEW_PREFIX + step.login] = record["id"]
            # the record as written: what recovery and undo need if this process dies mid-plan
            await self._event(
                "step_applied", step=index, kind=step.kind.value, record=_rid(step, record), result=record
            )
        result.registration = await self.verify(plan, result)
        return result

    async def _write(
        self, step: Step, created: Mapping[str, str], secrets: Mapping[str, str]
    ) -> dict[str, Any] | None:
        """One step's write; after a timeout, read back before deciding."""
        try:
            return await self._do(step, created, secrets)
        except (PbxTimeout, PbxUnavailable) as exc:
            if not isinstance(exc, PbxTimeout) and exc.status is not None:
                raise  # the PBX answered 502/503: nothing was written
            await self._event("write_unknown", kind=step.kind.value, record=step.target or step.login)
            landed = await self._read_back(step, created)
            if landed is not _NOT_LANDED:
                await self._event("write_confirmed", kind=step.kind.value, record=step.target or step.login)
                return landed
            return await self._do(step, created, secrets)

    async def _do(
        self, step: Step, created: Mapping[str, str], secrets: Mapping[str, str]
    ) -> dict[str, Any] | None:
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
        if kind is StepKind.DELETE_PROVIDER:
            await self.pbx.delete_provider(step.target)
            self._existing.pop(_key(step.before), None)
            return None
        if kind is StepKind.CREATE_ROUTE:
            route = await self.pbx.create_route(_route(step.after, created))
            self._route_ids.add(route.id)
            return route_record(route)
        if kind is StepKind.UPDATE_ROUTE:
            return route_record(await self.pbx.update_route(_route(step.after, created, step.target)))
        await self.pbx.delete_route(int(step.target))
        return None

    async def _read_back(self, step: Step, created: Mapping[str, str]) -> Any:
        """The record as it is now, when the write landed; `_NOT_LANDED` otherwise."""
        kind = step.kind
        if kind is StepKind.CREATE_PROVIDER:
            for summary in await self.pbx.list_providers():
                if same_host(summary.host, step.after["host"]) and summary.username == step.login:
                    self._existing[_key(step.after)] = summary.id
                    return provider_record(await self.pbx.get_provider(summary.id))
            return _NOT_LANDED
        if kind is StepKind.CREATE_ROUTE:
            wanted = _route(step.after, created)
            for route in await self.pbx.list_routes():
                if route.id not in self._route_ids and _same_route(route, wanted):
                    self._route_ids.add(route.id)
                    return route_record(route)
            return _NOT_LANDED
        try:
            if kind.on_provider:
                now = provider_record(await self.pbx.get_provider(step.target))
            else:
                now = route_record(await self.pbx.get_route(int(step.target)))
        except PbxNotFound:
            return None if kind in (StepKind.DELETE_PROVIDER, StepKind.DELETE_ROUTE) else _NOT_LANDED
        if kind in (StepKind.UPDATE_PROVIDER, StepKind.UPDATE_ROUTE) and _same(now, step.after):
            return now
        return _NOT_LANDED

    # ------------------------------------------------------------------ rollback

    async def _rollback(self, plan: Plan, result: ApplyResult) -> None:
        """Undo the applied steps in reverse order; whatever cannot be undone is a leftover."""
        result.status = ApplyStatus.ROLLED_BACK
        done = sorted(result.results, reverse=True)
        for index in done:
            step, record = plan.steps[index], result.results[index]
            try:
                await self._undo_step(step, record)
                await self._event("step_rolled_back", step=index, kind=step.kind.value)
            except (PbxError, ApplyError) as exc:
                log.warning("rollback of step %s (%s) failed: %s", index, step.kind.value, exc)
                result.status = ApplyStatus.FAILED
                result.leftovers.append(
                    Leftover(
                        index, step.kind.value, _rid(step, record), record or None, step.before, str(exc)
                    )
                )
                await self._event("rollback_failed", step=index, kind=step.kind.value, error=str(exc))

    async def _undo_step(self, step: Step, record: dict[str, Any]) -> None:
        kind = step.kind
        if kind is StepKind.CREATE_PROVIDER:
            await _tolerate_missing(self.pbx.delete_provider(record["id"]))
            self._existing.pop(_key(step.after), None)
        elif kind is StepKind.UPDATE_PROVIDER:
            await self.pbx.update_provider(_provider(step.before, step.target))
        elif kind is StepKind.DELETE_PROVIDER:
            raise ApplyError("a removed account cannot be re-created without its SIP password")
        elif kind is StepKind.CREATE_ROUTE:
            await _tolerate_missing(self.pbx.delete_route(int(record["id"])))
        elif kind is StepKind.UPDATE_ROUTE:
            await self.pbx.update_route(_route(step.before, {}, step.target))
        else:
            await self.pbx.create_route(_route({k: v for k, v in step.before.items() if k != "id"}, {}))
        self.reader.forget([step.target] if kind.on_provider and step.target else None)

    # ------------------------------------------------------------------ verify

    async def verify(self, plan: Plan, result: ApplyResult) -> dict[str, str]:
        """Registration state of the accounts the plan created or changed, after
        MikoPBX's reload: polled until each is final or `verify_timeout` passes."""
        accounts: dict[str, str] = {}
        for index, step in enumerate(plan.steps):
            record = result.results.get(index) or {}
            if step.kind in (StepKind.CREATE_PROVIDER, StepKind.UPDATE_PROVIDER) and record.get("id"):
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
                statuses = await self.pbx.registration_statuses(force=force)
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


class _NotLanded:
    def __repr__(self) -> str:
        return "<not landed>"


_NOT_LANDED: Any = _NotLanded()


async def _tolerate_missing(call: Awaitable[None]) -> None:
    try:
        await call
    except PbxNotFound:
        pass  # already gone: the rollback's goal holds


def _key(record: Mapping[str, Any] | None) -> tuple[str, str]:
    record = record or {}
    return (str(record.get("host", "")).lower().rstrip("."), str(record.get("username", "")))


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


def _same(now: Mapping[str, Any], expected: Mapping[str, Any] | None) -> bool:
    expected = expected or {}
    return all(now.get(k) == v for k, v in expected.items() if k not in ("id", "secret"))


def _same_route(a: Route, b: Route) -> bool:
    fields = ("rulename", "number", "providerid", "extension")
    return all(getattr(a, f) == getattr(b, f) for f in fields)
