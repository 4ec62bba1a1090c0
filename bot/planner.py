"""Intent + Snapshot -> Plan: the MikoPBX recipe for several logins on one host.

1. one SIP provider account per login, same host;
2. on every enabled account of that host, `[endpoint]` / `context=public-direct-dial`
   merged into its `manualattributes` (other sections and lines kept);
3. one "any provider" route per login: DID = the login, to the wanted destination.

Routes bound to an account stop running once its endpoint context is
overridden, so the plan moves them to "any provider" routes and says so.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from pbx.models import Provider, Route

from .commands import AddNumber
from .destinations import DestinationError, DestinationIndex, label
from .snapshot import Snapshot

RECIPE_CONTEXT = "public-direct-dial"
NEW_PROVIDER = "@new"  # providerid of a route bound to the account the plan creates
# Settings a new account copies from a sibling on the same host.
_SIBLING_SETTINGS = (
    "port", "transport", "dtmfmode", "qualify", "qualifyfreq", "fromdomain",
    "outbound_proxy", "additional_hosts", "networkfilterid", "disablefromuser",
)  # fmt: skip


class StepKind(enum.StrEnum):
    CREATE_PROVIDER = "create_provider"
    UPDATE_PROVIDER = "update_provider"
    CREATE_ROUTE = "create_route"
    UPDATE_ROUTE = "update_route"
    DELETE_ROUTE = "delete_route"


@dataclass(frozen=True)
class Step:
    """One write, with the record before and after (None: does not exist)."""

    kind: StepKind
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str  # a message-catalogue key: why this step is in the plan
    target: str = ""  # the record id, when it exists


@dataclass
class Plan:
    pbx: str
    intent: Any
    steps: list[Step]
    fingerprint: str
    notes: list[str] = field(default_factory=list)  # message-catalogue keys

    @property
    def empty(self) -> bool:
        return not self.steps


class PlanError(Exception):
    """A conflict found before anything is written. `code` names it for the catalogues."""

    def __init__(self, code: str, **params: Any):
        self.code = code
        self.params = params
        super().__init__(f"{code}: {params}")


def merge_recipe(manualattributes: str) -> str:
    """Put `context=public-direct-dial` into `[endpoint]`, keeping every other
    section and line; an older `context=` in `[endpoint]` is replaced."""
    lines = manualattributes.replace("\r\n", "\n").split("\n") if manualattributes.strip() else []
    out: list[str] = []
    section = ""
    placed = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "endpoint" and not placed:
                out.append(f"context={RECIPE_CONTEXT}")
                placed = True
            section = stripped[1:-1].strip()
        elif section == "endpoint" and stripped.partition("=")[0].strip() == "context":
            if not placed:
                out.append(f"context={RECIPE_CONTEXT}")
                placed = True
            continue
        out.append(line)
    while out and not out[-1].strip():
        out.pop()
    if section == "endpoint" and not placed:
        out.append(f"context={RECIPE_CONTEXT}")
        placed = True
    if not placed:
        if out:
            out.append("")
        out += ["[endpoint]", f"context={RECIPE_CONTEXT}"]
    return "\n".join(out)


def has_recipe(manualattributes: str) -> bool:
    return merge_recipe(manualattributes) == manualattributes.replace("\r\n", "\n").rstrip("\n")


def _provider_record(p: Provider) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude={"secret"})


def _route_record(r: Route) -> dict[str, Any]:
    return r.model_dump(mode="json")


def _new_account(intent: AddNumber, siblings: list[Provider], recipe: bool) -> Provider:
    title = intent.provider.title
    description = f"{title} {intent.login}" + (f" ({intent.phone})" if intent.phone else "")
    account = Provider(
        description=description,
        username=intent.login,
        host=intent.provider.host,
        port=intent.provider.port,
        transport=intent.provider.transport,
        note=intent.phone or "",
    )
    if siblings:
        sibling = siblings[0]
        copied = [k for k in _SIBLING_SETTINGS if intent.provider.family or k not in ("port", "transport")]
        account = account.model_copy(update={k: getattr(sibling, k) for k in copied})
    if recipe:
        account = account.model_copy(update={"manualattributes": merge_recipe(account.manualattributes)})
    return account


def plan_add_number(intent: AddNumber, snapshot: Snapshot, *, default_extension: str = "busy") -> Plan:
    """The plan for `/addnumber`: create the account, and apply the recipe to the
    whole host when it then has two or more enabled accounts."""
    try:
        destination = DestinationIndex(snapshot.destinations).resolve(intent.destination)
    except DestinationError as exc:
        raise PlanError(
            exc.code, query=exc.query, candidates=[(label(d), d.value) for d in exc.candidates]
        ) from exc

    host = intent.provider.host
    accounts = snapshot.accounts_on(host)
    for account in accounts:
        if account.username == intent.login:
            raise PlanError("login_exists", login=intent.login, host=host, provider_id=account.id)
    for route in snapshot.any_routes():
        if route.number == intent.login and route.extension != destination.value:
            raise PlanError("did_taken", did=intent.login, route_id=route.id, extension=route.extension)

    siblings = [a for a in accounts if not a.disabled]
    recipe = bool(siblings)
    steps: list[Step] = []
    notes: list[str] = []
    new = _new_account(intent, siblings, recipe)
    steps.append(Step(StepKind.CREATE_PROVIDER, None, _provider_record(new), "new_account"))

    if not recipe:
        route = Route(
            rulename=f"{new.description} → {label(destination)}",
            providerid=NEW_PROVIDER,
            extension=destination.value,
        )
        steps.append(Step(StepKind.CREATE_ROUTE, None, _route_record(route), "route_new_account"))
        return Plan(snapshot.pbx, intent, steps, snapshot.fingerprint(), notes)

    notes.append("recipe_applied")
    any_by_did = {r.number: r for r in snapshot.any_routes()}
    for account in siblings:
        if not has_recipe(account.manualattributes):
            after = account.model_copy(update={"manualattributes": merge_recipe(account.manualattributes)})
            steps.append(
                Step(
                    StepKind.UPDATE_PROVIDER,
                    _provider_record(account),
                    _provider_record(after),
                    "recipe_context",
                    account.id,
                )
            )
        bound = snapshot.routes_of(account.id)
        for route in bound:
            did = route.number or account.username
            if did in any_by_did:
                # an "any" route for this DID exists already: the bound one is dead weight
                steps.append(
                    Step(StepKind.DELETE_ROUTE, _route_record(route), None, "drop_bound_route", str(route.id))
                )
                continue
            moved = route.model_copy(update={"providerid": None, "number": did})
            any_by_did[did] = moved
            steps.append(
                Step(
                    StepKind.UPDATE_ROUTE,
                    _route_record(route),
                    _route_record(moved),
                    "migrate_route",
                    str(route.id),
                )
            )
        if account.username not in any_by_did:
            # calls to this login fell to the default route; keep it so, or they get 404
            keep = Route(
                rulename=f"{account.description} (default)",
                number=account.username,
                extension=default_extension,
            )
            any_by_did[account.username] = keep
            steps.append(Step(StepKind.CREATE_ROUTE, None, _route_record(keep), "route_keeps_default"))
            notes.append("login_without_route")

    if intent.login not in any_by_did:
        route = Route(
            rulename=f"{new.description} → {label(destination)}",
            number=intent.login,
            extension=destination.value,
        )
        steps.append(Step(StepKind.CREATE_ROUTE, None, _route_record(route), "route_new_login"))
    return Plan(snapshot.pbx, intent, steps, snapshot.fingerprint(), notes)
