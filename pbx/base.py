"""The PBX as the bot sees it: one Protocol, so bot/ never depends on a vendor client."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

from .models import (
    Destination,
    Provider,
    ProviderSummary,
    RegistrationStatus,
    Route,
)

# Set by a caller that wants to know when its calls are on their way: a client calls it
# once per call, when the request has been written to the PBX (or the call joined one
# already sent). The caller works on what it knows meanwhile, without holding the
# requests back (SnapshotReader.read_then). A client that never calls it is correct too.
call_written: ContextVar[Callable[[], None] | None] = ContextVar("call_written", default=None)

# Set by a caller that begins reads for a command about to make them (SnapshotReader.read_ahead):
# the command joins them, or, if they were answered before it asked, takes the answer (once,
# within a few seconds, and only if the client wrote nothing meanwhile). A client that treats
# them as plain reads is correct too: the command then reads again.
reading_ahead: ContextVar[bool] = ContextVar("reading_ahead", default=False)

# Set by the reads a command plans on (SnapshotReader.read_then): only they take an answer read
# ahead and answered before they asked. Any other read (the stale check before a write above
# all) is answered by what the PBX holds now, or by a read under way.
planning: ContextVar[bool] = ContextVar("planning", default=False)


class Pbx(Protocol):
    name: str

    async def list_providers(self, *, include_disabled: bool = True) -> list[ProviderSummary]: ...
    async def get_provider(self, provider_id: str) -> Provider: ...
    async def create_provider(self, provider: Provider, *, secret: str) -> Provider: ...
    async def update_provider(self, provider: Provider, *, secret: str | None = None) -> Provider: ...
    async def delete_provider(self, provider_id: str) -> None: ...
    async def registration_statuses(self, *, force: bool = False) -> dict[str, RegistrationStatus]: ...

    async def list_routes(self) -> list[Route]: ...
    async def get_route(self, route_id: int) -> Route: ...
    async def default_route(self) -> Route: ...
    async def create_route(self, route: Route) -> Route: ...
    async def update_route(self, route: Route) -> Route: ...
    async def patch_route(
        self, route_id: int, changes: Mapping[str, Any], *, providerid: str | None
    ) -> Route: ...
    async def delete_route(self, route_id: int) -> None: ...

    async def destinations(self) -> list[Destination]: ...

    async def aclose(self) -> None: ...
