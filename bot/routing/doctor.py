"""The routing doctor: the checks of reference/sip-domain.md §4 that the PBX API
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
from dataclasses import dataclass, field
from typing import Any

from bot.plans.commands import FixHost, Intent
from bot.plans.snapshot import Snapshot, SnapshotReader
from pbx.errors import PbxError
from pbx.models import SYSTEM_DESTINATIONS, Provider, RegistrationState, RegistrationStatus, Route

from .rules import RECIPE_CONTEXT, Attributes, did_matches, host_key, normalise_phone, number_key, same_host
from .trace import Tracer

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


def groups_by_host(accounts: list[Provider]) -> dict[str, list[Provider]]:
    """Enabled accounts that register (or just send) to one host, by host."""
    groups: dict[str, list[Provider]] = defaultdict(list)
    for account in accounts:
        if not account.disabled and account.registration_type != "inbound" and account.host:
            groups[host_key(account.host)].append(account)
    return groups


def diagnose(
    snapshot: Snapshot, evidence: Evidence | None = None, *, tracer: Tracer | None = None
) -> list[Finding]:
    """`tracer`: a Tracer of this snapshot and default route, when the caller has one already."""
    evidence = evidence or Evidence()
    accounts = sorted(snapshot.details.values(), key=lambda p: p.id)
    attrs = {p.id: Attributes.parse(p.manualattributes) for p in accounts}
    by_id = {p.id: p for p in accounts}
    listed = {p.id: p for p in snapshot.providers}
    any_routes = snapshot.any_routes()
    logins = {p.username for p in accounts if p.username}
    any_exact = {r.number for r in any_routes if r.number and not r.number.startswith("_")}
    any_patterns = [r.number for r in any_routes if r.number.startswith("_")]
    any_catch_all = any(not r.number for r in any_routes)
    findings: list[Finding] = []

    # 1-3, 5: hosts with several logins, and how each member is handled
    for host, members in groups_by_host(accounts).items():
        with_recipe = [p for p in members if attrs[p.id].recipe]
        fix = FixHost(host)
        names = ", ".join(p.username or p.id for p in members)
        if len(members) >= 2 and not with_recipe:
            findings.append(
                Finding("shared_host_no_fix", Severity.WARNING, host, {"host": host, "logins": names}, fix)
            )
        elif len(members) >= 2 and len(with_recipe) < len(members):
            missing = ", ".join(p.username or p.id for p in members if p not in with_recipe)
            findings.append(
                Finding("mixed_group", Severity.ERROR, host, {"host": host, "logins": missing}, fix)
            )
        for p in with_recipe:
            reachable = p.username in any_exact or any(did_matches(d, p.username) for d in any_patterns)
            if p.username and not reachable and not any_catch_all:
                findings.append(
                    Finding(
                        "recipe_without_route",
                        Severity.ERROR,
                        p.username,
                        {"login": p.username, "host": host},
                        fix,
                    )
                )

    for route in snapshot.routes:
        label = f"route {route.id}"
        pid = route.providerid
        if pid is not None:
            provider = by_id.get(pid) or listed.get(pid)
            if provider is None or provider.disabled:
                state = "missing" if provider is None else "disabled"
                findings.append(
                    Finding(
                        "route_provider_" + state,
                        Severity.WARNING,
                        label,
                        {"route": route.id, "provider": pid},
                    )
                )
            elif pid in attrs and attrs[pid].recipe:
                host = host_key(by_id[pid].host)
                findings.append(
                    Finding(
                        "dead_bound_route",
                        Severity.ERROR,
                        label,
                        {"route": route.id, "login": by_id[pid].username, "did": route.number or "—"},
                        FixHost(host),
                    )
                )

    # 4, 9: "any" routes that match nothing, and duplicate DIDs
    seen = {number_key(d) for d in evidence.cdr_dids}
    login_keys = {number_key(login) for login in logins}
    for route in any_routes:
        if not route.number or route.number.startswith("_"):
            continue
        key = number_key(route.number)
        if key not in login_keys and key not in seen and normalise_phone(route.number) is None:
            findings.append(
                Finding(
                    "orphan_any_route",
                    Severity.WARNING,
                    f"route {route.id}",
                    {"route": route.id, "did": route.number},
                )
            )
    by_key: dict[tuple[str | None, str], list[Route]] = defaultdict(list)
    for route in snapshot.routes:
        if route.number:
            by_key[(route.providerid, number_key(route.number))].append(route)
    for (pid, key), routes in sorted(by_key.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
        if len(routes) > 1:
            ids = ", ".join(str(r.id) for r in routes)
            findings.append(Finding("duplicate_did", Severity.WARNING, key, {"did": key, "routes": ids}))
        if pid is not None and (None, key) in by_key:
            both = ", ".join(str(r.id) for r in routes + by_key[(None, key)])
            findings.append(Finding("did_bound_and_any", Severity.WARNING, key, {"did": key, "routes": both}))

    # 8: destinations that do not exist
    existing = {d.value for d in snapshot.destinations} | set(SYSTEM_DESTINATIONS)
    for route in snapshot.routes:
        if route.extension and route.extension not in existing:
            findings.append(
                Finding(
                    "missing_destination",
                    Severity.ERROR,
                    f"route {route.id}",
                    {"route": route.id, "destination": route.extension},
                )
            )

    # 10: a DID stored in another form than calls arrive with
    exact = {r.number for r in snapshot.routes if r.number}
    routes_by_key: dict[str, list[Route]] = defaultdict(list)
    for route in snapshot.routes:
        if route.number:
            routes_by_key[number_key(route.number)].append(route)
    for did in sorted(evidence.cdr_dids):
        if not did or did in exact:
            continue
        for route in routes_by_key.get(number_key(did), ()):
            if route.number != did:
                findings.append(
                    Finding(
                        "did_format",
                        Severity.ERROR,
                        f"route {route.id}",
                        {"route": route.id, "stored": route.number, "seen": did},
                    )
                )

    # 12: registration
    for p in accounts:
        if p.disabled or p.registration_type != "outbound":
            continue
        status = evidence.registration.get(p.id)
        if status is None or status.state in (RegistrationState.REGISTERED, RegistrationState.UNKNOWN):
            continue
        settling = status.state_duration is not None and status.state_duration < REGISTRATION_GRACE
        if status.state is RegistrationState.REJECTED or not settling:
            minutes = (status.state_duration or 0) // 60
            findings.append(
                Finding(
                    "not_registered",
                    Severity.ERROR,
                    p.username or p.id,
                    {
                        "login": p.username or p.id,
                        "host": p.host,
                        "state": status.state.value,
                        "minutes": minutes,
                    },
                )
            )

    # 17: an inbound-registration account sharing host:port with others
    for p in accounts:
        if p.disabled or p.registration_type != "inbound":
            continue
        others = [
            o
            for o in accounts
            if o.id != p.id and not o.disabled and same_host(o.host, p.host) and o.port == p.port
        ]
        if others:
            findings.append(
                Finding(
                    "inbound_shares_host",
                    Severity.ERROR,
                    p.username or p.id,
                    {"login": p.username or p.id, "host": p.host},
                )
            )

    # 18: extra parameters MikoPBX drops or cannot load
    for p in accounts:
        a = attrs[p.id]
        who = p.username or p.id
        for section in a.unknown_sections:
            findings.append(
                Finding("attrs_unknown_section", Severity.WARNING, who, {"login": who, "section": section})
            )
        for line in a.lines_without_value:
            findings.append(
                Finding("attrs_line_dropped", Severity.WARNING, who, {"login": who, "line": line})
            )
        registration = a.sections.get("registration", {})
        if ("line" in registration) != ("endpoint" in registration):
            findings.append(Finding("attrs_line_without_endpoint", Severity.ERROR, who, {"login": who}))
        context = a.sections.get("endpoint", {}).get("context")
        if context and context != RECIPE_CONTEXT and "direct" in context:
            findings.append(
                Finding("attrs_context_typo", Severity.ERROR, who, {"login": who, "context": context})
            )

    findings += _evidence_checks(snapshot, evidence, accounts, any_routes, tracer)
    return sorted(findings, key=lambda f: (f.severity.rank, f.code, f.subject))


def _evidence_checks(
    snapshot: Snapshot,
    evidence: Evidence,
    accounts: list[Provider],
    any_routes: list[Route],
    tracer: Tracer | None,
) -> list[Finding]:
    """Checks that need more than the records: the default route, general settings, call records."""
    findings: list[Finding] = []
    # 25: a login no route serves, while the default route rejects calls
    default = evidence.default
    if default is not None and default.extension in ("busy", "hangup"):
        tracer = tracer or Tracer(snapshot, default)
        for p in accounts:
            if p.disabled or p.registration_type != "outbound" or not p.username:
                continue
            if tracer.trace(p.username).outcome == "default":
                findings.append(
                    Finding(
                        "login_falls_to_default",
                        Severity.WARNING,
                        p.username,
                        {"login": p.username, "destination": default.extension},
                    )
                )
    # 21: guest calls reach the "any provider" routes
    if evidence.guest_calls and any_routes:
        findings.append(
            Finding(
                "guest_calls_reach_any", Severity.WARNING, "general settings", {"routes": len(any_routes)}
            )
        )
    # 22: calls for one login attributed to another account of its host
    by_login = {p.username: p for p in accounts if p.username}
    by_id = {p.id: p for p in accounts}
    seen: set[tuple[str, str]] = set()
    for from_account, did in evidence.calls:
        caller, owner = by_id.get(from_account), by_login.get(did)
        if caller is None or owner is None or caller.id == owner.id or (caller.id, owner.id) in seen:
            continue
        if same_host(caller.host, owner.host):
            seen.add((caller.id, owner.id))
            findings.append(
                Finding(
                    "cdr_collision",
                    Severity.INFO,
                    owner.username,
                    {"login": owner.username, "other": caller.username or caller.id},
                )
            )
    return findings


def worst(findings: list[Finding]) -> Severity | None:
    return min((f.severity for f in findings), key=lambda s: s.rank, default=None)


async def examine(
    pbx: Any, reader: SnapshotReader, *, cdr_limit: int = 2000
) -> tuple[Snapshot, list[Finding]]:
    """Read what the checks need (every account in full, registration states, the
    DIDs of recent calls) and diagnose. CDR is optional evidence: a PBX that
    refuses it still gets the other checks."""
    snapshot, registration, default = await asyncio.gather(
        reader.read(every_host=True), pbx.registration_statuses(), pbx.default_route()
    )
    evidence = Evidence(registration, default=default)
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
        except PbxError:
            pass
    general = getattr(pbx, "general_settings", None)
    if general is not None:
        try:
            evidence.guest_calls = str((await general()).get("PBXAllowGuestCalls", "0")) == "1"
        except PbxError:
            pass  # a least-privilege key may not read general settings: the check is skipped
    return snapshot, diagnose(snapshot, evidence)
