"""Where does an inbound call to a login end up, and why.

MikoPBX 2026.1 as its source generates it (docs/ROUTING.md §1-2):
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

from bot.plans.destinations import label
from bot.plans.planner import find_number
from bot.plans.snapshot import Snapshot
from pbx.models import Provider, Route

from .rules import RECIPE_CONTEXT, Attributes, did_matches, host_key, number_key, shared_context


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


def _group_key(p: Provider) -> str:
    return shared_context(p.host, p.port)


def _matches(p: Provider, attrs: Attributes) -> set[str]:
    found = {host_key(p.host)} | {host_key(h) for h in p.additional_hosts}
    if p.outbound_proxy:
        found.add(host_key(p.outbound_proxy.split(";")[0].rsplit(":", 1)[0]))
    if "match" in attrs.sections.get("identify", {}):
        found.add(host_key(attrs.sections["identify"]["match"]))
    return {m for m in found if m}


def _specificity(pattern: str) -> tuple[int, int, int]:
    if not pattern.startswith("_"):
        return (0, -len(pattern), 0)
    return (1 if "!" not in pattern and "." not in pattern else 2, -len(pattern), pattern.count("!"))


def as_pattern(number: str) -> str:
    return number if number.startswith("_") or not re.search(r"[XNZ.!\[]", number) else "_" + number


class _Pool:
    """Routes indexed for lookups: exact DIDs in a dict, patterns apart (few)."""

    def __init__(self, routes: list[Route]):
        self.exact: dict[str, list[Route]] = {}
        self.patterns: list[Route] = []
        self.empty: list[Route] = []
        for r in routes:
            if not r.number:
                self.empty.append(r)
            elif as_pattern(r.number).startswith("_"):
                self.patterns.append(r)
            else:
                self.exact.setdefault(r.number, []).append(r)

    def first(self, exten: str, members: set[str | None] | None = None) -> Route | None:
        """The route Asterisk runs for `exten`: the most specific matching DID, then priority."""

        def ok(r: Route) -> bool:
            return members is None or r.providerid in members

        exact = [r for r in self.exact.get(exten, ()) if ok(r)]
        if exact:
            return min(exact, key=lambda r: (r.priority, r.id or 0))
        candidates = [r for r in self.patterns if ok(r) and did_matches(as_pattern(r.number), exten)]
        if not candidates:
            return None
        best = min(_specificity(as_pattern(r.number)) for r in candidates)
        chain = [r for r in candidates if _specificity(as_pattern(r.number)) == best]
        return min(chain, key=lambda r: (r.priority, r.id or 0))

    def with_did(self, did: str, members: set[str | None]) -> list[Route]:
        """The routes of `members` whose DID is `did` as written (a pattern's text included)."""
        return [
            r
            for r in (*self.exact.get(did, ()), *self.patterns)
            if r.number == did and r.providerid in members
        ]

    def catch_all(self, members: set[str | None] | None = None, exten: str = "0") -> Route | None:
        """The first empty-DID route: MikoPBX writes them under `_X!`, which takes only an
        extension starting with a digit (a `+7…` DID or a letter login is not caught)."""
        if not did_matches("_X!", exten):
            return None
        empty = [r for r in self.empty if members is None or r.providerid in members]
        return min(empty, key=lambda r: (r.priority, r.id or 0)) if empty else None


class Tracer:
    """Traces many numbers over one snapshot: what every number needs is indexed once."""

    def __init__(self, snapshot: Snapshot, default: Route | None = None):
        self.snapshot = snapshot
        self.default = default
        self.enabled = sorted((p for p in snapshot.details.values() if not p.disabled), key=lambda p: p.id)
        self.attrs = {p.id: Attributes.parse(p.manualattributes) for p in self.enabled}
        self.matches = {p.id: _matches(p, self.attrs[p.id]) for p in self.enabled}
        self.groups: dict[str, list[Provider]] = {}  # SIPConf::contexts_data: every enabled account
        for p in self.enabled:
            self.groups.setdefault(_group_key(p), []).append(p)
        live = [r for r in snapshot.routes if r.priority != 9999]
        self.any_pool = _Pool([r for r in live if r.any_provider])
        self.bound_pool = _Pool([r for r in live if not r.any_provider])
        self.by_login: dict[str, list[Provider]] = {}
        for p in sorted(snapshot.details.values(), key=lambda p: p.id):
            self.by_login.setdefault(p.username, []).append(p)
        self.names = {d.value: label(d) for d in snapshot.destinations}
        self._identified: dict[str, list[Provider]] = {}

    def _account(self, number: str) -> Provider | None:
        accounts = self.by_login.get(number, [])
        if len(accounts) == 1:
            return accounts[0]
        return find_number(self.snapshot, number)  # a phone in a note, or an ambiguous login

    def _matching(self, host: str) -> list[Provider]:
        if host not in self._identified:
            self._identified[host] = [p for p in self.enabled if host in self.matches[p.id]]
        return self._identified[host]

    def trace(self, number: str) -> Trace:
        """The path of a call the provider sends to `number` (a login, or a phone in an account's note)."""
        account = self._account(number)
        if account is None:
            return Trace(number, "no_account", lines=[Line("no_account", {"number": number})])
        return self.follow(account, self._sent_for(account, number), number)

    def _sent_for(self, account: Provider, number: str) -> str:
        """What the provider puts in the Request-URI for a call to `number`: the login for
        the login; for the phone the account is known by, the phone as a route's DID spells
        it (the form the operator sends, bot/plans/commands.py), else in E.164 digits."""
        key = number_key(number)
        if number == account.username or key == number_key(account.username):
            return account.username
        dids = (r.number for r in self.snapshot.routes if r.number and number_key(r.number) == key)
        return next(dids, None) or key.lstrip("+")

    def follow(self, account: Provider, exten: str, number: str | None = None) -> Trace:
        """The path of an INVITE from `account`'s host whose Request-URI user is `exten`
        (its login, or a DID the provider sends): `number` is what it was asked about."""
        login = account.username
        result = Trace(number or exten, "not_found", account=account)
        lines = result.lines
        lines.append(
            Line("account", {"login": login, "id": account.id, "host": account.host, "port": account.port})
        )
        if account.disabled:
            lines.append(Line("disabled", {"login": login}))
            result.outcome = "no_account"
            return result

        matching = self._matching(host_key(account.host))
        endpoint = matching[0] if matching else account
        result.endpoint = endpoint
        lines.append(
            Line(
                "identify",
                {"host": account.host, "id": endpoint.id, "login": endpoint.username, "n": len(matching)},
            )
        )
        result.collision = endpoint.id != account.id

        group = self.groups.get(_group_key(endpoint), [endpoint])
        shared = len(group) > 1 and endpoint.registration_type != "inbound"
        own = (
            f"{endpoint.username or endpoint.id}" if endpoint.registration_type == "inbound" else endpoint.id
        )
        context = _group_key(endpoint) if shared else f"{own}-incoming"
        why = "shared" if shared else "own"
        override = (
            self.attrs.get(endpoint.id, Attributes({}, [], [])).sections.get("endpoint", {}).get("context")
        )
        if override:
            context, why = override, ("recipe" if override == RECIPE_CONTEXT else "override")
        result.context = context
        if result.collision:  # what the collision means depends on the context it leads to
            other = endpoint.username or endpoint.id
            kind = {"recipe": "collision_recipe", "shared": "collision_shared"}.get(why, "collision")
            lines.append(Line(kind, {"login": login, "other": other}))
        lines.append(Line(f"context_{why}", {"context": context}))

        literal = False  # `exten => <login>`: matched, whatever its dial actions
        if context == RECIPE_CONTEXT:
            route = self.any_pool.first(exten) or self.any_pool.catch_all(exten=exten)
            if route is None:
                lines.append(Line("not_found", {"login": exten, "context": context}))
                return result
        elif why == "own" and len(group) > 1:  # an inbound account sharing host:port: no context of its own
            lines.append(Line("not_found", {"login": exten, "context": context}))
            return result
        elif why == "shared":
            members: set[str | None] = {p.id for p in group}
            owners = {p.id for p in group if p.username == exten}
            if owners:
                # exten => <login> (multiplyExtensionsInDialplan): the login's own empty-DID routes
                # and routes whose DID is the login; no pattern and no other account's catch-all
                chain = self.bound_pool.with_did(exten, members)
                chain += [r for r in self.bound_pool.empty if r.providerid in owners]
                route = min(chain, key=lambda r: (r.priority, r.id or 0)) if chain else None
                literal = True
            else:
                route = self.bound_pool.first(exten, members) or self.bound_pool.catch_all(members, exten)
        elif why == "own":
            members = {endpoint.id}
            if (
                exten == endpoint.username
                and not exten.isdigit()
                and not self.bound_pool.with_did(exten, members)
            ):  # a non-numeric login's own extension runs the account's empty-DID routes
                route, literal = self.bound_pool.catch_all(members), True
            else:
                route = self.bound_pool.first(exten, members) or self.bound_pool.catch_all(members, exten)
        else:
            lines.append(Line("unknown_context", {"context": context}))
            return result

        if route is None and not literal and not did_matches("_X!", exten):  # not even `_X!` takes it
            lines.append(Line("not_found", {"login": exten, "context": context}))
            return result
        if route is None:
            result.outcome = "default"
            result.destination = self.default.extension if self.default else None
            name = self.names.get(result.destination or "", result.destination)
            lines.append(Line("default", {"destination": name}))
            return result
        result.outcome, result.route, result.destination = "dial", route, route.extension
        lines.append(
            Line(
                "route",
                {
                    "id": route.id,
                    "name": route.rulename,
                    "did": route.number or "—",
                    "destination": self.names.get(route.extension, route.extension),
                },
            )
        )
        return result


def trace(snapshot: Snapshot, number: str, *, default: Route | None = None) -> Trace:
    """The path of a call the provider sends to `number`."""
    return Tracer(snapshot, default).trace(number)
