"""What a plan reads from one PBX, and the fingerprint of the records it depends on.

A snapshot for a host costs 3 list calls (accounts, routes, destinations) plus
one detail call per account on that host: the list lacks `manualattributes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pbx.base import Pbx
from pbx.models import Destination, Provider, ProviderSummary, Route

from .commands import number_key


def same_host(a: str, b: str) -> bool:
    # MikoPBX compares host strings as written; a trailing dot or case is the same server.
    return a.strip().rstrip(".").lower() == b.strip().rstrip(".").lower()


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
    _by_provider: dict[str | None, list[Route]] | None = field(default=None, init=False, repr=False)

    def accounts_on(self, host: str, *, enabled_only: bool = False) -> list[Provider]:
        """Full records of the SIP accounts registering to `host` (any port), by id."""
        accounts = [p for p in sorted_by_id(self.details) if same_host(p.host, host)]
        return [p for p in accounts if not p.disabled] if enabled_only else accounts

    def routes_of(self, provider_id: str) -> list[Route]:
        if self._by_provider is None:  # built once: a host of N accounts asks N times
            self._by_provider = {}
            for r in self.routes:
                self._by_provider.setdefault(r.providerid, []).append(r)
        return list(self._by_provider.get(provider_id, ()))

    def any_routes(self) -> list[Route]:
        return [r for r in self.routes if r.any_provider]

    def fingerprint(self, touched: Iterable[str] = ()) -> str:
        """Hash of the records a plan depends on: the accounts it writes (in full),
        which accounts the host has (their list entries), and every route (a DID
        may be taken by any). The executor re-reads exactly these before writing."""
        touched = set(touched)
        on_host = [p for p in self.providers if self.host is not None and same_host(p.host, self.host)]
        records = {
            "host": sorted((p.id, p.username, p.host, p.port, p.disabled) for p in on_host),
            "accounts": [
                p.model_dump(mode="json", exclude={"secret"})
                for p in sorted_by_id(self.details)
                if p.id in touched
            ],
            "routes": sorted(
                (r.model_dump(mode="json") for r in self.routes),
                key=lambda r: (r["id"] is None, r["id"] or 0),
            ),
        }
        blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


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

    def forget(self, provider_ids: Iterable[str] | None = None) -> None:
        """Drop kept details (all of them, or of these accounts): after a write."""
        if provider_ids is None:
            self._details.clear()
        for pid in provider_ids or ():
            self._details.pop(pid, None)

    async def read(
        self,
        *,
        host: str | None = None,
        number: str | None = None,
        fresh: Iterable[str] | bool = False,
        every_host: bool = False,
    ) -> Snapshot:
        """The lists, plus the accounts of `host` in full (or of the host that has
        the login/phone `number`). `fresh`: ids (or True for all) never taken from kept details."""
        providers, routes, destinations = await asyncio.gather(
            self.pbx.list_providers(), self.pbx.list_routes(), self.pbx.destinations()
        )
        matching = accounts_of_number(providers, number) if number is not None else []
        if host is None and len({p.host.lower() for p in matching}) == 1:
            host = matching[0].host
        # several hosts have this login: read those accounts, and let the planner say so
        on_host = [p for p in providers if same_host(p.host, host)] if host is not None else matching
        if every_host:  # the doctor and the digest: every account in full
            on_host = list(providers)
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
        fetched = await asyncio.gather(*(self.pbx.get_provider(pid) for pid in wanted))
        for detail in fetched:
            self._details[detail.id] = (now, detail)
            kept[detail.id] = detail
        return Snapshot(
            pbx=self.pbx.name,
            providers=providers,
            routes=routes,
            destinations=destinations,
            details=kept,
            host=host,
        )


def has_number(account: Provider | ProviderSummary, number: str) -> bool:
    """The account's login is `number`, or its note holds that phone number."""
    if account.username == number:
        return True
    key = number_key(number)
    return key.startswith("+") and bool(account.note) and number_key(account.note) == key


def accounts_of_number(providers: Iterable[ProviderSummary], number: str) -> list[ProviderSummary]:
    return [p for p in providers if has_number(p, number)]


async def read_snapshot(pbx: Pbx, *, host: str | None = None, number: str | None = None) -> Snapshot:
    """One snapshot, nothing kept: 3 list calls + one per account on the host."""
    return await SnapshotReader(pbx).read(host=host, number=number)
