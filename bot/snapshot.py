"""What a plan reads from one PBX, and the fingerprint of the records it depends on.

A snapshot for a host costs 3 list calls (accounts, routes, destinations) plus
one detail call per account on that host: the list lacks `manualattributes`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field

from pbx.base import Pbx
from pbx.models import Destination, Provider, ProviderSummary, Route


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

    def accounts_on(self, host: str, *, enabled_only: bool = False) -> list[Provider]:
        """Full records of the SIP accounts registering to `host` (any port), by id."""
        accounts = [p for p in sorted_by_id(self.details) if same_host(p.host, host)]
        return [p for p in accounts if not p.disabled] if enabled_only else accounts

    def routes_of(self, provider_id: str) -> list[Route]:
        return [r for r in self.routes if r.providerid == provider_id]

    def any_routes(self) -> list[Route]:
        return [r for r in self.routes if r.any_provider]

    def fingerprint(self) -> str:
        """Hash of the records a plan on this snapshot depends on: the accounts read
        in full (those on the plan's host) and every route (a DID may be taken by any)."""
        records = {
            "accounts": [p.model_dump(mode="json", exclude={"secret"}) for p in sorted_by_id(self.details)],
            "routes": sorted(
                (r.model_dump(mode="json") for r in self.routes),
                key=lambda r: (r["id"] is None, r["id"] or 0),
            ),
        }
        blob = json.dumps(records, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


async def read_snapshot(pbx: Pbx, *, host: str | None = None) -> Snapshot:
    providers, routes, destinations = await asyncio.gather(
        pbx.list_providers(), pbx.list_routes(), pbx.destinations()
    )
    on_host = [p.id for p in providers if host is not None and same_host(p.host, host)]
    details = await asyncio.gather(*(pbx.get_provider(pid) for pid in on_host))
    return Snapshot(
        pbx=pbx.name,
        providers=providers,
        routes=routes,
        destinations=destinations,
        details={p.id: p for p in details},
        host=host,
    )
