"""`--json` of `pbxbot numbers | doctor | trace | digest | plan`: one JSON object on
stdout, for monitoring and scripts. The fields are documented in docs/json.md;
a field is added, never renamed or dropped without a note there.

Built from what the commands already read, by name (no record is dumped whole):
no SIP password, API key or token can reach the output, and `_clean` drops any
key called `secret` from plan records on top of that.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bot.plans.destinations import label
from bot.routing.rules import of_number
from bot.text.i18n import t
from bot.text.render import step_lines
from bot.text.views import finding_title, finding_why, read_numbers
from pbx.base import Pbx
from pbx.models import Provider, Route

if TYPE_CHECKING:
    from bot.plans.planner import Plan
    from bot.routing.digest import Digest
    from bot.routing.doctor import Finding
    from bot.routing.trace import Trace

SCHEMA = 1  # docs/json.md: bumped when a field changes meaning


def dumps(data: dict[str, Any]) -> str:
    return json.dumps({"schema": SCHEMA, **data}, ensure_ascii=False, indent=1, default=str)


def _clean(value: Any) -> Any:
    """A record as JSON, without any `secret` key at any depth."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if k != "secret"}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _route(r: Route, names: dict[str, str]) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.rulename,
        "did": r.number,  # "" = any number
        "provider": r.providerid,  # null = any provider
        "priority": r.priority,
        "destination": r.extension,
        "destination_name": names.get(r.extension, r.extension),
    }


async def numbers(pbx: Pbx, *, only: str | None = None) -> dict[str, Any]:
    providers, routes, default, states, destinations = await read_numbers(pbx)
    if only is not None:  # one number: its accounts, and the routes bound to them or with its DID
        providers, routes = of_number(providers, routes, only)
    names = {d.value: label(d) for d in destinations}
    accounts = []
    for p in sorted(providers, key=lambda p: (p.host, p.username)):
        status = states.get(p.id)
        duration = status.state_duration if status else None
        accounts.append(
            {
                "id": p.id,
                "login": p.username,
                "host": p.host,
                "port": p.port,
                "description": p.description,
                "note": p.note,
                "disabled": p.disabled,
                "registration_type": p.registration_type,
                "state": "disabled" if p.disabled else (status.state.value if status else "unknown"),
                "state_minutes": duration // 60 if duration is not None else None,
                "routes": [_route(r, names) for r in routes if r.providerid == p.id],
            }
        )
    return {
        "pbx": pbx.name,
        "accounts": accounts,
        "any_provider_routes": [_route(r, names) for r in routes if r.any_provider],
        "default_route": {
            "destination": default.extension,
            "destination_name": names.get(default.extension, default.extension),
        },
    }


def finding(f: Finding, lang: str) -> dict[str, Any]:
    fix = getattr(f.fix, "host", None)
    return {
        "code": f.code,
        "severity": f.severity.value,
        "subject": f.subject,
        "title": finding_title(f, lang),
        "why": finding_why(f, lang),
        "params": f.params,
        "fix": {"kind": "fix_host", "host": fix} if fix is not None else None,
    }


def doctor(pbx: str, findings: Sequence[Finding], lang: str) -> dict[str, Any]:
    counts = {s: sum(1 for f in findings if f.severity.value == s) for s in ("E", "W", "I")}
    worst = next((s for s in ("E", "W", "I") if counts[s]), None)
    return {
        "pbx": pbx,
        "worst": worst,
        "counts": counts,
        "findings": [finding(f, lang) for f in findings],
    }


def _account(p: Provider | None) -> dict[str, Any] | None:
    if p is None:
        return None
    return {"id": p.id, "login": p.username, "host": p.host, "port": p.port, "disabled": p.disabled}


def trace(pbx: str, number: str, result: Trace, names: dict[str, str], lang: str) -> dict[str, Any]:
    route = result.route
    return {
        "pbx": pbx,
        "number": number,
        "outcome": result.outcome,
        "account": _account(result.account),
        "endpoint": _account(result.endpoint),
        "collision": result.collision,
        "context": result.context,
        "route": None if route is None else {"id": route.id, "name": route.rulename, "did": route.number},
        "destination": result.destination,
        "destination_name": names.get(result.destination or "", result.destination),
        "steps": [t(f"trace.{line.key}", lang, **line.params) for line in result.lines],
    }


def _at(moment: datetime) -> str:
    return moment.isoformat()


def digest(d: Digest, lang: str) -> dict[str, Any]:
    return {
        "pbx": d.pbx,
        "since": _at(d.since),
        "until": _at(d.until),
        "reachable": d.reachable,
        "error": d.error,
        "calls_total": d.calls_total,
        "numbers": [
            {
                "login": n.login,
                "phone": n.phone,
                "host": n.host,
                "state": n.state,
                "state_minutes": n.state_minutes,
                "destination": n.destination,
                "outcome": n.outcome,
                "calls": n.calls,
                "ok": n.ok,
            }
            for n in d.numbers
        ],
        "changes": [
            {
                "at": _at(c.at),
                "plan": c.plan_id,
                "event": c.event,
                "kind": c.kind,
                "command": c.command,
                "who": c.who,
            }
            for c in d.changes
        ],
        "findings": [finding(f, lang) for f in d.findings],
        "drift": [{"at": _at(e.noticed_at), **e.to_detail()} for e in d.drift],
        "waiting": [
            {"plan": r.id, "status": r.status, "command": r.command, "proposer": r.proposer_name}
            for r in d.waiting
        ],
    }


def plan(
    plan: Plan,
    lang: str,
    *,
    names: dict[str, dict[str, str]] | None = None,
    plan_id: str | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    names = names or {}
    destinations, providers = names.get("destinations"), names.get("providers")
    steps = []
    for n, step in enumerate(plan.steps, start=1):
        lines = step_lines(n, step, lang, destinations=destinations, providers=providers)
        steps.append(
            {
                "kind": step.kind.value,
                "target": step.target,
                "login": step.login,
                "reason": step.reason,
                "text": [line.strip() for line in lines],
                "before": _clean(step.before),
                "after": _clean(step.after),
            }
        )
    return {
        "pbx": plan.pbx,
        "kind": plan.kind.value,
        "host": plan.host,
        "empty": plan.empty,
        "notes": plan.notes,
        "needs_secret": plan.needs_secret,
        "steps": steps,
        "id": plan_id,
        "status": status or "draft",
    }
