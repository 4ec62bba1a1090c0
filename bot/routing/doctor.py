"""The routing doctor: the checks of docs/ROUTING.md §5 that the PBX API
can answer, as findings with a severity and, where one exists, a fix intent
that goes through approval like any plan.

    E  calls are lost        W  likely wrong        I  informational

Pure: a Snapshot of every account (with its extra parameters), the routes and
destinations, plus Evidence (registration states, DIDs seen in CDR) in;
findings out, in a stable order.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bot.errors import PlanError
from bot.plans import commands as grammar
from bot.plans.commands import FixHost, Intent
from bot.plans.snapshot import Snapshot, SnapshotReader
from pbx.base import Pbx
from pbx.budget import Priority, at
from pbx.errors import PbxAuthError, PbxError, PbxForbidden
from pbx.models import SYSTEM_DESTINATIONS, Provider, RegistrationState, RegistrationStatus, Route

from . import rules
from .rules import RECIPE_CONTEXT, Attributes, did_matches, host_key, normalise_phone, number_key, same_host
from .trace import Trace, Tracer, as_pattern

# An account saved a moment ago is unregistered until MikoPBX reloads and it registers.
REGISTRATION_GRACE = 60


class Severity(enum.StrEnum):
    ERROR = "E"
    WARNING = "W"
    INFO = "I"

    @property
    def rank(self) -> int:
        return {"E": 0, "W": 1, "I": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    code: str  # message catalogue: doctor.<code>.title / doctor.<code>.why
    severity: Severity
    subject: str  # what it is about: a host, "route 3", a login
    params: dict[str, Any] = field(default_factory=dict)
    fix: Intent | None = None

    @property
    def fix_key(self) -> str | None:
        """A short stable key of the fix, for a button's callback data."""
        if isinstance(self.fix, FixHost):
            return hashlib.sha1(host_key(self.fix.host).encode()).hexdigest()[:10]
        return None


@dataclass
class Evidence:
    registration: dict[str, RegistrationStatus] = field(default_factory=dict)
    cdr_dids: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (from_account, did) of recent inbound calls
    default: Route | None = None  # the default route, when read
    guest_calls: bool | None = None  # PBXAllowGuestCalls, when the key may read general settings
    phone_dids: Mapping[str, str] = field(default_factory=dict)  # the config's [phone_dids]


def groups_by_host(accounts: list[Provider]) -> dict[str, list[Provider]]:
    """Enabled accounts that register (or just send) to one host, by host."""
    groups: dict[str, list[Provider]] = defaultdict(list)
    for account in accounts:
        if not account.disabled and account.registration_type != "inbound" and account.host:
            groups[host_key(account.host)].append(account)
    return groups


@dataclass
class Facts:
    """What every check reads: the snapshot and the evidence, indexed once."""

    snapshot: Snapshot
    evidence: Evidence
    tracer: Tracer | None = None  # of this snapshot and default route, when the caller has one

    @cached_property
    def accounts(self) -> list[Provider]:
        """Every account in full, by id."""
        return sorted(self.snapshot.details.values(), key=lambda p: p.id)

    @cached_property
    def attrs(self) -> dict[str, Attributes]:
        return {p.id: Attributes.parse(p.manualattributes) for p in self.accounts}

    @cached_property
    def by_id(self) -> dict[str, Provider]:
        return {p.id: p for p in self.accounts}

    @cached_property
    def any_routes(self) -> list[Route]:
        return self.snapshot.any_routes()

    @cached_property
    def hosts(self) -> dict[str, list[Provider]]:
        return groups_by_host(self.accounts)

    @cached_property
    def routes_by_number(self) -> dict[tuple[str | None, str], list[Route]]:
        """Routes with a DID by (account or None for "any", number key), in a stable order."""
        by_key: dict[tuple[str | None, str], list[Route]] = defaultdict(list)
        for route in self.snapshot.routes:
            if route.number:
                by_key[(route.providerid, number_key(route.number))].append(route)
        return dict(sorted(by_key.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])))

    def who(self, p: Provider) -> str:
        return p.username or p.id

    @cached_property
    def traces(self) -> list[Trace]:
        """A call to every login and every DID a route names, traced through the dialplan
        MikoPBX generates: logins and DIDs of provider-bound routes from their account's
        host, DIDs of "any provider" routes from the account that has that number."""
        tracer = self.tracer or Tracer(self.snapshot, self.evidence.default)
        out: list[Trace] = []
        seen: set[tuple[str, str]] = set()

        def follow(account: Provider, exten: str, number: str) -> None:
            if (account.id, number) not in seen:
                seen.add((account.id, number))
                out.append(tracer.follow(account, exten, number))

        for p in self.accounts:
            if not p.disabled and p.registration_type != "inbound" and p.username:
                follow(p, p.username, p.username)
        for route in self.snapshot.routes:
            did = route.number
            if not did or route.priority == 9999 or as_pattern(did).startswith("_"):
                continue
            if route.providerid is not None:
                account = self.by_id.get(route.providerid)
                if account is not None and not account.disabled and account.registration_type != "inbound":
                    follow(account, did, did)
            else:
                try:
                    result = tracer.trace(did)
                except PlanError:  # a number two accounts claim: the trace cannot pick one
                    continue
                if result.account is not None and (result.account.id, did) not in seen:
                    seen.add((result.account.id, did))
                    out.append(result)
        return out

    def own_routes(self, result: Trace) -> list[Route]:
        """The routes meant for the traced number: its account's or "any provider" ones whose
        DID matches the number (or the extension the call carries), or that take any number."""
        assert result.account is not None
        key = number_key(result.number)
        exten = result.account.username if result.number == result.account.username else result.number
        return [
            r
            for r in self.snapshot.routes
            if r.priority != 9999
            and r.providerid in (None, result.account.id)
            and (not r.number or number_key(r.number) == key or did_matches(as_pattern(r.number), exten))
        ]


Check = Callable[[Facts], Iterable[Finding]]


def shared_host_without_the_recipe(f: Facts) -> Iterator[Finding]:
    """A host with several logins where no account, or only some, has the recipe.
    Without it the provider's calls for every login land in the first account's
    context (calls for the others go astray); with it on only some, the rest lose theirs."""
    for host, members in f.hosts.items():
        with_recipe = [p for p in members if f.attrs[p.id].recipe]
        if len(members) < 2:
            continue
        if not with_recipe:
            names = ", ".join(f.who(p) for p in members)
            yield Finding(
                "shared_host_no_fix", Severity.WARNING, host, {"host": host, "logins": names}, FixHost(host)
            )
        elif len(with_recipe) < len(members):
            missing = ", ".join(f.who(p) for p in members if p not in with_recipe)
            yield Finding(
                "mixed_group", Severity.ERROR, host, {"host": host, "logins": missing}, FixHost(host)
            )


def recipe_login_without_a_route(f: Facts) -> Iterator[Finding]:
    """A login under the recipe that no "any provider" route matches: its calls
    go to public-direct-dial, find no route there, and are lost."""
    any_exact = {r.number for r in f.any_routes if r.number and not r.number.startswith("_")}
    any_patterns = [r.number for r in f.any_routes if r.number.startswith("_")]
    if any(not r.number for r in f.any_routes):
        return  # a catch-all "any" route takes every login
    for host, members in f.hosts.items():
        for p in members:
            if not f.attrs[p.id].recipe or not p.username:
                continue
            if p.username not in any_exact and not any(did_matches(d, p.username) for d in any_patterns):
                yield Finding(
                    "recipe_without_route",
                    Severity.ERROR,
                    p.username,
                    {"login": p.username, "host": host},
                    FixHost(host),
                )


def phone_without_a_route(f: Facts) -> Iterator[Finding]:
    """A phone an account is known by (/addnumber's phone, in its note) while the
    account is under the recipe, and no "any provider" route takes that phone in
    any spelling: a call the operator sends to the phone finds nothing in
    public-direct-dial (404). Outside the recipe the account's own context ends
    in the default route, so nothing is lost there."""
    any_keys = {number_key(r.number) for r in f.any_routes if r.number and not r.number.startswith("_")}
    any_patterns = [r.number for r in f.any_routes if r.number.startswith("_")]
    if any(not r.number for r in f.any_routes):
        return  # a catch-all "any" route takes every phone
    for host, members in f.hosts.items():
        for p in members:
            phone = rules.phone_of(p)
            if not f.attrs[p.id].recipe or phone is None or phone == number_key(p.username):
                continue  # the login's own route serves a login that is the phone
            forms = [rules.phone_did(phone, form) for form in rules.PHONE_DID_FORMS]
            if phone in any_keys or any(did_matches(d, n) for d in any_patterns for n in forms):
                continue
            did = rules.phone_did(phone, grammar.phone_did_form(p.host, None, f.evidence.phone_dids))
            yield Finding(
                "phone_without_route",
                Severity.ERROR,
                phone,
                {"phone": phone, "login": f.who(p), "did": did},
                FixHost(host),
            )


def route_to_a_missing_account(f: Facts) -> Iterator[Finding]:
    """A route bound to an account that is gone or disabled: it can never match a call."""
    listed = {p.id: p for p in f.snapshot.providers}
    for route in f.snapshot.routes:
        pid = route.providerid
        if pid is None:
            continue
        provider = f.by_id.get(pid) or listed.get(pid)
        if provider is None or provider.disabled:
            state = "missing" if provider is None else "disabled"
            yield Finding(
                "route_provider_" + state,
                Severity.WARNING,
                f"route {route.id}",
                {"route": route.id, "provider": pid},
            )


def route_bound_to_a_recipe_account(f: Facts) -> Iterator[Finding]:
    """A route bound to an account under the recipe: that account's calls go to
    public-direct-dial, which reads only "any provider" routes, so the bound route is dead."""
    for route in f.snapshot.routes:
        pid = route.providerid
        if pid is None or pid not in f.by_id or f.by_id[pid].disabled or not f.attrs[pid].recipe:
            continue
        account = f.by_id[pid]
        yield Finding(
            "dead_bound_route",
            Severity.ERROR,
            f"route {route.id}",
            {"route": route.id, "login": account.username, "did": route.number or "—"},
            FixHost(host_key(account.host)),
        )


def any_route_matching_nothing(f: Facts) -> Iterator[Finding]:
    """An "any provider" route whose DID is no login, no phone and no number calls
    arrived with: likely a typo, and the number it was meant for is not routed."""
    seen = {number_key(d) for d in f.evidence.cdr_dids}
    login_keys = {number_key(p.username) for p in f.accounts if p.username}
    for route in f.any_routes:
        if not route.number or route.number.startswith("_"):
            continue
        key = number_key(route.number)
        if key not in login_keys and key not in seen and normalise_phone(route.number) is None:
            yield Finding(
                "orphan_any_route",
                Severity.WARNING,
                f"route {route.id}",
                {"route": route.id, "did": route.number},
            )


def duplicate_did(f: Facts) -> Iterator[Finding]:
    """Two routes of one account (or two "any" routes) for one number: only the
    first by priority ever runs, the other misleads whoever reads the list."""
    for (_, key), routes in f.routes_by_number.items():
        if len(routes) > 1:
            yield Finding(
                "duplicate_did",
                Severity.WARNING,
                key,
                {"did": key, "routes": ", ".join(str(r.id) for r in routes)},
            )


def did_bound_and_any(f: Facts) -> Iterator[Finding]:
    """A number with a bound route and an "any provider" route: which one runs
    depends on the account's context, so a change to the recipe moves the call."""
    by_key = f.routes_by_number
    for (pid, key), routes in by_key.items():
        if pid is not None and (None, key) in by_key:
            both = ", ".join(str(r.id) for r in routes + by_key[(None, key)])
            yield Finding("did_bound_and_any", Severity.WARNING, key, {"did": key, "routes": both})


def missing_destination(f: Facts) -> Iterator[Finding]:
    """A route to an extension, queue or IVR that does not exist: its calls are dropped."""
    existing = {d.value for d in f.snapshot.destinations} | set(SYSTEM_DESTINATIONS)
    for route in f.snapshot.routes:
        if route.extension and route.extension not in existing:
            yield Finding(
                "missing_destination",
                Severity.ERROR,
                f"route {route.id}",
                {"route": route.id, "destination": route.extension},
            )


def did_in_another_form(f: Facts) -> Iterator[Finding]:
    """A route's DID stored in another spelling than calls arrive with (8495… for
    +7495…): Asterisk compares text, so the route never matches."""
    exact = {r.number for r in f.snapshot.routes if r.number}
    routes_by_key: dict[str, list[Route]] = defaultdict(list)
    for route in f.snapshot.routes:
        if route.number:
            routes_by_key[number_key(route.number)].append(route)
    for did in sorted(f.evidence.cdr_dids):
        if not did or did in exact:
            continue
        for route in routes_by_key.get(number_key(did), ()):
            if route.number != did:
                yield Finding(
                    "did_format",
                    Severity.ERROR,
                    f"route {route.id}",
                    {"route": route.id, "stored": route.number, "seen": did},
                )


def not_registered(f: Facts) -> Iterator[Finding]:
    """An outbound account that is rejected, or unregistered past the grace of a
    reload: the provider sends it no calls."""
    for p in f.accounts:
        if p.disabled or p.registration_type != "outbound":
            continue
        status = f.evidence.registration.get(p.id)
        if status is None or status.state in (RegistrationState.REGISTERED, RegistrationState.UNKNOWN):
            continue
        settling = status.state_duration is not None and status.state_duration < REGISTRATION_GRACE
        if status.state is RegistrationState.REJECTED or not settling:
            yield Finding(
                "not_registered",
                Severity.ERROR,
                f.who(p),
                {
                    "login": f.who(p),
                    "host": p.host,
                    "state": status.state.value,
                    "minutes": (status.state_duration or 0) // 60,
                },
            )


def inbound_shares_host(f: Facts) -> Iterator[Finding]:
    """An inbound-registration account on the host:port of other accounts: identify
    cannot tell them apart, so its calls may arrive as another account's."""
    for p in f.accounts:
        if p.disabled or p.registration_type != "inbound":
            continue
        if any(
            o.id != p.id and not o.disabled and same_host(o.host, p.host) and o.port == p.port
            for o in f.accounts
        ):
            yield Finding(
                "inbound_shares_host", Severity.ERROR, f.who(p), {"login": f.who(p), "host": p.host}
            )


def extra_parameters_dropped(f: Facts) -> Iterator[Finding]:
    """Extra parameters MikoPBX ignores: a section its generator does not read, a
    line without a value. Whatever they were meant to set is not set."""
    for p in f.accounts:
        a, who = f.attrs[p.id], f.who(p)
        for section in a.unknown_sections:
            yield Finding("attrs_unknown_section", Severity.WARNING, who, {"login": who, "section": section})
        for line in a.lines_without_value:
            yield Finding("attrs_line_dropped", Severity.WARNING, who, {"login": who, "line": line})


def extra_parameters_broken(f: Facts) -> Iterator[Finding]:
    """Extra parameters that break the account: a `line` without `endpoint` (or the
    reverse) in [registration], or a misspelt direct-dial context that no dialplan has."""
    for p in f.accounts:
        a, who = f.attrs[p.id], f.who(p)
        registration = a.sections.get("registration", {})
        if ("line" in registration) != ("endpoint" in registration):
            yield Finding("attrs_line_without_endpoint", Severity.ERROR, who, {"login": who})
        context = a.sections.get("endpoint", {}).get("context")
        if context and context != RECIPE_CONTEXT and "direct" in context:
            yield Finding("attrs_context_typo", Severity.ERROR, who, {"login": who, "context": context})


def login_falls_to_default(f: Facts) -> Iterator[Finding]:
    """A login no route serves while the default route rejects calls (busy, hangup):
    every call to it is refused."""
    default = f.evidence.default
    if default is None or default.extension not in ("busy", "hangup"):
        return
    tracer = f.tracer or Tracer(f.snapshot, default)
    for p in f.accounts:
        if p.disabled or p.registration_type != "outbound" or not p.username:
            continue
        if tracer.trace(p.username).outcome == "default":
            yield Finding(
                "login_falls_to_default",
                Severity.WARNING,
                p.username,
                {"login": p.username, "destination": default.extension},
            )


def guest_calls_reach_any(f: Facts) -> Iterator[Finding]:
    """Guest calls allowed while "any provider" routes exist: anyone on the internet
    can reach those destinations without an account."""
    if f.evidence.guest_calls and f.any_routes:
        yield Finding(
            "guest_calls_reach_any", Severity.WARNING, "general settings", {"routes": len(f.any_routes)}
        )


def calls_land_on_their_own_route(f: Facts) -> Iterator[Finding]:
    """Each login and DID traced like a call: an error when it ends anywhere but that
    number's own route (another account's route, the default route while one of its own
    exists, a 404); a warning when it is right only thanks to the shared host:port
    context, or when the call is recorded against another account while no recipe
    makes the login decide. Under the recipe that attribution is expected and routes
    nothing astray: one note per host names the logins it concerns."""
    attributed: dict[tuple[str, str], list[str]] = defaultdict(list)  # (host, other) -> numbers
    shared: dict[tuple[str, int, str], list[str]] = defaultdict(list)  # (host, port, other) -> numbers
    for result in f.traces:
        account = result.account
        if account is None or result.outcome == "no_account":
            continue
        if result.lines and result.lines[-1].key == "unknown_context":
            continue  # a custom context: attrs_context_typo speaks of it
        number, other = result.number, result.endpoint.username if result.endpoint else ""
        fix = (
            FixHost(host_key(account.host)) if result.collision and result.context != RECIPE_CONTEXT else None
        )
        params: dict[str, Any] = {"number": number, "login": account.username, "other": other or "—"}
        own = f.own_routes(result)
        if result.outcome == "not_found":
            if result.context == RECIPE_CONTEXT and number == account.username:
                continue  # recipe_without_route says it
            yield Finding("call_rejected", Severity.ERROR, number, {**params, "context": result.context}, fix)
        elif result.outcome == "default":
            if own:
                routes = ", ".join(str(r.id) for r in own)
                yield Finding(
                    "call_falls_to_default",
                    Severity.ERROR,
                    number,
                    {**params, "routes": routes, "destination": result.destination or "—"},
                    fix,
                )
        elif result.route is not None and result.route not in own:
            owner = f.by_id.get(result.route.providerid or "")
            yield Finding(
                "call_to_another_account",
                Severity.ERROR,
                number,
                {
                    **params,
                    "route": result.route.id,
                    "owner": f.who(owner) if owner else result.route.providerid,
                    "destination": result.route.extension,
                },
                fix,
            )
        elif result.collision and any(line.key == "context_shared" for line in result.lines):
            shared[(account.host, account.port, other or "—")].append(number)
        elif result.collision and result.context == RECIPE_CONTEXT:
            attributed[(account.host, other or "—")].append(number)
        elif result.collision:
            yield Finding("call_attributed_to_other", Severity.WARNING, number, params)
    for (on_host, port, picked), numbers in shared.items():  # one warning per host:port
        yield Finding(
            "call_right_by_shared_context",
            Severity.WARNING,
            on_host,
            {
                "number": _listed(numbers),
                "logins": ", ".join(numbers),
                "other": picked,
                "host": on_host,
                "port": port,
            },
            FixHost(host_key(on_host)),
        )
    for (on_host, picked), numbers in attributed.items():
        yield Finding(
            "call_attributed_to_other", Severity.INFO, on_host, {"number": _listed(numbers), "other": picked}
        )


def _listed(numbers: list[str], shown: int = 8) -> str:
    """Numbers for a sentence: the first few, and how many more."""
    more = len(numbers) - shown
    return ", ".join(numbers[:shown]) + (f" (+{more})" if more > 0 else "")


def cdr_collision(f: Facts) -> Iterator[Finding]:
    """Recent calls for one login recorded against another account of its host:
    the provider's INVITEs are identified as the first account's."""
    by_login = {p.username: p for p in f.accounts if p.username}
    # a login whose trace already shows the collision (calls_land_on_their_own_route) is not told twice
    seen: set[tuple[str, str]] = {
        (r.endpoint.id, r.account.id) for r in f.traces if r.collision and r.account and r.endpoint
    }
    for from_account, did in f.evidence.calls:
        caller, owner = f.by_id.get(from_account), by_login.get(did)
        if caller is None or owner is None or caller.id == owner.id or (caller.id, owner.id) in seen:
            continue
        if same_host(caller.host, owner.host):
            seen.add((caller.id, owner.id))
            yield Finding(
                "cdr_collision",
                Severity.INFO,
                owner.username,
                {"login": owner.username, "other": caller.username or caller.id},
            )


# Every check, by what it finds; `diagnose` runs them all. A new check: one function here.
CHECKS: tuple[Check, ...] = (
    shared_host_without_the_recipe,
    recipe_login_without_a_route,
    phone_without_a_route,
    route_to_a_missing_account,
    route_bound_to_a_recipe_account,
    any_route_matching_nothing,
    duplicate_did,
    did_bound_and_any,
    missing_destination,
    did_in_another_form,
    not_registered,
    inbound_shares_host,
    extra_parameters_dropped,
    extra_parameters_broken,
    login_falls_to_default,
    guest_calls_reach_any,
    calls_land_on_their_own_route,
    cdr_collision,
)


def diagnose(
    snapshot: Snapshot, evidence: Evidence | None = None, *, tracer: Tracer | None = None
) -> list[Finding]:
    """Every check's findings, worst first, in a stable order.
    `tracer`: a Tracer of this snapshot and default route, when the caller has one already."""
    facts = Facts(snapshot, evidence or Evidence(), tracer)
    findings = [finding for check in CHECKS for finding in check(facts)]
    return sorted(findings, key=lambda f: (f.severity.rank, f.code, f.subject))


def worst(findings: list[Finding]) -> Severity | None:
    return min((f.severity for f in findings), key=lambda s: s.rank, default=None)


@at(Priority.REPORT)
async def examine(
    pbx: Pbx, reader: SnapshotReader, *, cdr_limit: int = 2000, phone_dids: Mapping[str, str] | None = None
) -> tuple[Snapshot, list[Finding]]:
    """Read what the checks need (every account in full, registration states, the
    DIDs of recent calls) and diagnose. CDR is optional evidence: a PBX that
    refuses it still gets the other checks."""
    snapshot, registration, default = await asyncio.gather(
        reader.read(every_host=True), reader.registrations(), pbx.default_route()
    )
    evidence = Evidence(registration, default=default, phone_dids=phone_dids or {})
    unchecked: list[Finding] = []  # a read the PBX refused: the check it feeds is named, not dropped
    iter_cdr = getattr(pbx, "iter_cdr", None)
    if iter_cdr is not None:
        try:
            async for record in iter_cdr(page_size=500):
                if record.did:
                    evidence.cdr_dids.add(record.did)
                    evidence.calls.append((record.from_account, record.did))
                cdr_limit -= 1
                if cdr_limit <= 0:
                    break
        except PbxError as exc:
            unchecked.append(_unchecked("cdr_unchecked", "cdr", exc))
    general = getattr(pbx, "general_settings", None)
    if general is not None:
        try:
            evidence.guest_calls = str((await general()).get("PBXAllowGuestCalls", "0")) == "1"
        except PbxError as exc:
            unchecked.append(_unchecked("guest_calls_unchecked", "general-settings", exc))
    return snapshot, [*diagnose(snapshot, evidence), *unchecked]


def _unchecked(code: str, resource: str, exc: PbxError) -> Finding:
    refused = isinstance(exc, PbxForbidden | PbxAuthError)
    reason = f"the API key may not read /api/v3/{resource}" if refused else str(exc)
    return Finding(code, Severity.INFO, resource, {"resource": f"/api/v3/{resource}", "reason": reason})
