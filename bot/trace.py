"""Where does an inbound call to a login end up, and why.

MikoPBX 2026.1 as its source generates it (reference/sip-domain.md §1-2):
Asterisk identifies the provider's INVITE by source address, taking the first
identify (accounts in id order) whose match covers the host; the account's
endpoint context is its own `<id>-incoming`, the shared `<host><port>-incoming`
when several enabled accounts have that host:port, or whatever `context=` its
extra parameters set (the recipe: public-direct-dial, which includes the
"any provider" routes). The Request-URI user is the login the provider
registered with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pbx.models import Provider, Route

from .destinations import label
from .doctor import Attributes, _did_matches
from .planner import RECIPE_CONTEXT, find_number
from .snapshot import Snapshot


@dataclass(frozen=True)
class Line:
    key: str  # message catalogue: trace.<key>
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trace:
    number: str
    outcome: str  # dial | default | not_found | no_account
    account: Provider | None = None
    endpoint: Provider | None = None  # the account identify picks
    context: str = ""
    route: Route | None = None
    destination: str | None = None
    collision: bool = False
    lines: list[Line] = field(default_factory=list)


def _host(value: str) -> str:
    return value.strip().rstrip(".").lower()


def _group_key(p: Provider) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", f"{p.host}{p.port}") + "-incoming"


def _matches(p: Provider, attrs: Attributes) -> set[str]:
    found = {_host(p.host)} | {_host(h) for h in p.additional_hosts}
    if p.outbound_proxy:
        found.add(_host(p.outbound_proxy.split(";")[0].rsplit(":", 1)[0]))
    if "match" in attrs.sections.get("identify", {}):
        found.add(_host(attrs.sections["identify"]["match"]))
    return {m for m in found if m}


def _specificity(pattern: str) -> tuple[int, int]:
    if not pattern.startswith("_"):
        return (0, -len(pattern))
    return (1 if "!" not in pattern and "." not in pattern else 2, -len(pattern))


def _first(routes: list[Route], exten: str) -> Route | None:
    """The route Asterisk runs for `exten`: the most specific matching DID, then priority."""
    candidates = [r for r in routes if r.number and _did_matches(_as_pattern(r.number), exten)]
    if not candidates:
        return None
    best = min(_specificity(_as_pattern(r.number)) for r in candidates)
    chain = [r for r in candidates if _specificity(_as_pattern(r.number)) == best]
    return min(chain, key=lambda r: (r.priority, r.id or 0))


def _as_pattern(number: str) -> str:
    return number if number.startswith("_") or not re.search(r"[XNZ.!\[]", number) else "_" + number


def trace(snapshot: Snapshot, number: str, *, default: Route | None = None) -> Trace:
    """The path of a call the provider sends to `number` (a login, or a phone in an account's note)."""
    account = find_number(snapshot, number)
    if account is None:
        return Trace(number, "no_account", lines=[Line("no_account", {"number": number})])
    login = account.username
    enabled = sorted((p for p in snapshot.details.values() if not p.disabled), key=lambda p: p.id)
    attrs = {p.id: Attributes.parse(p.manualattributes) for p in enabled}
    result = Trace(number, "not_found", account=account)
    lines = result.lines
    lines.append(
        Line("account", {"login": login, "id": account.id, "host": account.host, "port": account.port})
    )
    if account.disabled:
        lines.append(Line("disabled", {"login": login}))
        result.outcome = "no_account"
        return result

    source = _host(account.host)
    matching = [p for p in enabled if source in _matches(p, attrs[p.id])]
    endpoint = matching[0] if matching else account
    result.endpoint = endpoint
    lines.append(
        Line(
            "identify",
            {"host": account.host, "id": endpoint.id, "login": endpoint.username, "n": len(matching)},
        )
    )
    if endpoint.id != account.id:
        result.collision = True
        lines.append(Line("collision", {"login": login, "other": endpoint.username or endpoint.id}))

    group = [p for p in enabled if _group_key(p) == _group_key(endpoint) and p.registration_type != "inbound"]
    context = _group_key(endpoint) if len(group) > 1 else f"{endpoint.id}-incoming"
    why = "shared" if len(group) > 1 else "own"
    override = attrs[endpoint.id].sections.get("endpoint", {}).get("context")
    if override:
        context, why = override, ("recipe" if override == RECIPE_CONTEXT else "override")
    result.context = context
    lines.append(Line(f"context_{why}", {"context": context}))

    live = [r for r in snapshot.routes if r.priority != 9999]
    if context == RECIPE_CONTEXT:
        pool = [r for r in live if r.any_provider]
        route = _first(pool, login) or next(
            (r for r in sorted(pool, key=lambda r: r.priority) if not r.number), None
        )
        if route is None:
            lines.append(Line("not_found", {"login": login, "context": context}))
            return result
    elif why in ("own", "shared"):
        members = {p.id for p in group} if why == "shared" else {endpoint.id}
        pool = [r for r in live if r.providerid in members]
        route = _first(pool, login)
        if route is None and why == "shared":  # exten => <login>: that account's empty-DID routes
            owner = next((p for p in group if p.username == login), None)
            own = [r for r in pool if not r.number and owner is not None and r.providerid == owner.id]
            route = min(own, key=lambda r: r.priority) if own else None
        if route is None:
            empty = [r for r in pool if not r.number]
            route = min(empty, key=lambda r: (r.priority, r.id or 0)) if empty else None
    else:
        lines.append(Line("unknown_context", {"context": context}))
        return result

    names = {d.value: label(d) for d in snapshot.destinations}
    if route is None:
        result.outcome = "default"
        result.destination = default.extension if default else None
        lines.append(
            Line("default", {"destination": names.get(result.destination or "", result.destination)})
        )
        return result
    result.outcome, result.route, result.destination = "dial", route, route.extension
    lines.append(
        Line(
            "route",
            {
                "id": route.id,
                "name": route.rulename,
                "did": route.number or "—",
                "destination": names.get(route.extension, route.extension),
            },
        )
    )
    return result
