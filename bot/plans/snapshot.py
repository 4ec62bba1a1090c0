"""What a plan reads from one PBX, what it depends on, and the fingerprint of those records.

A snapshot for a host costs 3 list calls (accounts, routes, destinations) plus
one detail call per account on that host: the list lacks `manualattributes`.

A plan records its dependencies (`Depends`) by key: the accounts and routes it
writes, the accounts whose settings it copies, the logins and DIDs it claims,
its destinations. The fingerprint hashes what the PBX holds under those keys,
so a change elsewhere (another login's account or route) leaves the plan valid.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bot.routing.rules import accounts_of_number, host_key, same_host
from pbx.base import Pbx
from pbx.models import Destination, Provider, ProviderSummary, Route


def sorted_by_id(records: dict[str, Provider]) -> list[Provider]:
    return [records[key] for key in sorted(records)]


@dataclass
class Snapshot:
    pbx: str
    providers: list[ProviderSummary]
    routes: list[Route]
    destinations: list[Destination]
    details: dict[str, Provider] = field(default_factory=dict)  # full records, by id
    host: str | None = None  # the host whose accounts were read in full

    def accounts_on(self, host: str, *, enabled_only: bool = False) -> list[Provider]:
        """Full records of the SIP accounts registering to `host` (any port), by id."""
        accounts = [p for p in sorted_by_id(self.details) if same_host(p.host, host)]
        return [p for p in accounts if not p.disabled] if enabled_only else accounts

    def routes_of(self, provider_id: str) -> list[Route]:
        return list(self.routes_by_provider.get(provider_id, ()))

    @cached_property
    def routes_by_provider(self) -> dict[str | None, list[Route]]:
        """Built once: a host of N accounts asks N times."""
        index: dict[str | None, list[Route]] = {}
        for r in self.routes:
            index.setdefault(r.providerid, []).append(r)
        return index

    def any_routes(self) -> list[Route]:
        return [r for r in self.routes if r.any_provider]

    @cached_property
    def any_by_did(self) -> dict[str, list[Route]]:
        """The "any provider" routes of each DID."""
        index: dict[str, list[Route]] = {}
        for r in self.routes:
            if r.any_provider:
                index.setdefault(r.number, []).append(r)
        return index

    @cached_property
    def routes_by_id(self) -> dict[int | None, Route]:
        return {r.id: r for r in self.routes}

    @cached_property
    def providers_by_id(self) -> dict[str, ProviderSummary]:
        return {p.id: p for p in self.providers}

    @cached_property
    def providers_by_login(self) -> dict[str, list[ProviderSummary]]:
        index: dict[str, list[ProviderSummary]] = {}
        for p in self.providers:
            index.setdefault(p.username, []).append(p)
        return index


@dataclass
class Depends:
    """What a plan's reasoning read from the PBX, by key. Stored with the plan;
    `fingerprint` hashes what the PBX holds under these keys, and nothing else."""

    accounts: set[str] = field(default_factory=set)  # written: in full
    routes: set[int] = field(default_factory=set)  # written: in full
    relied: set[str] = field(default_factory=set)  # read for their settings (copied, or deciding): in full
    bound: set[str] = field(default_factory=set)  # accounts whose provider-bound routes the plan handles
    # The plan's host: which of its enabled accounts count. Without `recipe`, every one (the plan
    # creates the host's only account). With it, every one but those whose extra parameters are
    # exactly `recipe` (as the bot writes them) and that have no provider-bound route: what a plan
    # for another login adds leaves this one valid, a hand-made account or an edited one does not.
    host: str | None = None
    recipe: str | None = None
    logins: set[tuple[str, str]] = field(default_factory=set)  # (host, login) claimed: no account has it
    numbers: set[str] = field(default_factory=set)  # which accounts have this login or phone, any host
    dids: set[str] = field(default_factory=set)  # "any provider" routes with this DID (none: it is free)
    destinations: set[str] = field(default_factory=set)  # extension -> kind and name
    providers: set[str] = field(default_factory=set)  # accounts the card names: login, description, host

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "accounts": sorted(self.accounts),
            "routes": sorted(self.routes),
            "relied": sorted(self.relied),
            "bound": sorted(self.bound),
            "logins": sorted([host, login] for host, login in self.logins),
            "numbers": sorted(self.numbers),
            "dids": sorted(self.dids),
            "destinations": sorted(self.destinations),
            "providers": sorted(self.providers),
        }
        if self.host is not None:
            data["host"] = {"name": self.host, "recipe": self.recipe}
        return {k: v for k, v in data.items() if v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Depends:
        host = data.get("host") or {}
        return cls(
            accounts=set(data.get("accounts", ())),
            routes={int(r) for r in data.get("routes", ())},
            relied=set(data.get("relied", ())),
            bound=set(data.get("bound", ())),
            host=host.get("name"),
            recipe=host.get("recipe"),
            logins={(h, login) for h, login in data.get("logins", ())},
            numbers=set(data.get("numbers", ())),
            dids=set(data.get("dids", ())),
            destinations=set(data.get("destinations", ())),
            providers=set(data.get("providers", ())),
        )

    async def read(self, reader: SnapshotReader) -> Snapshot:
        """What the stale check needs: the lists, the written and relied-on accounts
        afresh, and the host's accounts in full (kept ones) when their extra parameters count."""
        full = self.accounts | self.relied
        host = self.host if self.recipe is not None else None
        return await reader.read(host=host, accounts=full, fresh=full)

    def fingerprint(self, snapshot: Snapshot) -> str:
        """The hash of what the PBX holds under these keys. It costs one pass over the
        route list and one over the account list, keeping only the records under the
        plan's keys: no index of every route or account is built for it (at 5,000
        numbers those indexes were most of a warm propose's own time). The records
        hashed, and so the hash, are the same as an index would give."""
        s = snapshot
        routes = _DependedRoutes(self, s.routes)
        accounts = _DependedAccounts(self, s.providers)
        destinations = {d.value: d for d in s.destinations if d.value in self.destinations}
        records = {
            "accounts": [[pid, _account(s, pid)] for pid in sorted(self.accounts | self.relied)],
            "routes": [[rid, _route(routes.by_id.get(rid))] for rid in sorted(self.routes)],
            "bound": [[pid, sorted(routes.bound_ids(pid))] for pid in sorted(self.bound)],
            "host": self._host_state(s, accounts, routes),
            "logins": [
                [
                    host,
                    login,
                    sorted(p.id for p in accounts.by_login.get(login, ()) if same_host(p.host, host)),
                ]
                for host, login in sorted(self.logins)
            ],
            "numbers": [
                [n, sorted(p.id for p in accounts_of_number(s.providers, n))] for n in sorted(self.numbers)
            ],
            "dids": [[did, [_route(r) for r in routes.by_did.get(did, ())]] for did in sorted(self.dids)],
            "destinations": [
                [v, [d.type.value, d.name] if (d := destinations.get(v)) else None]
                for v in sorted(self.destinations)
            ],
            "providers": [
                [pid, [p.username, p.description, p.host] if (p := accounts.by_id.get(pid)) else None]
                for pid in sorted(self.providers)
            ],
        }
        blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def _host_state(
        self, s: Snapshot, accounts: _DependedAccounts, routes: _DependedRoutes
    ) -> list[Any] | None:
        if self.host is None:
            return None
        if self.recipe is None:
            return sorted(p.id for p in accounts.on_host)
        recipe, details, with_bound = self.recipe, s.details, routes.providers
        state = []
        for p in accounts.on_host:
            detail = details.get(p.id)
            attributes = detail.manualattributes if detail is not None else None
            if attributes == recipe and p.id not in with_bound:
                continue
            state.append([p.id, attributes, sorted(routes.bound_ids(p.id))])
        return sorted(state)


class _DependedRoutes:
    """The routes a fingerprint hashes, picked in one pass over the route list: those
    it names by id, the "any provider" routes of its DIDs (in list order), and which
    accounts have a provider-bound route at all (a route's ids are gathered for the
    few accounts that ask)."""

    def __init__(self, depends: Depends, routes: list[Route]):
        self._routes = routes
        self.by_id: dict[int | None, Route] = {}
        self.by_did: dict[str, list[Route]] = {}
        self.providers: set[str] = set()
        self._bound: dict[str, list[int]] = {}
        wanted_ids, dids = depends.routes, depends.dids
        for r in routes:
            if r.id in wanted_ids:
                self.by_id[r.id] = r  # the last of an id, as a dict of every route would keep
            provider = r.providerid
            if provider is None:
                if r.number in dids:
                    self.by_did.setdefault(r.number, []).append(r)
            else:
                self.providers.add(provider)

    def bound_ids(self, provider_id: str) -> list[int]:
        ids = self._bound.get(provider_id)
        if ids is None:
            if provider_id in self.providers:
                ids = [r.id or 0 for r in self._routes if r.providerid == provider_id]
            else:
                ids = []
            self._bound[provider_id] = ids
        return ids


class _DependedAccounts:
    """The accounts a fingerprint hashes, picked in one pass over the account list: by
    id (those the card names), by login (the logins claimed), and the enabled ones on
    the plan's host (each distinct host string's key computed once)."""

    def __init__(self, depends: Depends, providers: list[ProviderSummary]):
        self.by_id: dict[str, ProviderSummary] = {}
        self.by_login: dict[str, list[ProviderSummary]] = {}
        self.on_host: list[ProviderSummary] = []
        ids, logins = depends.providers, {login for _, login in depends.logins}
        key = host_key(depends.host) if depends.host is not None else None
        keys: dict[str, str] = {}
        for p in providers:
            if p.id in ids:
                self.by_id[p.id] = p
            if p.username in logins:
                self.by_login.setdefault(p.username, []).append(p)
            if key is not None and not p.disabled:
                found = keys.get(p.host)
                if found is None:
                    found = keys[p.host] = host_key(p.host)
                if found == key:
                    self.on_host.append(p)


def _account(snapshot: Snapshot, provider_id: str) -> dict[str, Any] | None:
    detail = snapshot.details.get(provider_id)
    return detail.model_dump(mode="json", exclude={"secret"}) if detail is not None else None


def _route(route: Route | None) -> dict[str, Any] | None:
    return route.model_dump(mode="json") if route is not None else None


def _matches(summary: ProviderSummary, detail: Provider) -> bool:
    return (summary.username, summary.host, summary.port, summary.disabled, summary.transport) == (
        detail.username,
        detail.host,
        detail.port,
        detail.disabled,
        detail.transport,
    )


class SnapshotReader:
    """Reads snapshots of one PBX, keeping account details between reads.

    MikoPBX lists accounts without their extra parameters, so a snapshot of a
    host with N accounts costs 3 + N calls; kept details make the next one cost
    3 (at 165 calls/min, 1,000 accounts would take six minutes to read). A kept
    detail is used for at most `ttl` seconds and only while its list entry is
    unchanged. A plan proposed from kept details is still safe: before writing,
    the executor reads every account it writes afresh (`fresh=`) and compares
    the fingerprint."""

    def __init__(self, pbx: Pbx, *, ttl: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.pbx = pbx
        self.ttl = ttl
        self._clock = clock
        self._details: dict[str, tuple[float, Provider]] = {}
        # reads under way, shared by whoever wants the same account meanwhile
        # (two commands at once read a host once); a forced read never joins one
        self._reading: dict[str, asyncio.Task[tuple[float, Provider]]] = {}

    def forget(self, provider_ids: Iterable[str]) -> None:
        """Drop the kept details of these accounts: after writing them. A created
        account was never kept, so a write forgets only what it touched."""
        for pid in provider_ids:
            self._details.pop(pid, None)
            self._reading.pop(pid, None)

    def clear(self) -> None:
        """Keep nothing: the next read fetches every account it needs."""
        self._details.clear()

    def _read_done(self, pid: str, task: asyncio.Task[tuple[float, Provider]]) -> None:
        if self._reading.get(pid) is task:
            del self._reading[pid]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter got it already, or none is left

    async def _detail(self, pid: str, *, forced: bool) -> Provider:
        """One account's details, read now; a read under way is joined unless `forced`."""
        task = None if forced else self._reading.get(pid)
        if task is None:
            started = self._clock()  # a detail's age counts from when its read began

            async def fetch() -> tuple[float, Provider]:
                return started, await self.pbx.get_provider(pid)

            task = asyncio.ensure_future(fetch())
            self._reading[pid] = task
            task.add_done_callback(lambda done: self._read_done(pid, done))
        started, detail = await asyncio.shield(task)
        kept = self._details.get(pid)
        if kept is None or kept[0] <= started:
            self._details[pid] = (started, detail)
        return detail

    async def read(
        self,
        *,
        host: str | None = None,
        number: str | None = None,
        fresh: Iterable[str] | bool = False,
        every_host: bool = False,
        accounts: Iterable[str] = (),
    ) -> Snapshot:
        """The lists, plus the accounts of `host` in full (or of the host that has
        the login/phone `number`), and the `accounts` named by id (those still listed).
        `fresh`: ids (or True for all) never taken from kept details."""
        providers, routes, destinations = await asyncio.gather(
            self.pbx.list_providers(), self.pbx.list_routes(), self.pbx.destinations()
        )
        matching = accounts_of_number(providers, number) if number is not None else []
        if host is None and len({host_key(p.host) for p in matching}) == 1:
            host = matching[0].host
        # several hosts have this login: read those accounts, and let the planner say so
        on_host = [p for p in providers if same_host(p.host, host)] if host is not None else matching
        if every_host:  # the doctor and the digest: every account in full
            on_host = list(providers)
        named = set(accounts) - {p.id for p in on_host}
        if named:
            on_host += [p for p in providers if p.id in named]
        now = self._clock()
        forced = set() if fresh is False else (set(fresh) if fresh is not True else {p.id for p in on_host})
        kept: dict[str, Provider] = {}
        wanted: list[str] = []
        for summary in on_host:
            entry = self._details.get(summary.id)
            if (
                entry is not None
                and summary.id not in forced
                and now - entry[0] < self.ttl
                and _matches(summary, entry[1])
            ):
                kept[summary.id] = entry[1]
            else:
                wanted.append(summary.id)
        fetched = await asyncio.gather(*(self._detail(pid, forced=pid in forced) for pid in wanted))
        for detail in fetched:
            kept[detail.id] = detail
        return Snapshot(
            pbx=self.pbx.name,
            providers=providers,
            routes=routes,
            destinations=destinations,
            details=kept,
            host=host,
        )


async def read_snapshot(pbx: Pbx, *, host: str | None = None, number: str | None = None) -> Snapshot:
    """One snapshot, nothing kept: 3 list calls + one per account on the host."""
    return await SnapshotReader(pbx).read(host=host, number=number)
