"""The routing map as data: every number (login, phone) -> the account an INVITE
for it is identified as -> the context -> the route -> the destination, by trace,
each marked with the worst of the doctor's findings about it.

Pure: a Snapshot (every account in full), the doctor's findings and the default
route in; a `RoutingMap` out. `lanes` cuts it into the rows a picture draws: every
number while they are few, else the numbers in trouble one by one (worst first)
and the rest summarised by host, context and destination. bot/text/routemap.py
draws it.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from bot.plans.snapshot import Snapshot, SnapshotReader
from pbx.base import Pbx
from pbx.models import Provider, Route

from .doctor import Finding, Severity, examine, worst
from .rules import RECIPE_CONTEXT, host_key, number_key
from .trace import Tracer

FULL_UP_TO = 24  # numbers drawn one by one; more: summarised
PROBLEM_LANES = 12  # numbers in trouble drawn one by one in a summarised map
MAX_LANES = 24  # rows of a summarised map at most (the last one may fold the rest)


@dataclass(frozen=True)
class Path:
    """Where a call to one number goes."""

    login: str
    phone: str  # the account's note when it holds a phone number, else ""
    host: str
    account: str  # the number's own account (id)
    endpoint: str  # the account identify binds the INVITE to (id), "" when none
    endpoint_login: str
    context: str
    route_id: int | None
    route_name: str
    did: str
    destination: str  # extension, "" when the call reaches none
    destination_name: str
    outcome: str  # dial | default | not_found | no_account (see trace.Trace)
    disabled: bool = False
    collision: bool = False  # identified as another account of the host
    severity: Severity | None = None  # the worst finding about this number
    codes: tuple[str, ...] = ()  # the findings about it

    @property
    def bound_elsewhere(self) -> bool:
        """Identified as another account, and that account's context decides (no recipe)."""
        return self.collision and self.context != RECIPE_CONTEXT

    @property
    def rank(self) -> int:
        return self.severity.rank if self.severity is not None else 3


@dataclass(frozen=True)
class Lane:
    """A row of the picture: one number, or numbers that share a host, context and destination."""

    paths: tuple[Path, ...]
    rest: bool = False  # the numbers left over once the rows ran out (any host, any destination)

    @property
    def single(self) -> bool:
        return len(self.paths) == 1 and not self.rest

    @property
    def severity(self) -> Severity | None:
        return min((p.severity for p in self.paths if p.severity), key=lambda s: s.rank, default=None)

    def common(self, attribute: str) -> str | None:
        """The value every number of the row shares, None when they differ."""
        values = {getattr(p, attribute) for p in self.paths}
        return str(values.pop()) if len(values) == 1 else None

    def count(self, attribute: str) -> int:
        return len({getattr(p, attribute) for p in self.paths})


@dataclass
class RoutingMap:
    pbx: str
    paths: list[Path]  # worst first, then by host, destination, login
    findings: list[Finding]  # the doctor's, as given

    @property
    def summarised(self) -> bool:
        return len(self.paths) > FULL_UP_TO

    def lanes(self) -> list[Lane]:
        """The rows to draw: every number, or (many) the worst one by one and the rest by group."""
        if not self.summarised:
            return [Lane((p,)) for p in self.paths]
        trouble = [p for p in self.paths if p.severity is not None]
        lanes = [Lane((p,)) for p in trouble[:PROBLEM_LANES]]
        groups: dict[tuple, list[Path]] = defaultdict(list)
        for p in trouble[PROBLEM_LANES:] + [p for p in self.paths if p.severity is None]:
            groups[(p.rank, host_key(p.host), p.context, p.destination, p.outcome)].append(p)
        ordered = sorted(groups.values(), key=lambda g: (g[0].rank, -len(g), g[0].host, g[0].destination))
        room = MAX_LANES - len(lanes)
        if len(ordered) > room:  # the biggest groups of each severity get rows, the rest one row
            kept, folded = ordered[: room - 1], ordered[room - 1 :]
            kept.sort(key=lambda g: (g[0].rank, g[0].host, g[0].destination))
            lanes += [Lane(tuple(g)) for g in kept]
            lanes.append(Lane(tuple(p for g in folded for p in g), rest=True))
        else:
            lanes += [Lane(tuple(g)) for g in ordered]
        return lanes


def _about(f: Finding, paths: Sequence[Path], by_login: dict[str, list[int]]) -> set[int]:
    """Which numbers (indexes) a finding is about: by login, DID, route, else host."""
    params = f.params
    found: set[int] = set()
    logins = [str(params["login"])] if params.get("login") else []
    if params.get("logins"):
        logins += [x.strip() for x in str(params["logins"]).split(",")]
    if not logins and f.subject in by_login:
        logins.append(f.subject)
    for login in logins:
        found.update(by_login.get(login, ()))
    if "did" in params:
        key = number_key(str(params["did"]))
        found.update(i for i, p in enumerate(paths) if key in (number_key(p.login), number_key(p.phone)))
    if "route" in params:
        route = params["route"]
        found.update(i for i, p in enumerate(paths) if p.route_id == route)
    if not found and not logins and "host" in params:
        host = host_key(str(params["host"]))
        found.update(i for i, p in enumerate(paths) if host_key(p.host) == host)
    return found


def _path(tracer: Tracer, account: Provider) -> Path:
    traced = tracer.trace(account.username)
    endpoint = traced.endpoint
    route: Route | None = traced.route
    destination = traced.destination or ""
    return Path(
        login=account.username,
        phone=account.note if number_key(account.note).startswith("+") else "",
        host=account.host,
        account=account.id,
        endpoint=endpoint.id if endpoint else "",
        endpoint_login=(endpoint.username or endpoint.id) if endpoint else "",
        context=traced.context,
        route_id=route.id if route else None,
        route_name=route.rulename if route else "",
        did=route.number if route else "",
        destination=destination,
        destination_name=tracer.names.get(destination, destination),
        outcome=traced.outcome,
        disabled=account.disabled,
        collision=traced.collision,
    )


def routing_map(
    snapshot: Snapshot, findings: Sequence[Finding], *, default: Route | None = None
) -> RoutingMap:
    """The map of `snapshot` (every account read in full) with the doctor's `findings`."""
    tracer = Tracer(snapshot, default)
    accounts = sorted((p for p in snapshot.details.values() if p.username), key=lambda p: p.id)
    paths = [_path(tracer, p) for p in accounts]
    by_login: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(paths):
        by_login[p.login].append(i)
    about: dict[int, list[Finding]] = defaultdict(list)
    for f in findings:
        for i in _about(f, paths, by_login):
            about[i].append(f)
    marked = []
    for i, p in enumerate(paths):
        mine = about.get(i, [])
        severity = worst(mine)
        codes = tuple(dict.fromkeys(f.code for f in mine))
        marked.append(replace(p, severity=severity, codes=codes))
    marked.sort(key=lambda p: (p.rank, host_key(p.host), p.destination_name, p.login))
    return RoutingMap(snapshot.pbx, marked, list(findings))


async def read_map(
    pbx: Pbx, reader: SnapshotReader, *, phone_dids: Mapping[str, str] | None = None
) -> RoutingMap:
    """Read what the doctor reads (and the default route), diagnose, and map."""
    (snapshot, findings), default = await asyncio.gather(
        examine(pbx, reader, phone_dids=phone_dids), pbx.default_route()
    )
    return routing_map(snapshot, findings, default=default)
