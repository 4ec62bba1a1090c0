"""Read-only views of a PBX, as text (shared by the CLI and the bot): the
numbers list, the doctor's findings, a call's trace."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

from bot.routing.rules import of_number
from pbx.base import Pbx
from pbx.models import Destination, ProviderSummary, RegistrationStatus, Route

from .i18n import t
from .render import Html, lines_of, texts, tr

if TYPE_CHECKING:  # the routing room reads the PBX; this one only draws what it found
    from bot.routing.doctor import Finding
    from bot.routing.trace import Trace


async def read_numbers(
    pbx: Pbx,
) -> tuple[list[ProviderSummary], list[Route], Route, dict[str, RegistrationStatus], list[Destination]]:
    """What /numbers shows, read at once: accounts, routes, the default route,
    registration states, destinations (the text and `--json` alike)."""
    return await asyncio.gather(
        pbx.list_providers(),
        pbx.list_routes(),
        pbx.default_route(),
        pbx.registration_statuses(),
        pbx.destinations(),
    )


async def numbers_lines(pbx: Pbx, lang: str, *, html: bool = False, only: str | None = None) -> list[str]:
    """`/numbers`: accounts by host with their registration state and routes, the
    "any provider" routes, the default route. `Html` lines on request (values escaped).
    `only`: one number (a login, or a phone as bot.plans.commands.parse_number gives it):
    the accounts with that login or phone and the routes of the number in any spelling."""
    _t = texts(html)
    providers, routes, default, states, destinations = await read_numbers(pbx)
    names = {d.value: d.name for d in destinations}
    any_number = t("numbers.any_number", lang)

    def route_line(r: Route) -> str:
        destination = names.get(r.extension, r.extension)
        return _t("numbers.route", lang, id=r.id, did=r.number or any_number, destination=destination)

    lines = [_t("numbers.header", lang, pbx=pbx.name, accounts=len(providers), routes=len(routes))]
    if only is not None:
        providers, routes = of_number(providers, routes, only)
        lines.append(_t("numbers.filtered", lang, number=only, accounts=len(providers), routes=len(routes)))
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


# ---------------------------------------------------------------------- the doctor


def finding_title(f: Finding, lang: str) -> str:
    return t(f"doctor.{f.code}.title", lang, **f.params)


def finding_why(f: Finding, lang: str) -> list[str]:
    """Why it matters and what to do, a line each."""
    return t(f"doctor.{f.code}.why", lang, **f.params).split("\n")


def doctor_text(pbx: str, findings: Sequence[Finding], lang: str) -> Html:
    """`/doctor` for Telegram: a count by severity, then each finding with its reasons."""
    if not findings:
        return tr("doctor.clean", lang, pbx=pbx)
    count = {s: sum(1 for f in findings if f.severity.value == s) for s in ("E", "W", "I")}
    lines: list[str] = [
        tr("doctor.header", lang, pbx=pbx, errors=count["E"], warnings=count["W"], infos=count["I"])
    ]
    for f in findings:  # plain lines, formatted, then escaped as a whole by the join
        lines.append("")
        lines.append(f"{t(f'doctor.severity.{f.severity.value}', lang)} {finding_title(f, lang)}")
        lines += [f"   {line}" for line in finding_why(f, lang)]
    return Html(lines_of(lines, html=True))


def doctor_report(pbx: str, findings: Sequence[Finding], lang: str) -> str:
    """`pbxbot doctor` for a terminal: `[E] title`, its reasons indented."""
    if not findings:
        return t("doctor.clean", lang, pbx=pbx)
    lines: list[str] = []
    for f in findings:
        lines.append(f"[{f.severity.value}] {finding_title(f, lang)}")
        lines += [f"    {line}" for line in finding_why(f, lang)]
    return "\n".join(lines)


# ---------------------------------------------------------------------- a trace


@overload
def trace_text(pbx: str, number: str, result: Trace, lang: str, *, html: Literal[True]) -> Html: ...
@overload
def trace_text(pbx: str, number: str, result: Trace, lang: str, *, html: bool = False) -> str: ...
def trace_text(pbx: str, number: str, result: Trace, lang: str, *, html: bool = False) -> str:
    """`/trace`, `pbxbot trace`: the header, then each step the call takes (`Html` on request)."""
    _t = texts(html)
    lines = [_t("trace.header", lang, pbx=pbx, number=number)]
    lines += [_t(f"trace.{line.key}", lang, **line.params) for line in result.lines]
    return lines_of(lines, html=html)
