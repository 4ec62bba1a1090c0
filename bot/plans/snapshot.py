"""What a plan reads from one PBX, what it depends on, and the fingerprint of those records.

A snapshot for a host costs 3 list calls (accounts, routes, destinations) plus
one detail call per account on that host whose details the mirror lacks or
whose list entry changed: the list lacks `manualattributes` (see SnapshotReader).

A plan records its dependencies (`Depends`) by key: the accounts and routes it
writes, the accounts whose settings it copies, the logins and DIDs it claims,
its destinations. The fingerprint hashes what the PBX holds under those keys,
so a change elsewhere (another login's account or route) leaves the plan valid.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import json
import logging
import math
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property, partial
from typing import TYPE_CHECKING, Any, TypeVar

from bot.routing.rules import accounts_of_number, host_key, same_host
from pbx.base import Pbx, call_written, planning, reading_ahead
from pbx.budget import Priority, current_priority
from pbx.models import Destination, Provider, ProviderSummary, RegistrationStatus, Route
from storage.repos.mirror import GONE

if TYPE_CHECKING:
    from storage.aio import AsyncRepos

T = TypeVar("T")


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


_LISTS = ("routes", "destinations", "listed")  # the lists the mirror keeps (registrations aside)
NOTICE_OVER = 10  # a read of more account details than this is announced first ("never silent")
FETCH_BATCH = 500  # account details read at once, then stored (the mirror's transaction size too)
_MICROSECOND = 1e-6  # the database keeps read times to the microsecond
# a sync asks again for rows stamped this long before the newest it saw: a row is stamped
# before it commits, and by its process's clock (another host's may be a little behind)
SYNC_LAG = timedelta(seconds=5)
TRIM_AFTER = 1000  # after a read of this many details, the heap it freed goes back to the system
DEFAULT_RATE = 165 / 60  # calls a second, when the client does not say its own


@dataclass(frozen=True)
class Query:
    """What a read asks for (see SnapshotReader.read)."""

    host: str | None
    number: str | None
    fresh: Iterable[str] | bool
    every_host: bool
    accounts: tuple[str, ...]


@dataclass(frozen=True)
class SlowRead:
    """What a read is about to fetch detail by detail, and about how long it takes."""

    pbx: str
    accounts: int
    seconds: float


# Set by whoever waits for a read (a chat command): told before a read of more than
# NOTICE_OVER details begins, so it can say what it reads and how long it takes.
slow_read_notice: contextvars.ContextVar[Callable[[SlowRead], Awaitable[None]] | None] = (
    contextvars.ContextVar("slow_read_notice", default=None)
)

DriftHook = Callable[[Snapshot, Snapshot], Awaitable[object]]  # what it returns is not used
log = logging.getLogger("pbxbot.mirror")


def _stored(detail: Provider) -> dict[str, Any]:
    """An account as the mirror keeps it: never its SIP password."""
    return detail.model_dump(mode="json", exclude={"secret"})


def _same(a: Provider, b: Provider) -> bool:
    """The same account settings (the fields MikoPBX defines; not the password, not display extras)."""
    return all(getattr(a, name) == getattr(b, name) for name in _COMPARED)


_COMPARED = tuple(name for name in Provider.model_fields if name != "secret")


def _same_for_a_plan(a: Provider, b: Provider) -> bool:
    """The same account as a plan reads it: the settings and those MikoPBX answers beyond
    the model (cid_source, did_source...): update steps write them back, fingerprints hash them."""
    return _same(a, b) and a.model_extra == b.model_extra


def _routes_differ(old: list[Route], new: list[Route]) -> bool:
    """The route lists hold different routes. Priorities do not count: MikoPBX renumbers
    them on its own when a route is added or removed. Field by field, no serialising:
    every read compares lists of thousands."""
    if len(old) != len(new):
        return True
    by_id = {r.id: r for r in old}
    for route in new:
        was = by_id.get(route.id)
        if was is None or {**vars(was), "priority": 0} != {**vars(route), "priority": 0}:
            return True
    return False


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where there is none (musl, macOS, Windows). Looked up
    at the first big read: ctypes is not imported by an idle bot (0.2 MB resident)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory() -> None:
    """Give back to the system the heap a big read freed and glibc keeps for reuse:
    ~0.8 MB after a batched cold read of 5,000 accounts in a probe over the simulator
    (~2 MB before the batches), in well under a millisecond. No gc.collect(): it
    took ~0.1 s of the event loop and freed nothing the trim could then return."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _summary(detail: Provider) -> ProviderSummary:
    return ProviderSummary.model_validate(detail.model_dump(include=set(ProviderSummary.model_fields)))


class SnapshotReader:
    """Reads snapshots of one PBX over its mirror.

    MikoPBX lists accounts without their extra parameters, so reading a host of
    N accounts in full costs 3 + N calls (at 165 calls/min, 1,000 accounts take
    six minutes). The mirror (`storage` repo `mirror`, shared by every process
    on the database, and kept across restarts) holds each account's details as
    last read, and when; a read costs the 3 list calls plus one detail call
    for each account whose list entry differs from its mirrored details (or
    that was never read), or that the caller names `fresh`. There is no expiry:
    what the list cannot show (a hand edit of extra parameters) is found by
    `refresh`, which re-reads the oldest details first (see MirrorRefresher).

    A plan proposed from mirrored details is still safe: before writing, the
    executor reads every account it writes or relies on afresh (`fresh=`) and
    compares the fingerprint. The bot's own writes update the mirror from the
    PBX's answers (`remember`, `forget`, `remember_route`, `forget_route`).

    `on_drift(before, after)`, when set, is awaited when a read finds mirrored
    records changed on the PBX by someone else: `before` holds the mirror's view,
    `after` what the PBX holds now. Their `providers` and `details` hold only
    the accounts that changed (an account removed by hand is in `before` only);
    `routes` and `destinations` are the whole lists, as mirrored and as read.
    An account created by hand is not drift (the mirror only knows what it read)."""

    def __init__(
        self,
        pbx: Pbx,
        *,
        mirror: AsyncRepos | None = None,
        on_drift: DriftHook | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.pbx = pbx
        self.mirror = mirror
        self.on_drift = on_drift
        self._clock = clock
        self._details: dict[str, tuple[float, Provider]] = {}  # id -> (when its read began, the account)
        self._routes: list[Route] | None = None  # the lists as mirrored
        self._destinations: list[Destination] | None = None
        self._listed: set[str] | None = None  # the account ids the PBX listed at the last read
        self._loaded = False  # the mirror's rows are in memory
        self._lists_at: dict[str, float] = {}  # when the mirrored lists were read
        self._synced: datetime | None = None  # the newest read time seen in the mirror
        self._wipe = False  # clear() was called: the stored mirror goes at the next read
        # reads under way, shared by whoever wants the same account meanwhile
        # (two commands at once read a host once); a forced read never joins one
        self._reading: dict[str, asyncio.Task[tuple[float, Provider]]] = {}
        # how often each account was forgotten, and the mirror cleared: a read begun before
        # either is not kept when it ends (it would bring back what was dropped)
        self._dropped: dict[str, int] = {}
        self._cleared = 0
        # the record each account's last drift told it became: readers sharing a read (joined,
        # or taken as another one began it) tell its change once
        self._told: dict[str, Provider] = {}
        # when (time.monotonic) the read of each kept record began, for those kept while a read is
        # under way (emptied when none is): "begun since this read began" by a clock never stepped back
        self._began: dict[str, float] = {}
        self._fetching = 0
        # what `read_then` guesses from: the lists as last compared with the mirror, and the
        # mirror's version then (every change of what is kept here counts one)
        self._version = 0
        self._seen: tuple[list[ProviderSummary], list[Route], list[Destination]] | None = None
        self._seen_version = -1

    @property
    def rate(self) -> float:
        """PBX calls a second this reader can count on (for the time a read will take)."""
        budget = getattr(self.pbx, "budget", None)
        rate = getattr(budget, "rate", None)
        return float(rate) if isinstance(rate, int | float) and rate > 0 else DEFAULT_RATE

    def attach(self, mirror: AsyncRepos) -> None:
        """Keep the mirror in this database (unless the reader has one already)."""
        if self.mirror is None:
            self.mirror = mirror

    # ------------------------------------------------------------------ the mirror in memory and stored

    async def _sync(self) -> None:
        """Bring the stored mirror into memory: all of it the first time, then what
        other processes (or readers) stored since (their reads and their writes).
        Which records are newer than the ones in memory is asked first, then only
        those are loaded, FETCH_BATCH at a time: the records this reader stored
        itself are not loaded back, and 5,000 at once were a 30 MB peak."""
        if self.mirror is None:
            return
        name = self.pbx.name
        if self._wipe:
            self._wipe = False
            await self.mirror.mirror.drop(name)
        since = self._synced - SYNC_LAG if self._loaded and self._synced is not None else None
        stamps = await self.mirror.mirror.stamps(name, since)
        wanted: dict[str, list[str]] = {}
        newest = self._synced
        for kind, key, read_at in stamps:
            if kind == GONE:  # dropped by another process (or reader) after this one read it
                if key in self._details and self._newer("account", key, read_at.timestamp()):
                    self._version += 1
                    self._forget_here(key)
            elif self._newer(kind, key, read_at.timestamp()):
                wanted.setdefault(kind, []).append(key)
            if newest is None or read_at > newest:
                newest = read_at
        for kind, keys in wanted.items():
            for start in range(0, len(keys), FETCH_BATCH):
                for row in await self.mirror.mirror.get(name, kind, keys[start : start + FETCH_BATCH]):
                    self._take(row.kind, row.key, row.read_at.timestamp(), row.data)
        # only now: a load that failed or was given up is asked for again at the next sync
        if newest is not None and (self._synced is None or newest > self._synced):
            self._synced = newest
        self._loaded = True

    def _newer(self, kind: str, key: str, at: float) -> bool:
        """A stored record read after the one in memory. The database keeps microseconds:
        a time read back may be up to half of one above the float it was stored from."""
        if kind == "account":
            kept = self._details.get(key)
            return kept is None or at - kept[0] > _MICROSECOND
        if kind in _LISTS:
            return at - self._lists_at.get(kind, 0.0) > _MICROSECOND
        return False

    def _take(self, kind: str, key: str, at: float, data: dict[str, Any]) -> None:
        if not self._newer(kind, key, at):
            return
        self._version += 1  # another reader's record: what a plan made ahead read may be gone
        if kind == "account":
            self._details[key] = (at, Provider.model_validate(data))
            self._began.pop(key, None)  # another process's clock: never "begun since" a read here
            return
        self._lists_at[kind] = at
        items = data.get("items", ())
        if kind == "listed":
            self._listed = {str(pid) for pid in items}
        elif kind == "routes":
            self._routes = [Route.model_validate(r) for r in items]
        else:
            self._destinations = [Destination.model_validate(d) for d in items]

    async def _store(self, kind: str, records: dict[str, dict[str, Any]], at: float) -> None:
        if self.mirror is not None and records:
            when = datetime.fromtimestamp(at, UTC)
            try:
                await self.mirror.mirror.put(self.pbx.name, kind, records, at=when)
            except Exception as exc:  # the mirror is a help: a read or a write goes on without it
                log.warning("the mirror of %s could not be stored: %s", self.pbx.name, type(exc).__name__)

    async def _drop(self, provider_ids: list[str], at: float) -> None:
        if self.mirror is not None and provider_ids:
            try:
                await self.mirror.mirror.forget(
                    self.pbx.name, provider_ids, at=datetime.fromtimestamp(at, UTC)
                )
            except Exception as exc:
                log.warning("the mirror of %s could not be updated: %s", self.pbx.name, type(exc).__name__)

    async def remember(self, *accounts: Provider) -> None:
        """The PBX's answer to the bot's own write of these accounts: the mirror holds it."""
        now = self._clock()
        self._version += 1
        for account in accounts:
            if account.id:
                self._details[account.id] = (now, account)
                self._reading.pop(account.id, None)
                if self._fetching:
                    self._began[account.id] = time.monotonic()
        await self._store("account", {a.id: _stored(a) for a in accounts if a.id}, now)

    async def forget(self, provider_ids: Iterable[str]) -> None:
        """Drop these accounts from the mirror: removed, or written with an unknown outcome."""
        ids = [pid for pid in provider_ids if pid]
        self._version += 1
        for pid in ids:
            self._forget_here(pid)
        await self._drop(ids, self._clock())

    def _forget_here(self, pid: str) -> None:
        self._details.pop(pid, None)
        self._reading.pop(pid, None)
        self._dropped[pid] = self._dropped.get(pid, 0) + 1
        self._told.pop(pid, None)
        self._began.pop(pid, None)

    async def remember_route(self, route: Route) -> None:
        """The PBX's answer to the bot's own write of a route."""
        if self._routes is not None and route.id is not None:
            self._routes = [r for r in self._routes if r.id != route.id] + [route]
            await self._store_list("routes", self._routes)

    async def forget_route(self, route_id: int | str) -> None:
        if self._routes is not None:
            self._routes = [r for r in self._routes if str(r.id) != str(route_id)]
            await self._store_list("routes", self._routes)

    async def _store_list(self, kind: str, items: Iterable[Any]) -> None:
        if kind in _LISTS:
            self._version += 1
        data = {"items": [item if isinstance(item, str) else item.model_dump(mode="json") for item in items]}
        now = self._lists_at[kind] = self._clock()
        await self._store(kind, {"": data}, now)

    def clear(self) -> None:
        """Keep nothing, here or stored: the next read fetches every account it needs."""
        self._version += 1
        self._cleared += 1
        self._details.clear()
        self._reading.clear()
        self._told.clear()
        self._began.clear()
        self._routes = self._destinations = None
        self._listed = None
        self._lists_at.clear()
        self._loaded = True
        self._wipe = self.mirror is not None

    async def registrations(self, *, force: bool = False) -> dict[str, RegistrationStatus]:
        """The registration states, read now; the mirror keeps them with their time."""
        statuses = await self.pbx.registration_statuses(force=force)
        await self._store_list("registrations", statuses.values())
        return statuses

    # ------------------------------------------------------------------ reading

    def _read_done(
        self, pid: str, task: asyncio.Task[tuple[float, Provider]], epoch: tuple[int, int], began: float
    ) -> None:
        """A read over: kept at once, in the step that ends it as a read under way (between
        the two, a reader starting a batch would find the account neither kept nor being read).
        Not kept if the account was forgotten (or the mirror cleared) since the read began."""
        if self._reading.get(pid) is task:
            del self._reading[pid]
        # an exception is retrieved here: every waiter has it already, or none is left
        if task.cancelled() or task.exception() is not None:
            return
        if epoch != (self._cleared, self._dropped.get(pid, 0)):
            return
        started, detail = task.result()
        kept = self._details.get(pid)
        if kept is None or kept[0] <= started:
            self._details[pid] = (started, detail)
            if self._fetching:
                self._began[pid] = began
            else:
                self._began.pop(pid, None)
            # the refresher's re-read of the same settings changes nothing a plan reads (never the password)
            if kept is None or not _same_for_a_plan(kept[1], detail):
                self._version += 1

    async def _detail(self, pid: str, *, forced: bool, since: float) -> tuple[float, Provider]:
        """One account's details, read now; unless `forced`, a read under way is joined and
        one another reader here began at `since` (time.monotonic) or later is taken as it is (checked as this
        coroutine starts, not when its batch was made: meanwhile a read may have ended)."""
        kept = None if forced else self._details.get(pid)
        if kept is not None and self._began.get(pid, -math.inf) >= since:
            return kept
        task = None if forced else self._reading.get(pid)
        if task is None:
            started = self._clock()  # a detail's age counts from when its read began

            async def fetch() -> tuple[float, Provider]:
                return started, await self.pbx.get_provider(pid)

            epoch = (self._cleared, self._dropped.get(pid, 0))
            began = time.monotonic()
            task = asyncio.ensure_future(fetch())
            # a command never waits behind the refresher's read: that one takes spare budget only
            if current_priority() is not Priority.BACKGROUND:
                self._reading[pid] = task
            task.add_done_callback(lambda done: self._read_done(pid, done, epoch, began))
        return await asyncio.shield(task)  # kept by _read_done

    async def _fetch(self, pids: list[str], forced: set[str]) -> dict[str, Provider]:
        """Read these accounts' details, store them, and tell `on_drift` what changed.

        FETCH_BATCH at a time, each batch stored before the next begins: a cold read of
        5,000 accounts held two tasks, two shields and a budget ticket for every account
        for the whole read (~8 KB each, 40 MB), and the process kept that peak as resident
        memory. The budget paces the calls anyway: a batch waits no longer than the
        accounts in it would. A detail another reader began after this read began (two
        commands reading one host) is taken as it is, not read twice."""
        began = time.monotonic()  # not the wall clock: `since` compares reads of this process only
        self._fetching += 1
        try:
            return await self._fetch_batches(pids, forced, began)
        finally:
            self._fetching -= 1
            if not self._fetching:
                self._began.clear()

    async def _fetch_batches(self, pids: list[str], forced: set[str], began: float) -> dict[str, Provider]:
        details: dict[str, Provider] = {}
        before: dict[str, Provider] = {}
        after: dict[str, Provider] = {}
        failure: BaseException | None = None
        for start in range(0, len(pids), FETCH_BATCH):
            batch = pids[start : start + FETCH_BATCH]
            old = {pid: self._details[pid] for pid in batch if pid in self._details}
            reads = (self._detail(pid, forced=pid in forced, since=began) for pid in batch)
            # one failed read fails the read, after the others of its batch are stored and told
            results = await asyncio.gather(*reads, return_exceptions=True)
            fetched: dict[str, tuple[float, Provider]] = {}
            for pid, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    failure = failure or result
                else:
                    fetched[pid] = result
            new = {detail.id: detail for _, detail in fetched.values()}
            # stored only where it is what the mirror keeps: a read ended after a newer one (the
            # refresher's, not joined), after `remember`, or after `forget` is not
            current = {
                pid: entry
                for pid, entry in fetched.items()
                if (kept := self._details.get(pid)) is not None and kept[1] is entry[1]
            }
            if current:
                read_at = min(started for started, _ in current.values())
                await self._store("account", {pid: _stored(d) for pid, (_, d) in current.items()}, read_at)
            # told whether or not it is still kept: a newer read may have replaced it since (the
            # refresher's, with this one's record as its "before"), and that one tells nothing
            for pid, (_, was) in old.items():
                if (
                    pid in fetched
                    and not _same(was, now := fetched[pid][1])
                    and self._told.get(pid) is not now
                ):
                    before[pid], after[pid] = was, now
                    self._told[pid] = now
            details.update(new)
            if failure is not None:
                break
        if before:
            await self._drifted(before, after)
        if failure is not None:
            raise failure
        if len(pids) >= TRIM_AFTER:
            release_memory()
        return details

    async def _drifted(
        self,
        before: dict[str, Provider],
        after: dict[str, Provider],
        *,
        routes: tuple[list[Route], list[Route]] | None = None,
        destinations: tuple[list[Destination], list[Destination]] | None = None,
    ) -> None:
        if self.on_drift is None:
            return
        routes = routes or (list(self._routes or ()), list(self._routes or ()))
        destinations = destinations or (list(self._destinations or ()), list(self._destinations or ()))
        # the rest of the mirror, unchanged, on both sides: the hook traces calls through it
        # (a route edited by hand moves calls of accounts no detail read touched)
        rest = {pid: entry[1] for pid, entry in self._details.items()}
        then_details = {pid: p for pid, p in {**rest, **before}.items() if pid in before or pid not in after}
        now_details = {pid: p for pid, p in {**rest, **after}.items() if pid in after or pid not in before}
        then = Snapshot(
            pbx=self.pbx.name,
            providers=[_summary(p) for p in then_details.values()],
            routes=routes[0],
            destinations=destinations[0],
            details=then_details,
        )
        now = Snapshot(
            pbx=self.pbx.name,
            providers=[_summary(p) for p in now_details.values()],
            routes=routes[1],
            destinations=destinations[1],
            details=now_details,
        )
        try:
            await self.on_drift(then, now)
        except Exception:  # a hook's failure never fails the read
            log.exception("the drift hook of %s failed", self.pbx.name)

    async def _read_lists(self) -> tuple[list[ProviderSummary], list[Route], list[Destination]]:
        """The 3 list calls, with the stored mirror brought in meanwhile."""
        (providers, routes, destinations), _ = await asyncio.gather(
            asyncio.gather(self.pbx.list_providers(), self.pbx.list_routes(), self.pbx.destinations()),
            self._sync(),
        )
        return providers, routes, destinations

    async def _lists_now(self) -> tuple[list[ProviderSummary], list[Route], list[Destination]]:
        """The 3 list calls, compared with the mirror."""
        providers, routes, destinations = await self._read_lists()
        await self._lists(providers, routes, destinations)
        return providers, routes, destinations

    async def _lists(
        self, providers: list[ProviderSummary], routes: list[Route], destinations: list[Destination]
    ) -> None:
        """Compare the lists with the mirror: store what changed; removed accounts and
        changed routes or destinations not written by the bot are drift."""
        listed = {p.id for p in providers}
        gone = {pid: entry[1] for pid, entry in self._details.items() if pid not in listed}
        routes_changed = self._routes is not None and _routes_differ(self._routes, routes)
        # a destination list changes with the bot's own writes too (an account is one): kept, not drift
        dest_changed = self._destinations is not None and self._destinations != destinations
        if gone or routes_changed:
            await self._drifted(
                gone,
                {},
                routes=(list(self._routes or routes), routes),
                destinations=(list(self._destinations or destinations), destinations),
            )
        if gone:
            await self.forget(gone)
        # an account listed now that the last list lacked, and not the bot's own (its writes are
        # mirrored): added by hand; read it, and tell it as drift
        added = [p.id for p in providers if self._listed is not None and p.id not in self._listed]
        added = [pid for pid in added if pid not in self._details]
        if added:
            # not forced: two reads listing it at once share one read of it, and tell it once
            details = await self._fetch(added, set())
            new = {pid: d for pid, d in details.items() if self._told.get(pid) is not d}
            self._told.update(new)
            if new:
                await self._drifted({}, new)
        if self._listed is None or self._listed != listed:
            self._listed = listed
            await self._store_list("listed", sorted(listed))
        if self._routes is None or routes_changed:
            await self._store_list("routes", routes)
        if self._destinations is None or dest_changed:
            await self._store_list("destinations", destinations)
        self._routes, self._destinations = list(routes), list(destinations)
        self._seen, self._seen_version = (providers, routes, destinations), self._version

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
        `fresh`: ids (or True for all) read now, never taken from the mirror."""
        query = Query(host, number, fresh, every_host, tuple(accounts))
        return await self._read(query, await self._lists_now())

    async def _read(
        self, query: Query, lists: tuple[list[ProviderSummary], list[Route], list[Destination]]
    ) -> Snapshot:
        snapshot, wanted, forced = self._select(query, lists)
        notice = slow_read_notice.get()
        if notice is not None and len(wanted) > NOTICE_OVER:
            await notice(SlowRead(self.pbx.name, len(wanted), len(wanted) / self.rate))
        snapshot.details.update(await self._fetch(wanted, forced))
        return snapshot

    def _select(
        self, query: Query, lists: tuple[list[ProviderSummary], list[Route], list[Destination]]
    ) -> tuple[Snapshot, list[str], set[str]]:
        """The snapshot `query` asks for over these lists with the details kept here, the
        ids of the details still to read, and those of them to read even if kept."""
        providers, routes, destinations = lists
        host, number, fresh = query.host, query.number, query.fresh
        matching = accounts_of_number(providers, number) if number is not None else []
        if host is None and len({host_key(p.host) for p in matching}) == 1:
            host = matching[0].host
        # several hosts have this login: read those accounts, and let the planner say so
        on_host = [p for p in providers if same_host(p.host, host)] if host is not None else matching
        if query.every_host:  # the doctor and the digest: every account in full
            on_host = list(providers)
        named = set(query.accounts) - {p.id for p in on_host}
        if named:
            on_host += [p for p in providers if p.id in named]
        forced = set() if fresh is False else (set(fresh) if fresh is not True else {p.id for p in on_host})
        kept: dict[str, Provider] = {}
        wanted: list[str] = []
        for summary in on_host:
            entry = self._details.get(summary.id)
            if entry is not None and summary.id not in forced and _matches(summary, entry[1]):
                kept[summary.id] = entry[1]
            else:
                wanted.append(summary.id)
        snapshot = Snapshot(
            pbx=self.pbx.name,
            providers=providers,
            routes=routes,
            destinations=destinations,
            details=kept,
            host=host,
        )
        return snapshot, wanted, forced

    def read_ahead(self) -> asyncio.Event:
        """Begin the 3 list calls now, for a command about to read (it joins them, as any
        read under way is joined): they leave before the command has looked up whatever
        it looks up first (or takes their answers, if they came before it asked: see
        `reading_ahead`). Nothing is compared or kept here; the command does that.
        Returns an event set once the requests are written (or have failed)."""
        written = asyncio.Event()
        # one after another, each once the one before is written: three at once would take
        # turns on the loop, and the first would leave when the last does (~1 ms later).
        # The route list first: its answer is the slowest to make. The destinations next:
        # a short answer, taken in while the long ones are still being made, not after them.
        calls: list[Callable[[], Awaitable[Any]]] = [
            self.pbx.list_routes,
            self.pbx.destinations,
            self.pbx.list_providers,
        ]

        def begin() -> None:
            if not calls:
                written.set()
                return
            call = calls.pop(0)
            once = _once(begin)  # written, or failed (then never written)
            ahead, told = reading_ahead.set(True), call_written.set(once)
            try:
                task = asyncio.ensure_future(call())
            finally:
                call_written.reset(told)
                reading_ahead.reset(ahead)
            task.add_done_callback(partial(_ended, once))

        begin()
        return written

    async def read_then(
        self,
        work: Callable[[Snapshot], T],
        *,
        host: str | None = None,
        number: str | None = None,
        accounts: Iterable[str] = (),
    ) -> tuple[Snapshot, T]:
        """`snapshot = await read(...)` and `work(snapshot)`, with `work` done while the
        list calls are on the wire: on the snapshot the mirror gives when it holds every
        record the query needs. If the lists then come back as they were (equal to the
        lists last compared with the mirror) and nothing kept here changed meanwhile, that
        snapshot is what `read` returns, so that result (or exception) is the answer; if
        not, `work` runs again on the snapshot read. The PBX answers in the time the
        planning takes instead of after it (a plan over 1,000 accounts: ~10 ms).
        `work` must not await or keep state: it may run twice."""
        query = Query(host, number, False, False, tuple(accounts))
        seen, version = self._seen, self._version
        planned = planning.set(True)  # the lists a command plans on: read ahead for it, maybe
        try:
            if seen is None or version != self._seen_version:
                snapshot = await self._read(query, await self._lists_now())
                return snapshot, work(snapshot)
            sent = asyncio.Event()
            token = call_written.set(_counted(3, sent))  # the three list calls
            try:
                reading = asyncio.ensure_future(self._read_lists())
            finally:
                call_written.reset(token)
            try:
                return await self._then(work, query, seen, version, reading, sent)
            finally:
                if not reading.done():  # given up or `work` failed: the list calls go too, as in `read`
                    reading.cancel()
        finally:
            planning.reset(planned)

    async def _then(
        self,
        work: Callable[[Snapshot], T],
        query: Query,
        seen: tuple[list[ProviderSummary], list[Route], list[Destination]],
        version: int,
        reading: asyncio.Future[tuple[list[ProviderSummary], list[Route], list[Destination]]],
        sent: asyncio.Event,
    ) -> tuple[Snapshot, T]:
        waiting = asyncio.ensure_future(sent.wait())
        try:  # the requests leave before the loop is busy planning (or the read ends: an error)
            await asyncio.wait((reading, waiting), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        guess, wanted, _ = self._select(query, seen)
        failure: Exception | None = None
        if not wanted:  # the mirror holds every record the query needs: the guess is made
            try:
                result = work(guess)
            except Exception as exc:  # the answer only if the guess holds
                failure = exc
        lists = await reading
        if not wanted and self._version == version and lists == seen:
            if self._seen is seen:
                # equal, but parsed anew (the answer's bytes moved): kept, so that the next
                # read compares the client's kept records by identity, not 2,000 models by value
                self._seen = lists
            if failure is not None:
                raise failure
            return guess, result
        await self._lists(*lists)
        snapshot = await self._read(query, lists)
        return snapshot, work(snapshot)

    # ------------------------------------------------------------------ the refresher's part

    async def refresh(self, count: int) -> list[str]:
        """Re-read the details of up to `count` accounts, those never read first, then
        oldest first by read time: what the list cannot show (extra parameters edited
        by hand) is found within (accounts / count) refresh rounds. Returns the ids read."""
        if count <= 0:
            return []
        providers, _, _ = await self._lists_now()  # routes edited, accounts added or removed: drift now
        listed = {p.id for p in providers}
        never = [p.id for p in providers if p.id not in self._details]
        # a list entry that no longer matches its mirrored details (disabled, host, port): next
        moved = [p.id for p in providers if p.id in self._details and not _matches(p, self._details[p.id][1])]
        oldest = sorted((entry[0], pid) for pid, entry in self._details.items() if pid in listed)
        chosen = list(dict.fromkeys(never + moved + [pid for _, pid in oldest]))[:count]
        await self._fetch(chosen, set(chosen))
        return chosen


def _counted(count: int, event: asyncio.Event) -> Callable[[], None]:
    """A `call_written` callback that sets `event` once `count` calls are written."""
    left = [count]

    def one_written() -> None:
        left[0] -= 1
        if left[0] == 0:
            event.set()

    return one_written


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """`action`, run at the first call only."""
    done = [False]

    def first() -> None:
        if not done[0]:
            done[0] = True
            action()

    return first


def _ended(then: Callable[[], None], task: asyncio.Future[Any]) -> None:
    then()
    _retrieved(task)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A call begun ahead fails for its joiner (told there), or for nobody."""
    if not task.cancelled():
        task.exception()


async def read_snapshot(pbx: Pbx, *, host: str | None = None, number: str | None = None) -> Snapshot:
    """One snapshot, nothing kept: 3 list calls + one per account on the host."""
    return await SnapshotReader(pbx).read(host=host, number=number)
