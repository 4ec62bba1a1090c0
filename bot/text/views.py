"""Read-only views of a PBX, as text lines (shared by the CLI and the bot)."""

from __future__ import annotations

import asyncio
from typing import Any

from pbx.base import Pbx
from pbx.models import Route

from .i18n import t
from .render import texts


async def numbers_lines(pbx: Pbx, lang: str, *, html: bool = False) -> list[str]:
    """`/numbers`: accounts by host with their registration state and routes, the
    "any provider" routes, the default route. `Html` lines on request (values escaped)."""
    _t = texts(html)
    providers, routes, default, states, destinations = await asyncio.gather(
        pbx.list_providers(),
        pbx.list_routes(),
        pbx.default_route(),
        pbx.registration_statuses(),
        pbx.destinations(),
    )
    names = {d.value: d.name for d in destinations}
    any_number = t("numbers.any_number", lang)

    def route_line(r: Route) -> str:
        destination = names.get(r.extension, r.extension)
        return _t("numbers.route", lang, id=r.id, did=r.number or any_number, destination=destination)

    lines = [_t("numbers.header", lang, pbx=pbx.name, accounts=len(providers), routes=len(routes))]
    for p in sorted(providers, key=lambda p: (p.host, p.username)):
        status = states.get(p.id)
        state = "disabled" if p.disabled else (status.state.value if status else "unknown")
        account = {"login": p.username or "-", "host": p.host, "port": p.port, "id": p.id}
        lines.append(
            _t("numbers.account", lang, state=t(f"state.{state}", lang), description=p.description, **account)
        )
        lines += [route_line(r) for r in routes if r.providerid == p.id]
    any_routes = [r for r in routes if r.any_provider]
    if any_routes:
        lines.append(_t("numbers.any_header", lang))
        lines += [route_line(r) for r in any_routes]
    lines.append(_t("numbers.default", lang, destination=names.get(default.extension, default.extension)))
    return lines


def call_text(result: dict[str, Any], lang: str) -> str:
    """Where a simulated inbound call ended up (the simulator's `calls:simulate` answer):
    the destination by name, then the account, context and route that sent it there."""
    outcome = result["outcome"]
    if outcome not in ("dial", "default"):
        return t("call.rejected", lang, reason=result.get("reason") or outcome)
    return t(
        f"call.{outcome}",
        lang,
        name=result.get("destination_name") or result["destination"],
        destination=result["destination"],
        endpoint=result["endpoint"] or t("call.guest", lang),
        context=result["context"],
        route=result["route_id"],
    )
