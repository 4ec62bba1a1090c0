"""Intent + Snapshot -> Plan: the MikoPBX recipe for several logins on one host.

1. one SIP provider account per login, same host;
2. on every enabled account of that host, `[endpoint]` / `context=public-direct-dial`
   merged into its `manualattributes` (other sections and lines kept);
3. one "any provider" route per login: DID = the login, to the wanted destination.

Routes bound to an account stop running once its endpoint context is
overridden, so the plan moves them to "any provider" routes and says so.

The planner is pure: it reads the snapshot, never the PBX, and raises PlanError
for a conflict before anything is written. Steps carry the record before and
after; the executor writes them in order and undoes them in reverse. Each plan
records what its reasoning read (`Depends`): the stale check compares exactly that.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bot.errors import PlanError
from bot.routing.rules import (
    Attributes,
    has_number,
    has_recipe,
    merge_recipe,
    number_key,
    phone_did,
    phone_of,
    same_host,
    shared_context,
)
from pbx.models import Destination, Provider, Route

from .commands import (
    AddNumber,
    AddNumbers,
    ChangePassword,
    FixHost,
    PutBack,
    RemoveNumber,
    RouteNumber,
    phone_did_form,
)
from .destinations import DestinationError, DestinationIndex, label
from .snapshot import Depends, Snapshot

NEW_PREFIX = "@new:"  # providerid "@new:<login>": the account this plan creates for <login>
# Settings a new account copies from a sibling on the same host.
_SIBLING_SETTINGS = (
    "port", "transport", "dtmfmode", "qualify", "qualifyfreq", "fromdomain",
    "outbound_proxy", "additional_hosts", "networkfilterid", "disablefromuser",
)  # fmt: skip
# What an update step compares and writes: everything but the id and the secret.
_VOLATILE = {"id", "secret"}


def new_ref(login: str) -> str:
    return NEW_PREFIX + login


class StepKind(enum.StrEnum):
    CREATE_PROVIDER = "create_provider"
    UPDATE_PROVIDER = "update_provider"
    DELETE_PROVIDER = "delete_provider"
    CREATE_ROUTE = "create_route"
    UPDATE_ROUTE = "update_route"
    DELETE_ROUTE = "delete_route"
    # the account's SIP password, nothing else: MikoPBX never shows it, so no read-back can judge it
    SET_SECRET = "set_secret"

    @property
    def on_provider(self) -> bool:
        return self.value.endswith("_provider") or self.value == "set_secret"


class PlanKind(enum.StrEnum):
    """What the policy counts approvals for."""

    ADD = "add"
    ROUTE = "route"
    REMOVE = "remove"
    UNDO = "undo"
    FIX = "fix"
    RESTORE = "restore"  # drift's "Put back"
    PASSWORD = "password"


@dataclass(frozen=True)
class Step:
    """One write, with the record before and after (None: does not exist).

    `target` is the record id when it exists; `login` is the SIP login the
    record belongs to (the lock key, and the `@new:` name of a created account).
    """

    kind: StepKind
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    reason: str  # a message-catalogue key: why this step is in the plan
    target: str = ""
    login: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "before": self.before,
            "after": self.after,
            "reason": self.reason,
            "target": self.target,
            "login": self.login,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Step:
        return cls(
            StepKind(data["kind"]),
            data.get("before"),
            data.get("after"),
            data.get("reason", ""),
            data.get("target", ""),
            data.get("login", ""),
        )


@dataclass
class Plan:
    pbx: str
    kind: PlanKind
    steps: list[Step]
    fingerprint: str
    host: str | None = None  # the provider host whose accounts the plan read in full
    notes: list[str] = field(default_factory=list)  # message-catalogue keys
    # what the cards show (logins, destination, names), and `depends`: what the stale check compares
    summary: dict[str, Any] = field(default_factory=dict)
    needs_secret: list[str] = field(default_factory=list)  # logins whose SIP password the apply needs

    @property
    def empty(self) -> bool:
        return not self.steps

    @property
    def logins(self) -> list[str]:
        """Every login whose records the plan writes: the lock keys."""
        return sorted({s.login for s in self.steps if s.login})

    @property
    def touched_accounts(self) -> list[str]:
        """Ids of the existing accounts the plan writes."""
        return sorted({s.target for s in self.steps if s.kind.on_provider and s.target})

    @property
    def depends(self) -> Depends:
        """What the plan's reasoning read (kept in the summary, so it is stored with the plan)."""
        return Depends.from_dict(self.summary.get("depends") or {})


def provider_record(p: Provider) -> dict[str, Any]:
    return p.model_dump(mode="json", exclude={"secret"})


def route_record(r: Route) -> dict[str, Any]:
    return r.model_dump(mode="json")


def _resolve(index: DestinationIndex, query: str) -> Destination:
    try:
        return index.resolve(query)
    except DestinationError as exc:
        raise PlanError(
            exc.code, query=exc.query, candidates=[(label(d), d.value) for d in exc.candidates]
        ) from exc


def _new_account(row: AddNumber, siblings: list[Provider], recipe: bool) -> Provider:
    target = row.provider
    description = f"{target.title} {row.login}" + (f" ({row.phone})" if row.phone else "")
    account = Provider(
        description=description,
        username=row.login,
        host=target.host,
        port=target.port,
        transport=target.transport,
        note=row.phone or "",
    )
    if siblings:
        sibling = siblings[0]
        copied = [k for k in _SIBLING_SETTINGS if target.family or k not in ("port", "transport")]
        account = account.model_copy(update={k: getattr(sibling, k) for k in copied})
    if recipe:
        account = account.model_copy(update={"manualattributes": merge_recipe(account.manualattributes)})
    return account


def _summary(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v not in (None, "", [])}


def _seal(plan: Plan, snapshot: Snapshot, depends: Depends) -> Plan:
    """Record what the plan depends on: what its reasoning read, plus the records
    its steps write and the destinations and accounts its card names; then the
    fingerprint of those records as the snapshot holds them."""
    for step in plan.steps:
        if step.target:
            if step.kind.on_provider:
                depends.accounts.add(step.target)
            else:
                depends.routes.add(int(step.target))
        if step.kind.on_provider:
            continue
        for record in (step.before, step.after):
            if record is None:
                continue
            if record.get("extension"):
                depends.destinations.add(record["extension"])
            provider_id = record.get("providerid")
            if provider_id and not provider_id.startswith(NEW_PREFIX):
                depends.providers.add(provider_id)
    plan.summary["depends"] = depends.to_dict()
    plan.fingerprint = depends.fingerprint(snapshot)
    return plan


RECIPE_WHEN = ("always", "needed")


def routed_by_shared_context(accounts: list[Provider], snapshot: Snapshot) -> str | None:
    """The shared host:port context through which MikoPBX already routes every one of
    these (enabled) accounts' logins right, or None.

    MikoPBX gives the enabled accounts of one host:port one context; in it every
    login has an exact extension whose dial actions are the empty-DID routes bound
    to that login's own account (IncomingContexts::multiplyExtensionsInDialplan,
    duplicateDialActionsRoutNumber). So each login reaches its own route when two
    or more accounts share host and port as written, none overrides its context,
    and each has an empty-DID route of its own. It holds only while the spelling
    and the port stay the same (and not after every reboot, MikoPBX #1091)."""
    if len(accounts) < 2:
        return None
    contexts = {shared_context(a.host, a.port) for a in accounts}
    if len(contexts) != 1:
        return None
    for account in accounts:
        if "context" in Attributes.parse(account.manualattributes).sections.get("endpoint", {}):
            return None
        if not any(not r.number for r in snapshot.routes_of(account.id)):
            return None
    return contexts.pop()


def plan_add_number(
    intent: AddNumber,
    snapshot: Snapshot,
    *,
    default_extension: str = "busy",
    recipe_when: str = "always",
    phone_dids: Mapping[str, str] | None = None,
) -> Plan:
    """The plan for one `/addnumber`."""
    return plan_add_numbers(
        AddNumbers(intent.provider, (intent,)),
        snapshot,
        default_extension=default_extension,
        recipe_when=recipe_when,
        phone_dids=phone_dids,
    )


def _any_keys(any_by_did: Mapping[str, Route]) -> dict[str, Route]:
    """The "any provider" routes by number key: a phone's route in any spelling."""
    keys: dict[str, Route] = {}
    for did, route in any_by_did.items():
        if did:
            keys.setdefault(number_key(did), route)
    return keys


def _phone_route_did(account_phone: str | None, login: str, form: str) -> str | None:
    """The DID of the phone's own route: None when there is no phone, or the
    phone is the login itself (the login's route serves its calls)."""
    if account_phone is None or number_key(login) == account_phone:
        return None
    return phone_did(account_phone, form)


def plan_add_numbers(
    intent: AddNumbers,
    snapshot: Snapshot,
    *,
    default_extension: str = "busy",
    recipe_when: str = "always",
    phone_dids: Mapping[str, str] | None = None,
) -> Plan:
    """The plan for `/addnumber` (one row) or a CSV (many rows) on one host:
    create the accounts, and apply the recipe to the whole host when it then
    has two or more enabled accounts. A row with a phone also gets an "any
    provider" route whose DID is the phone as the operator sends it
    (`phone_did_form`), to the same destination. A host whose logins MikoPBX
    already routes right through its shared host:port context is said so on the
    card; with `recipe_when="needed"` it gets only the new accounts, each with a
    route of its own, which that context then routes the same way."""
    host = intent.provider.host
    form = phone_did_form(host, intent.provider.family, phone_dids)
    index = DestinationIndex(snapshot.destinations)
    wanted = {row.login: _resolve(index, row.destination) for row in intent.rows}
    accounts = snapshot.accounts_on(host)
    existing = {a.username: a for a in accounts}
    any_by_did = {r.number: r for r in snapshot.any_routes()}
    any_keys = _any_keys(any_by_did)
    phone_dids_of = {row.login: _phone_route_did(row.phone, row.login, form) for row in intent.rows}
    # the new logins and their DIDs must stay free (or the DID's route as it is); so must the phones
    depends = Depends(logins={(host, row.login) for row in intent.rows}, dids={r.login for r in intent.rows})
    depends.dids |= {did for did in phone_dids_of.values() if did}
    depends.numbers |= {row.phone for row in intent.rows if row.phone}
    for row in intent.rows:
        if row.login in existing:
            account = existing[row.login]
            raise PlanError("login_exists", login=row.login, host=host, provider_id=account.id)
        taken = any_by_did.get(row.login)
        if taken is not None and taken.extension != wanted[row.login].value:
            raise PlanError("did_taken", did=row.login, route_id=taken.id, extension=taken.extension)
        if row.phone is None:
            continue
        owner = next((p for p in snapshot.providers if has_number(p, row.phone)), None)
        if owner is not None:
            raise PlanError("phone_exists", phone=row.phone, login=owner.username, host=owner.host)
        taken = any_keys.get(row.phone)
        if taken is not None and taken.extension != wanted[row.login].value:
            raise PlanError("did_taken", did=taken.number, route_id=taken.id, extension=taken.extension)

    siblings = [a for a in accounts if not a.disabled]
    recipe = len(siblings) + len(intent.rows) >= 2
    shared = routed_by_shared_context(siblings, snapshot)
    # a phone's calls come with the phone as their DID: the shared context has no extension
    # for it and sends them to the first account's routes, so a phone keeps the recipe
    phoned = any(phone_dids_of.values())
    if shared is not None:
        if recipe_when == "needed" and not phoned:
            joining = [_new_account(row, siblings, False) for row in intent.rows]
            if shared_context(joining[0].host, joining[0].port) == shared:
                recipe = False  # the new accounts join that context, each with a route of its own
        depends.relied.update(a.id for a in siblings)  # the judgement rests on each of them
        depends.bound.update(a.id for a in siblings)  # and on the routes bound to them
    depends.host, depends.recipe = host, merge_recipe("") if recipe else None
    if siblings:
        depends.relied.add(siblings[0].id)  # new accounts copy its settings
    steps: list[Step] = []
    notes: list[str] = []
    if shared is not None:
        if recipe_when == "needed" and phoned:
            notes.append("shared_context_phone")
        else:
            notes.append("shared_context_recipe" if recipe else "shared_context_kept")
    new_accounts = []
    for row in intent.rows:
        new = _new_account(row, siblings, recipe)
        new_accounts.append(new)
        steps.append(Step(StepKind.CREATE_PROVIDER, None, provider_record(new), "new_account", "", row.login))
    summary = _summary(
        host=host,
        logins=[row.login for row in intent.rows],
        destination=label(wanted[intent.rows[0].login]) if len(intent.rows) == 1 else None,
        phone=intent.rows[0].phone if len(intent.rows) == 1 else None,
    )
    plan = Plan(snapshot.pbx, PlanKind.ADD, steps, "", host, notes, summary, [r.login for r in intent.rows])

    if not recipe:
        for row, new in zip(intent.rows, new_accounts, strict=True):
            destination = wanted[row.login]
            route = Route(
                rulename=f"{new.description} → {label(destination)}",
                providerid=new_ref(row.login),
                extension=destination.value,
            )
            steps.append(
                Step(StepKind.CREATE_ROUTE, None, route_record(route), "route_new_account", "", row.login)
            )
            if phone_dids_of[row.login] and "phone_in_bound_route" not in notes:
                notes.append("phone_in_bound_route")  # its empty DID takes the phone's calls too
        return _seal(plan, snapshot, depends)

    notes.append("recipe_applied")
    for account in siblings:
        steps += _recipe_steps(
            account, snapshot, any_by_did, notes, default_extension, depends, any_keys, phone_dids
        )

    for row, new in zip(intent.rows, new_accounts, strict=True):
        destination = wanted[row.login]
        rulename = f"{new.description} → {label(destination)}"
        if row.login not in any_by_did:  # else an "any" route to this very destination exists already
            route = Route(rulename=rulename, number=row.login, extension=destination.value)
            step = Step(StepKind.CREATE_ROUTE, None, route_record(route), "route_new_login", "", row.login)
            steps.append(step)
        did = phone_dids_of[row.login]
        if did and row.phone not in any_keys:
            route = Route(rulename=rulename, number=did, extension=destination.value)
            any_keys[row.phone or did] = route
            steps.append(Step(StepKind.CREATE_ROUTE, None, route_record(route), "route_phone", "", row.login))
    return _seal(plan, snapshot, depends)


def _recipe_steps(
    account: Provider,
    snapshot: Snapshot,
    any_by_did: dict[str, Route],
    notes: list[str],
    default_extension: str,
    depends: Depends,
    any_keys: dict[str, Route],
    phone_dids: Mapping[str, str] | None,
) -> list[Step]:
    """Bring one existing account under the recipe: its context, and "any"
    routes in place of the routes bound to it; an account known by a phone
    keeps the phone's calls with an "any" route for the phone, to where its
    login's calls go. An account left as it is counts through `Depends.recipe`;
    one with steps adds the DIDs they decided on."""
    steps: list[Step] = []
    login = account.username
    if not has_recipe(account.manualattributes):
        after = account.model_copy(update={"manualattributes": merge_recipe(account.manualattributes)})
        steps.append(
            Step(
                StepKind.UPDATE_PROVIDER,
                provider_record(account),
                provider_record(after),
                "recipe_context",
                account.id,
                login,
            )
        )
    for route in snapshot.routes_of(account.id):
        did = route.number or login
        target = str(route.id)
        depends.dids.add(did)
        if did in any_by_did:
            # an "any" route for this DID exists already: the bound one is dead weight
            steps.append(
                Step(StepKind.DELETE_ROUTE, route_record(route), None, "drop_bound_route", target, login)
            )
            continue
        moved = route.model_copy(update={"providerid": None, "number": did})
        any_by_did[did] = moved
        steps.append(
            Step(
                StepKind.UPDATE_ROUTE,
                route_record(route),
                route_record(moved),
                "migrate_route",
                target,
                login,
            )
        )
    if login not in any_by_did:
        # calls to this login fell to the default route; keep it so, or they get 404
        keep = Route(rulename=f"{account.description} (default)", number=login, extension=default_extension)
        any_by_did[login] = keep
        steps.append(Step(StepKind.CREATE_ROUTE, None, route_record(keep), "route_keeps_default", "", login))
        notes.append("login_without_route")
    phone = phone_of(account)
    phone_route = (
        _phone_route_did(phone, login, phone_did_form(account.host, None, phone_dids))
        if phone is not None
        else None
    )
    if phone_route and phone and phone not in any_keys:
        route = Route(
            rulename=f"{account.description} ({phone})",
            number=phone_route,
            extension=any_by_did[login].extension,
        )
        any_by_did[phone_route] = any_keys[phone] = route
        depends.dids.add(phone_route)
        steps.append(Step(StepKind.CREATE_ROUTE, None, route_record(route), "route_phone", "", login))
    if steps:
        depends.dids.add(login)  # its calls are served by an "any" route for the login, or by the one added
    return steps


def plan_fix_host(
    intent: FixHost,
    snapshot: Snapshot,
    *,
    default_extension: str = "busy",
    phone_dids: Mapping[str, str] | None = None,
) -> Plan:
    """The doctor's fix: a host with two or more enabled accounts (or one already
    under the recipe) gets the recipe on every enabled account, their bound
    routes moved to "any", and a route for every login that has none."""
    accounts = [a for a in snapshot.accounts_on(intent.host) if not a.disabled]
    plan = Plan(snapshot.pbx, PlanKind.FIX, [], "", intent.host, [], _summary(host=intent.host))
    depends = Depends()
    if len(accounts) >= 2 or any(has_recipe(a.manualattributes) for a in accounts):
        any_by_did = {r.number: r for r in snapshot.any_routes()}
        any_keys = _any_keys(any_by_did)
        plan.notes.append("recipe_applied")
        depends.host, depends.recipe = intent.host, merge_recipe("")
        for account in accounts:
            plan.steps += _recipe_steps(
                account, snapshot, any_by_did, plan.notes, default_extension, depends, any_keys, phone_dids
            )
    plan.summary["logins"] = plan.logins
    return _seal(plan, snapshot, depends)


# ---------------------------------------------------------------------- one number


def find_number(snapshot: Snapshot, number: str) -> Provider | None:
    """The account whose login is `number`, or whose note holds that phone. Two
    accounts with the login on different hosts are ambiguous: an error."""
    found = [p for p in snapshot.details.values() if has_number(p, number)]
    if len(found) > 1:
        raise PlanError("ambiguous_number", number=number, hosts=sorted(f"{p.host} ({p.id})" for p in found))
    return found[0] if found else None


def _keys_of(number: str, account: Provider | None) -> set[str]:
    """The number keys of a number: what it was asked as, the account's login and its phone."""
    keys = {number_key(number)}
    if account is not None:
        keys.add(number_key(account.username))
        if (phone := phone_of(account)) is not None:
            keys.add(phone)
    return keys


def _dids_of(snapshot: Snapshot, keys: set[str]) -> set[str]:
    """The DIDs of "any provider" routes for these number keys, as the routes spell them."""
    return {r.number for r in snapshot.any_routes() if r.number and number_key(r.number) in keys}


def plan_route(
    intent: RouteNumber, snapshot: Snapshot, *, phone_dids: Mapping[str, str] | None = None
) -> Plan:
    """`/route <login|phone> → <destination>`: point the number's routes elsewhere;
    login and phone are one number (both routes move; a recipe account's phone
    without a route gets one)."""
    destination = _resolve(DestinationIndex(snapshot.destinations), intent.destination)
    account = find_number(snapshot, intent.number)
    login = account.username if account else intent.number
    dids = {login, intent.number} | ({account.note} if account and account.note else set())
    dids |= _dids_of(snapshot, _keys_of(intent.number, account))
    # which account has the number, and its settings (the form of a new route); its DIDs' routes
    depends = Depends(numbers={intent.number}, dids=set(dids), relied={account.id} if account else set())
    routes = [r for r in snapshot.any_routes() if r.number in dids]
    if not routes and account is not None:
        depends.bound.add(account.id)
        bound = snapshot.routes_of(account.id)
        routes = [r for r in bound if not r.number or r.number in dids] or bound[:1]
    summary = _summary(host=account.host if account else None, logins=[login], destination=label(destination))
    plan = Plan(snapshot.pbx, PlanKind.ROUTE, [], "", snapshot.host, [], summary)
    if not routes and account is None:
        raise PlanError("number_unknown", number=intent.number)
    for route in routes:
        if route.extension == destination.value:
            continue
        after = route.model_copy(update={"extension": destination.value})
        plan.steps.append(
            Step(
                StepKind.UPDATE_ROUTE,
                route_record(route),
                route_record(after),
                "reroute",
                str(route.id),
                login,
            )
        )
    if not routes and account is not None:
        route = Route(rulename=f"{account.description} → {label(destination)}", extension=destination.value)
        if has_recipe(account.manualattributes):
            route = route.model_copy(update={"number": login})
        else:
            route = route.model_copy(update={"providerid": account.id})
        plan.steps.append(Step(StepKind.CREATE_ROUTE, None, route_record(route), "route_missing", "", login))
    phone = phone_of(account) if account is not None else None
    if account is not None and phone is not None and has_recipe(account.manualattributes):
        form = phone_did_form(account.host, None, phone_dids)
        did = _phone_route_did(phone, login, form)
        if did and not any(number_key(r.number) == phone for r in routes if r.number):
            route = Route(
                rulename=f"{account.description} ({phone})", number=did, extension=destination.value
            )
            depends.dids.add(did)
            plan.steps.append(
                Step(StepKind.CREATE_ROUTE, None, route_record(route), "route_phone", "", login)
            )
    return _seal(plan, snapshot, depends)


def plan_remove(intent: RemoveNumber, snapshot: Snapshot) -> Plan:
    """`/removenumber <login|phone>`: its routes, then its account."""
    account = find_number(snapshot, intent.number)
    if account is None:
        raise PlanError("number_unknown", number=intent.number)
    login = account.username
    dids = {login} | ({account.note} if account.note else set())
    dids |= _dids_of(snapshot, _keys_of(login, account))
    steps: list[Step] = []
    routes = [r for r in snapshot.any_routes() if r.number in dids] + snapshot.routes_of(account.id)
    for route in routes:
        steps.append(
            Step(StepKind.DELETE_ROUTE, route_record(route), None, "route_of_number", str(route.id), login)
        )
    steps.append(
        Step(StepKind.DELETE_PROVIDER, provider_record(account), None, "remove_account", account.id, login)
    )
    # a route for one of its DIDs, or bound to it, added later would be left behind
    depends = Depends(numbers={intent.number}, dids=dids, bound={account.id})
    notes = []
    rest = [a for a in snapshot.accounts_on(account.host, enabled_only=True) if a.id != account.id]
    if len(rest) == 1 and has_recipe(rest[0].manualattributes):
        notes.append("recipe_kept")
        depends.relied.add(rest[0].id)  # the note names it
    summary = _summary(host=account.host, logins=[login], phone=account.note or None)
    plan = Plan(snapshot.pbx, PlanKind.REMOVE, steps, "", account.host, notes, summary)
    return _seal(plan, snapshot, depends)


def plan_password(intent: ChangePassword, snapshot: Snapshot) -> Plan:
    """`/password <login|phone>`: the account's SIP password, sealed apart (`needs_secret`).
    The PBX never shows a stored password: the step is judged by its answer and the
    account's registration after the apply, and the old password, never known to the
    bot, cannot be put back (the card says both)."""
    account = find_number(snapshot, intent.number)
    if account is None:
        raise PlanError("number_unknown", number=intent.number)
    if account.registration_type == "none":
        raise PlanError("no_password_used", login=account.username, provider_id=account.id)
    login, record = account.username, provider_record(account)
    step = Step(StepKind.SET_SECRET, record, record, "new_password", account.id, login)
    notes = ["password_unreadable", "password_no_undo"]
    if account.disabled:
        notes.append("password_disabled")
    summary = _summary(host=account.host, logins=[login], phone=account.note or None)
    plan = Plan(snapshot.pbx, PlanKind.PASSWORD, [step], "", account.host, notes, summary, [login])
    return _seal(plan, snapshot, Depends(numbers={intent.number}))


# ---------------------------------------------------------------------- undo


def _unchanged(record: dict[str, Any] | None, expected: dict[str, Any] | None) -> bool:
    """`record` is still as `expected` (the result a step left): equal in every field
    but the volatile ones, none added or lost."""
    if record is None or expected is None:
        return record is expected
    keys = (set(record) | set(expected)) - _VOLATILE
    return all(record.get(k) == expected.get(k) for k in keys)


def _without_id(record: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (record or {}).items() if k != "id"}


def plan_undo(
    original: Sequence[Step], results: dict[int, dict[str, Any]], snapshot: Snapshot, *, pbx: str
) -> Plan:
    """The inverse of an applied plan, from its stored steps, in reverse order.

    `results[i]` is the record as the PBX returned it after step i (with the id
    it gave a created record; empty after a delete); steps without a result
    were not applied, or were rolled back, and are skipped. Each record must still be as the plan left it; a
    record changed since is a conflict (`undo_drifted`), never overwritten.
    Re-creating a removed account needs its SIP password again (`needs_secret`)."""
    providers = {p.id: provider_record(p) for p in snapshot.details.values()}
    routes = {str(r.id): route_record(r) for r in snapshot.routes}
    recreated: dict[str, str] = {}  # id of a removed account -> the @new ref of its re-creation
    steps: list[Step] = []
    needs_secret: list[str] = []
    depends = Depends()  # the records it reverts (from its steps), and the logins and DIDs it takes back
    for index in range(len(original) - 1, -1, -1):
        step = original[index]
        if index not in results:
            continue  # never applied (a failed or interrupted plan): nothing to undo
        if step.kind is StepKind.SET_SECRET:  # the old password was never known to the bot
            raise PlanError("undo_password", login=step.login)
        if step.kind is StepKind.DELETE_PROVIDER:
            before = step.before or {}
            if any(
                p.get("username") == step.login and same_host(p.get("host", ""), before.get("host", ""))
                for p in providers.values()
            ):
                raise PlanError("undo_drifted", record=step.login)
            recreated[step.target] = new_ref(step.login)
            needs_secret.append(step.login)
            depends.logins.add((before.get("host", ""), step.login))
            steps.append(Step(StepKind.CREATE_PROVIDER, None, _without_id(before), "undo", "", step.login))
            continue
        if step.kind is StepKind.DELETE_ROUTE:
            after = _without_id(step.before)
            pid = after.get("providerid")
            after["providerid"] = recreated.get(pid, pid) if pid else None
            if after.get("number") and not pid:
                depends.dids.add(after["number"])
            steps.append(Step(StepKind.CREATE_ROUTE, None, after, "undo", "", step.login))
            continue
        left = results.get(index) or {}
        rid = str(left.get("id") or step.target)
        current = (providers if step.kind.on_provider else routes).get(rid)
        if current is None or not _unchanged(current, left):
            raise PlanError("undo_drifted", record=rid or step.login)
        if step.kind is StepKind.CREATE_PROVIDER:
            steps.append(Step(StepKind.DELETE_PROVIDER, current, None, "undo", rid, step.login))
        elif step.kind is StepKind.CREATE_ROUTE:
            steps.append(Step(StepKind.DELETE_ROUTE, current, None, "undo", rid, step.login))
        else:
            restored = {**(step.before or {}), "id": current.get("id")}
            steps.append(Step(step.kind, current, restored, "undo", rid, step.login))
    logins = sorted({s.login for s in original if s.login})
    plan = Plan(pbx, PlanKind.UNDO, steps, "", snapshot.host, [], _summary(host=snapshot.host, logins=logins))
    plan.needs_secret = needs_secret
    return _seal(plan, snapshot, depends)


# ---------------------------------------------------------------------- drift: put back


def _route_login(route: dict[str, Any], snapshot: Snapshot) -> str:
    """The login a route serves: the lock key of a step that writes it."""
    pid = route.get("providerid")
    if pid:
        p = snapshot.providers_by_id.get(pid)
        return p.username if p else ""
    number = route.get("number") or ""
    return "" if number.startswith("_") else number


def _changed_again(current: dict[str, Any] | None, left: dict[str, Any] | None) -> bool:
    """The record is no longer as the drift left it (`left`: its fields then, None when
    the drift removed it)."""
    if left is None:
        return current is not None
    return current is None or any(current.get(k) != v for k, v in left.items())


def plan_put_back(intent: PutBack, snapshot: Snapshot) -> Plan:
    """Drift's "Put back": each route as it was (updated, re-created, or deleted when it
    was added outside the bot), each account's drifted fields as they were. A record
    gone since (an account, or the account a route was bound to), a record changed
    again since the drift (by hand or by the bot: its entry's `after`), or a route whose
    destination is gone is a conflict: never overwritten blind."""
    steps: list[Step] = []
    current_routes = {r.id: r for r in snapshot.routes}
    for entry in intent.routes:
        rid, before = int(entry["id"]), entry.get("before")
        current = current_routes.get(rid)
        name = (before or {}).get("rulename") or (current.rulename if current else "") or str(rid)
        if "after" in entry and _changed_again(route_record(current) if current else None, entry["after"]):
            raise PlanError("put_back_changed_again", record=name)
        if before is None:
            if current is not None:
                login = _route_login(route_record(current), snapshot)
                steps.append(
                    Step(StepKind.DELETE_ROUTE, route_record(current), None, "put_back", str(rid), login)
                )
            continue
        wanted = route_record(Route.model_validate(before))
        pid = wanted.get("providerid")
        if pid and pid not in snapshot.providers_by_id:
            raise PlanError("put_back_gone", record=name)
        if wanted.get("extension") and wanted["extension"] not in {d.value for d in snapshot.destinations}:
            raise PlanError("put_back_destination_gone", record=name, destination=wanted["extension"])
        login = _route_login(wanted, snapshot)
        if current is None:
            created = {k: v for k, v in wanted.items() if k != "id"}
            steps.append(Step(StepKind.CREATE_ROUTE, None, created, "put_back", "", login))
        elif route_record(current) != wanted:
            steps.append(
                Step(StepKind.UPDATE_ROUTE, route_record(current), wanted, "put_back", str(rid), login)
            )
    for entry in intent.accounts:
        account = snapshot.details.get(entry["id"])
        if account is None:
            raise PlanError("put_back_gone", record=entry.get("login") or entry["id"])
        if "after" in entry and _changed_again(provider_record(account), entry["after"]):
            raise PlanError("put_back_changed_again", record=entry.get("login") or entry["id"])
        fields = {k: v for k, v in entry.get("fields", {}).items() if k not in _VOLATILE}
        after = Provider.model_validate({**provider_record(account), **fields})
        if provider_record(after) != provider_record(account):
            steps.append(
                Step(
                    StepKind.UPDATE_PROVIDER,
                    provider_record(account),
                    provider_record(after),
                    "put_back",
                    account.id,
                    account.username,
                )
            )
    logins = sorted({s.login for s in steps if s.login})
    plan = Plan(snapshot.pbx, PlanKind.RESTORE, steps, "", snapshot.host, [], _summary(logins=logins))
    return _seal(plan, snapshot, Depends())
