"""Drift: what changed on the PBX that no plan of the bot made, named, and what it does to calls.

Pure: two snapshots of one PBX in (what the mirror held, what the PBX holds now),
events out, each a record (an account or an incoming route), what happened to it
(added, removed, disabled, enabled, changed) and its fields before -> after.
Extra parameters are compared as MikoPBX reads them (rules.Attributes), one
field a section's key; the SIP password never appears, nor any extra parameter
whose name speaks of a password or a secret (shown as `•••`).

`outcome_changes` traces every number before and after (trace.Tracer): a drift
matters to a chat at once only when it moves where a number's calls end.
`put_back` turns the events behind those numbers into the intent of a plan that
restores the records as they were (proposed and approved like any other).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.errors import PlanError
from bot.plans.commands import PutBack
from bot.plans.snapshot import Snapshot
from bot.text.i18n import CATALOGUES, t
from bot.text.render import texts
from pbx.models import Provider, ProviderSummary

from .rules import MASK, SENSITIVE_KEY, Attributes, did_matches, host_key
from .trace import Tracer

_SENSITIVE = SENSITIVE_KEY
# account fields compared (the SIP password never); extra parameters apart, by parsed value
ACCOUNT_FIELDS = (
    "disabled", "username", "host", "port", "transport", "registration_type", "description", "note",
    "qualify", "qualifyfreq", "dtmfmode", "fromuser", "fromdomain", "disablefromuser",
    "outbound_proxy", "networkfilterid", "additional_hosts",
)  # fmt: skip
SUMMARY_FIELDS = (
    "disabled",
    "username",
    "host",
    "port",
    "transport",
    "registration_type",
    "description",
    "note",
)
ROUTE_FIELDS = (
    "providerid",
    "number",
    "extension",
    "priority",
    "timeout",
    "rulename",
    "audio_message_id",
    "note",
)
DRIFT_EVENT = "drift"  # the audit event of a change made outside the bot (watch.py writes, digest reads)
EXTRA = "extra"  # field names of extra parameters: "extra [endpoint] context"


@dataclass(frozen=True)
class DriftEvent:
    kind: str  # account | route
    key: str  # the account's id, the route's id
    what: str  # added | removed | disabled | enabled | changed
    fields: list[tuple[str, Any, Any]]  # (field, before, after); never a secret
    noticed_at: datetime
    label: str = ""  # what a person calls it: login @ host, or the route's name

    def to_detail(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "what": self.what,
            "label": self.label,
            "fields": [[f, b, a] for f, b, a in self.fields],
        }

    @classmethod
    def from_detail(cls, detail: dict[str, Any], noticed_at: datetime) -> DriftEvent:
        return cls(
            detail.get("kind", ""),
            str(detail.get("key", "")),
            detail.get("what", ""),
            [(f, b, a) for f, b, a in detail.get("fields", [])],
            noticed_at,
            detail.get("label", ""),
        )


def _extra(before: str, after: str) -> list[tuple[str, Any, Any]]:
    """Extra parameters by parsed value: one field a (section, key) whose value differs."""
    old, new = Attributes.parse(before).sections, Attributes.parse(after).sections
    out: list[tuple[str, Any, Any]] = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                hide = bool(_SENSITIVE.search(key))
                was, now = (None if v is None else (MASK if hide else v) for v in (a.get(key), b.get(key)))
                out.append((f"{EXTRA} [{section}] {key}" if section else f"{EXTRA} {key}", was, now))
    return out


def _label(p: Provider | ProviderSummary) -> str:
    return f"{p.username or p.description or p.id} @ {p.host}"


def _account_fields(
    old: Provider | ProviderSummary, new: Provider | ProviderSummary
) -> list[tuple[str, Any, Any]]:
    full = isinstance(old, Provider) and isinstance(new, Provider)
    names = ACCOUNT_FIELDS if full else SUMMARY_FIELDS
    out = [(n, getattr(old, n), getattr(new, n)) for n in names if getattr(old, n) != getattr(new, n)]
    if isinstance(old, Provider) and isinstance(new, Provider):
        out += _extra(old.manualattributes, new.manualattributes)
    return out


def _what_of_account(fields: list[tuple[str, Any, Any]]) -> str:
    for name, _before, after in fields:
        if name == "disabled":
            return "disabled" if after else "enabled"
    return "changed"


def _account_state(p: Provider | ProviderSummary) -> list[tuple[str, Any, Any]]:
    """An added or removed account's fields, as after/before against nothing."""
    names = ACCOUNT_FIELDS if isinstance(p, Provider) else SUMMARY_FIELDS
    fields = [(n, getattr(p, n)) for n in names if getattr(p, n) not in ("", None, [], False)]
    return [(n, v, v) for n, v in fields]


def _holds_secret(manualattributes: str) -> bool:
    sections = Attributes.parse(manualattributes).sections
    return any(_SENSITIVE.search(key) for values in sections.values() for key in values)


def diff(before: Snapshot, after: Snapshot, *, noticed_at: datetime) -> list[DriftEvent]:
    """Every account and route that differs between the two snapshots; accounts first, by id."""
    events: list[DriftEvent] = []
    old_accounts = {p.id: before.details.get(p.id, p) for p in before.providers}
    new_accounts = {p.id: after.details.get(p.id, p) for p in after.providers}
    for pid in sorted(set(old_accounts) | set(new_accounts)):
        old, new = old_accounts.get(pid), new_accounts.get(pid)
        if old is None and new is not None:
            state = [(n, None, v) for n, _, v in _account_state(new)]
            events.append(DriftEvent("account", pid, "added", state, noticed_at, _label(new)))
        elif new is None and old is not None:
            state = [(n, v, None) for n, v, _ in _account_state(old)]
            events.append(DriftEvent("account", pid, "removed", state, noticed_at, _label(old)))
        elif old is not None and new is not None:
            if isinstance(old, Provider) != isinstance(new, Provider):  # one side read in full only
                old = before.providers_by_id[pid] if not isinstance(new, Provider) else old
                new = after.providers_by_id[pid] if not isinstance(old, Provider) else new
            fields = _account_fields(old, new)
            if fields:
                events.append(
                    DriftEvent("account", pid, _what_of_account(fields), fields, noticed_at, _label(new))
                )
    old_routes = {str(r.id): r for r in before.routes}
    new_routes = {str(r.id): r for r in after.routes}
    for rid in sorted(set(old_routes) | set(new_routes), key=lambda k: (len(k), k)):
        r_old, r_new = old_routes.get(rid), new_routes.get(rid)
        if r_old is None and r_new is not None:
            state = [
                (n, None, getattr(r_new, n)) for n in ROUTE_FIELDS if getattr(r_new, n) not in ("", None)
            ]
            events.append(DriftEvent("route", rid, "added", state, noticed_at, r_new.rulename or rid))
        elif r_new is None and r_old is not None:
            state = [
                (n, getattr(r_old, n), None) for n in ROUTE_FIELDS if getattr(r_old, n) not in ("", None)
            ]
            events.append(DriftEvent("route", rid, "removed", state, noticed_at, r_old.rulename or rid))
        elif r_old is not None and r_new is not None:
            fields = [
                (n, getattr(r_old, n), getattr(r_new, n))
                for n in ROUTE_FIELDS
                if getattr(r_old, n) != getattr(r_new, n)
            ]
            if fields:
                events.append(DriftEvent("route", rid, "changed", fields, noticed_at, r_new.rulename or rid))
    return events


# ---------------------------------------------------------------------- where calls end


@dataclass(frozen=True)
class OutcomeChange:
    number: str
    before: str  # where its calls ended: a destination's name, or a catalogue word (outcome)
    after: str
    before_outcome: str
    after_outcome: str
    events: list[DriftEvent] = field(default_factory=list)  # the drift behind it


def _ending(tracer: Tracer, number: str) -> tuple[str, str]:
    try:
        result = tracer.trace(number)
    except PlanError:  # two accounts have the login: Asterisk's choice is not ours to guess
        return "ambiguous", ""
    where = tracer.names.get(result.destination or "", result.destination or "")
    return result.outcome, where


def _known(snapshot: Snapshot, login: str) -> bool:
    """Every account with this login is read in full (or there is none): a trace means something."""
    return all(p.id in snapshot.details for p in snapshot.providers_by_login.get(login, ()))


def _related(event: DriftEvent, number: str, before: Snapshot, after: Snapshot) -> bool:
    """Does this event touch the calls to `number`: its account, an account on its host,
    a route bound to one of those, or a route whose DID matches it."""
    accounts = [p for s in (before, after) for p in s.providers_by_login.get(number, ())]
    hosts = {host_key(p.host) for p in accounts}
    if event.kind == "account":
        records = [s.providers_by_id.get(event.key) for s in (before, after)]
        return any(p is not None and (p.username == number or host_key(p.host) in hosts) for p in records)
    routes = [s.routes_by_id.get(int(event.key)) for s in (before, after) if event.key.isdigit()]
    on_host = {p.id for s in (before, after) for p in s.providers if host_key(p.host) in hosts}
    for r in routes:
        if r is None:
            continue
        if r.providerid is not None and r.providerid in on_host:
            return True
        if r.number and (r.number == number or did_matches(r.number, number)):
            return True
        if r.providerid is None and not r.number:
            return True
    return False


def outcome_changes(before: Snapshot, after: Snapshot, events: list[DriftEvent]) -> list[OutcomeChange]:
    """The numbers whose calls end elsewhere after the drift (trace before vs after), with
    the events behind each. Numbers not read in full on either side are left out."""
    if not events:
        return []
    old, new = Tracer(before), Tracer(after)
    logins = sorted({p.username for s in (before, after) for p in s.providers if p.username})
    changes = []
    for login in logins:
        if not (_known(before, login) and _known(after, login)):
            continue
        was, now = _ending(old, login), _ending(new, login)
        if was == now:
            continue
        behind = [e for e in events if _related(e, login, before, after)]
        changes.append(OutcomeChange(login, was[1], now[1], was[0], now[0], behind))
    return changes


# ---------------------------------------------------------------------- putting it back

RESTORABLE_ACCOUNT = {"added": False, "removed": False, "disabled": True, "enabled": True, "changed": True}


def _fields_of(record: dict[str, Any], names: Any) -> dict[str, Any]:
    return {n: record.get(n) for n in names}


def put_back(
    before: Snapshot, events: list[DriftEvent], after: Snapshot | None = None
) -> tuple[PutBack | None, list[DriftEvent]]:
    """The intent restoring these events' records as `before` held them, and the events
    it cannot restore. With `after`, each entry also holds its fields as the drift left
    them (`after`): a record changed again by the time the plan is made is a conflict.
    Cannot: a removed account (its SIP password is gone with it), an added account
    (removing a number is /removenumber's, with its own approvals), an account whose
    extra parameters were not read in full before, or hold a password before or after
    (a plan card shows extra parameters as they are and will be: never a password)."""
    routes: list[dict[str, Any]] = []
    accounts: list[dict[str, Any]] = []
    cannot: list[DriftEvent] = []
    seen: set[tuple[str, str]] = set()
    for e in events:
        if (e.kind, e.key) in seen:
            continue
        seen.add((e.kind, e.key))
        if e.kind == "route":
            rid = int(e.key) if e.key.isdigit() else -1
            old = before.routes_by_id.get(rid)
            entry: dict[str, Any] = {"id": rid, "before": old.model_dump(mode="json") if old else None}
            if after is not None:  # as the drift left it: changed again since is a conflict
                left = after.routes_by_id.get(rid)
                entry["after"] = _fields_of(left.model_dump(mode="json"), ROUTE_FIELDS) if left else None
            routes.append(entry)
            continue
        old_account = before.details.get(e.key)
        if not RESTORABLE_ACCOUNT.get(e.what) or old_account is None:
            cannot.append(e)
            continue
        names = {f for f, _, _ in e.fields}
        now = after.details.get(e.key) if after is not None else None
        texts_of = [old_account.manualattributes, now.manualattributes if now is not None else ""]
        if any(n.startswith(EXTRA) for n in names) and any(_holds_secret(x) for x in texts_of):
            cannot.append(e)  # its extra parameters hold a password: never carried outside the PBX
            continue
        restore: dict[str, Any] = {n: getattr(old_account, n) for n in ACCOUNT_FIELDS if n in names}
        if any(n.startswith(EXTRA) for n in names):
            restore["manualattributes"] = old_account.manualattributes
        account: dict[str, Any] = {"id": e.key, "login": old_account.username, "fields": restore}
        if now is not None:  # the restored fields as the drift left them
            account["after"] = _fields_of(now.model_dump(mode="json", exclude={"secret"}), restore)
        accounts.append(account)
    if not routes and not accounts:
        return None, cannot
    return PutBack(tuple(routes), tuple(accounts)), cannot


# ---------------------------------------------------------------------- words


def _field(name: str, lang: str) -> str:
    if name.startswith(EXTRA):
        return t("drift.field_extra", lang, key=name[len(EXTRA) :].strip())
    key = f"field.{name}"
    return t(key, lang) if key in CATALOGUES["en"] else name


def _value(value: Any, lang: str) -> str:
    if value in (None, "", []):
        return t("plan.empty_value", lang)
    if isinstance(value, bool):
        return t("drift.yes" if value else "drift.no", lang)
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def event_line(e: DriftEvent, lang: str, *, at: str = "", html: bool = True, limit: int = 6) -> str:
    """One drift event: the record, what happened, and its fields before -> after."""
    _t = texts(html)
    shown = e.fields[:limit]
    if e.what in ("added", "removed"):
        side = 2 if e.what == "added" else 1
        fields = "; ".join(f"{_field(f[0], lang)}: {_value(f[side], lang)}" for f in shown)
    else:
        fields = "; ".join(
            t("drift.field", lang, field=_field(f, lang), before=_value(b, lang), after=_value(a, lang))
            for f, b, a in shown
        )
    if len(e.fields) > limit:
        fields += " " + t("drift.more", lang, n=len(e.fields) - limit)
    record = t(f"drift.record.{e.kind}", lang, label=e.label, key=e.key)
    return _t(
        "drift.line",
        lang,
        at=f"{at} · " if at else "",
        record=record,
        what=t(f"drift.what.{e.what}", lang),
        fields=fields,
    )


def outcome_line(c: OutcomeChange, lang: str, *, html: bool = True) -> str:
    _t = texts(html)

    def where(outcome: str, destination: str) -> str:
        if outcome == "dial":
            return destination
        return t(f"drift.ends.{outcome}", lang, destination=destination or t("plan.empty_value", lang))

    return _t(
        "drift.outcome",
        lang,
        number=c.number,
        before=where(c.before_outcome, c.before),
        after=where(c.after_outcome, c.after),
    )
