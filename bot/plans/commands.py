"""Grammar: the text of a command in, a typed Intent out — or a UsageError that
shows the right form.

    /addnumber <provider> <login> [<phone>] → <destination>
    /route <login|phone> → <destination>
    /removenumber <login|phone>
    /password <login|phone>   (the password itself is asked for in private, never here)
    /undo <plan>

Arrows `→`, `->`, `=>` and the words `to` / `на` all work: phone keyboards
make `→` awkward and autocorrect turns `->` into other things.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass

from bot.errors import UsageError
from bot.routing.rules import DEFAULT_REGION, host_key, normalise_phone

from . import validate

ARROWS = ("→", "->", "=>", "⇒", "to", "на")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # C0/C1 controls but tab and line ends
_PLAN_ID = re.compile(r"[A-Za-z0-9]{4,32}")
_ARROW = re.compile(
    r"\s*(?:" + "|".join(re.escape(a) for a in ARROWS if not a.isalpha()) + r")\s*"
    r"|\s+(?:" + "|".join(a for a in ARROWS if a.isalpha()) + r")(?:\s+|$)",
    re.IGNORECASE,
)
_COMMAND = re.compile(r"^/([A-Za-z_]+)(?:@[A-Za-z0-9_]+)?(?:\s+|$)")


@dataclass(frozen=True)
class ProviderFamily:
    """An operator whose numbers come as one SIP login each on one shared host."""

    name: str
    title: str
    host: str | None  # None: the host differs per customer; ask for it
    port: int = 5060
    transport: str = "udp"
    aliases: tuple[str, ...] = ()
    # How its calls for a phone number arrive (the DID of the phone's route): `e164`
    # 74951234567, `national` 84951234567 or `plus` +74951234567 (rules.phone_did);
    # `[phone_dids]` in the config overrides it per family or host.
    phone_did: str = "e164"
    domain: str | None = None  # a per-customer host's parent domain (vpbx123.mangosip.ru)


# Hosts confirmed in the MikoPBX docs or public configs (docs/ROUTING.md §4).
CATALOGUE: tuple[ProviderFamily, ...] = (
    ProviderFamily("zadarma", "Zadarma", "sip.zadarma.com", aliases=("задарма",)),
    ProviderFamily("novofon", "Novofon", "sip.novofon.ru", aliases=("новофон",)),
    ProviderFamily("sipnet", "Sipnet", "sipnet.ru", aliases=("сипнет",)),
    ProviderFamily("megafon", "MegaFon", None, aliases=("мегафон",)),
    ProviderFamily("beeline", "Beeline", None, aliases=("билайн",)),
    # Mango sends the DID as 8XXXXXXXXXX (MikoPBX docs, routing-by-did-number); the
    # others' form is not documented: E.164 without '+' (what their APIs and CDRs show).
    ProviderFamily(
        "mango", "Mango Office", None, aliases=("манго",), phone_did="national", domain="mangosip.ru"
    ),
    ProviderFamily("telphin", "Telphin", None, aliases=("телфин",)),
    ProviderFamily("mts", "MTS", None, aliases=("мтс",)),
    ProviderFamily("rostelecom", "Rostelecom", None, aliases=("ростелеком", "rt")),
    ProviderFamily("uis", "UIS", None, aliases=("uiscom",)),
)
_FAMILIES = {alias: f for f in CATALOGUE for alias in (f.name, *f.aliases)}


@dataclass(frozen=True)
class ProviderTarget:
    """Where the new account registers: a catalogue family or an explicit host."""

    host: str
    port: int = 5060
    transport: str = "udp"
    family: str | None = None

    @property
    def title(self) -> str:
        family = _FAMILIES.get(self.family or "")
        return family.title if family else self.host


def family_of_host(host: str) -> ProviderFamily | None:
    """The catalogue family whose host this is (None for a host the catalogue does not name)."""
    key = host_key(host)
    for f in CATALOGUE:
        if (f.host and host_key(f.host) == key) or (
            f.domain and (key == f.domain or key.endswith("." + f.domain))
        ):
            return f
    return None


def phone_did_form(host: str, family: str | None = None, overrides: Mapping[str, str] | None = None) -> str:
    """The form of a phone's DID for an account on `host`: the config's `[phone_dids]`
    by family name or host, else the catalogue's, else E.164 without '+'."""
    found = _FAMILIES.get(family or "") or family_of_host(host)
    for key in (found.name if found else None, host_key(host)):
        if key and overrides and key in overrides:
            return overrides[key]
    return found.phone_did if found else "e164"


@dataclass(frozen=True)
class AddNumber:
    provider: ProviderTarget
    login: str
    phone: str | None  # E.164, when given
    destination: str  # as typed; resolved against the PBX's destinations by the planner


@dataclass(frozen=True)
class RouteNumber:
    number: str  # a login verbatim, or a phone in E.164
    destination: str


@dataclass(frozen=True)
class RemoveNumber:
    number: str


@dataclass(frozen=True)
class ChangePassword:
    """A new SIP password for an existing account; the password comes apart, sealed."""

    number: str


@dataclass(frozen=True)
class Undo:
    plan_id: str


@dataclass(frozen=True)
class AddNumbers:
    """Several `/addnumber`s on one provider host: a CSV upload, planned as one change."""

    provider: ProviderTarget
    rows: tuple[AddNumber, ...]


@dataclass(frozen=True)
class FixHost:
    """The doctor's fix for a host with several logins: the recipe on every enabled account."""

    host: str


@dataclass(frozen=True)
class PutBack:
    """Drift's "Put back": records changed outside the bot, restored as they were.

    `routes`: {"id": route id, "before": the route as it was, or None when it was added
    outside the bot}; `accounts`: {"id", "login", "fields": {field: value before}} (never
    the SIP password). Built by bot/routing/drift.py from the audit trail's drift."""

    routes: tuple[dict, ...] = ()
    accounts: tuple[dict, ...] = ()


Intent = AddNumber | AddNumbers | RouteNumber | RemoveNumber | ChangePassword | Undo | FixHost | PutBack

CSV_COLUMNS = ("login", "password", "destination", "phone")
MAX_CSV_ROWS = 5000


def _split_arrow(rest: str, command: str) -> tuple[str, str]:
    """`left → right` at the first arrow of any kind; the destination may hold spaces."""
    parts = _ARROW.split(rest, maxsplit=1)
    if len(parts) != 2:
        raise UsageError("missing_arrow", command)
    left, right = parts[0].strip(), parts[1].strip()
    if not right:
        raise UsageError("missing_destination", command)
    return left, right


def parse_provider(text: str) -> ProviderTarget:
    family = _FAMILIES.get(text.lower())
    if family is not None:
        if family.host is None:
            raise UsageError("provider_needs_host", "addnumber", provider=family.title)
        return ProviderTarget(family.host, family.port, family.transport, family.name)
    if "." not in text and ":" not in text:  # a word: a family name we do not know
        raise UsageError(
            "unknown_provider", "addnumber", provider=text, known=", ".join(f.name for f in CATALOGUE)
        )
    host, port = validate.host(text, "addnumber")
    return ProviderTarget(host, port or 5060)


def _login(text: str, command: str) -> str:
    return validate.sip_login(text, command)


def _destination(text: str, command: str) -> str:
    return validate.destination(text, command)


def parse_number(text: str, command: str, region: str = DEFAULT_REGION) -> str:
    """A login verbatim, or a phone number normalised (any spelling: +7…, 8…, 7…,
    spaces, brackets, dashes, as one number)."""
    phone = normalise_phone(text, region)
    if phone is not None:
        return phone
    return validate.number(text, command)


def _login_and_phone(words: list[str], command: str, region: str) -> tuple[str, str | None]:
    """`<login> [<phone in any number of words>]` of /addnumber. A phone where the
    login belongs (`+7 (495) 123-45-67`, `8 495 1234567`, `+74951234567`) is refused
    with the form to use, never taken apart into a login `+7` and a phone."""
    whole = " ".join(words)
    as_phone = normalise_phone(whole, region)
    if as_phone is not None and not (len(words) == 1 and words[0].isdigit()):
        # a single all-digit word is a login as the operator issued it (74951234567 at Sipnet)
        raise validate.InputError("phone_as_login", command, phone=as_phone)
    login = validate.login_not_phone(words[0], command, region)
    if len(words) == 1:
        return login, None
    return login, validate.phone(" ".join(words[1:]), command, region)


def parse(text: str, *, region: str = DEFAULT_REGION) -> Intent:
    """Parse one command. Raises UsageError, and nothing else, for any text."""
    text = (text or "").strip()
    match = _COMMAND.match(text)
    if match is None:
        raise UsageError("not_a_command")
    command = match.group(1).lower()
    rest = text[match.end() :].strip()

    if command == "addnumber":
        left, destination = _split_arrow(rest, command)
        words = left.split()
        if len(words) < 2:
            raise UsageError("missing_login", command)
        provider = parse_provider(words[0])
        login, phone = _login_and_phone(words[1:], command, region)
        return AddNumber(provider, login, phone, _destination(destination, command))
    if command == "route":
        left, destination = _split_arrow(rest, command)
        if not left:
            raise UsageError("missing_number", command)
        return RouteNumber(parse_number(left, command, region), _destination(destination, command))
    if command == "removenumber":
        if not rest:
            raise UsageError("missing_number", command)
        return RemoveNumber(parse_number(rest, command, region))
    if command == "password":
        if not rest:
            raise UsageError("missing_number", command)
        if len(rest.split()) > 1 and normalise_phone(rest, region) is None:
            raise UsageError("password_inline", command)  # a password typed after the login: never taken
        return ChangePassword(parse_number(rest, command, region))
    if command == "numbers":  # a view (handlers/numbers.py, `pbxbot numbers`), not a change
        raise UsageError("not_a_change", None)
    if command == "undo":
        if not _PLAN_ID.fullmatch(rest):
            raise UsageError("missing_plan", command)
        return Undo(rest)
    raise UsageError("unknown_command", None, name=command[:32])


def parse_csv(text: str, provider: str, *, region: str = DEFAULT_REGION) -> tuple[AddNumbers, dict[str, str]]:
    """A CSV of `login,password,destination[,phone]` (a header row is optional;
    `,` or `;` separated) for one provider: the intent, and the SIP passwords by
    login apart from it, so that the intent never carries a secret. Every field
    passes bot/plans/validate.py; a refusal names the CSV line and the rule (never the
    password). Spaces around a field are dropped (`a, b, c`), nothing else."""
    target = parse_provider(provider)
    sample = text[:4096]
    delimiter = ";" if sample.count(";") > sample.count(",") else ","
    rows: list[AddNumber] = []
    passwords: dict[str, str] = {}
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        lines = [(reader.line_num, fields) for fields in reader]
    except csv.Error:
        raise UsageError("csv_row", "addnumber", line=str(reader.line_num + 1)) from None
    for lineno, raw in lines:
        fields = [f.strip() for f in raw]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if lineno == 1 and fields[0].lower() in ("login", "логин"):
            continue
        if len(fields) < 3 or not all(fields[:3]):
            raise UsageError("csv_row", "addnumber", line=str(lineno))
        try:
            login = validate.login_not_phone(fields[0], None, region)  # no usage line under a CSV row
            if login in passwords:
                raise UsageError("csv_duplicate", "addnumber", line=str(lineno), login=login)
            passwords[login] = validate.sip_password(raw[1].strip(" "))
            phone = validate.phone(fields[3], None, region) if len(fields) > 3 and fields[3] else None
            rows.append(AddNumber(target, login, phone, validate.destination(fields[2])))
        except validate.InputError as exc:
            exc.line = str(lineno)
            raise
        if len(rows) > MAX_CSV_ROWS:
            raise UsageError("csv_too_long", "addnumber", limit=str(MAX_CSV_ROWS))
    if not rows:
        raise UsageError("csv_empty", "addnumber")
    return AddNumbers(target, tuple(rows)), passwords


def decode_csv(data: bytes) -> str:
    """The text of an uploaded CSV: UTF-8 (a BOM dropped), else Windows-1251 (what Excel
    saves in Russian Windows); a file with NUL bytes or other control characters is refused."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1251")
        except UnicodeDecodeError:
            raise UsageError("csv_not_text") from None
    if _CONTROL.search(text):
        raise UsageError("csv_not_text")
    return text


def intent_to_dict(intent: Intent) -> dict:
    """A stored form of an intent (plans are re-planned from it when stale)."""
    return {"type": type(intent).__name__, **dataclasses.asdict(intent)}


def intent_from_dict(data: dict) -> Intent:
    data = dict(data)
    kind = data.pop("type")
    if kind == "AddNumber":
        provider = ProviderTarget(**data["provider"])
        return AddNumber(provider, data["login"], data["phone"], data["destination"])
    if kind == "AddNumbers":
        rows = tuple(intent_from_dict({"type": "AddNumber", **row}) for row in data["rows"])
        return AddNumbers(ProviderTarget(**data["provider"]), rows)  # type: ignore[arg-type]
    if kind == "PutBack":
        return PutBack(tuple(data.get("routes", ())), tuple(data.get("accounts", ())))
    simple = {cls.__name__: cls for cls in (RouteNumber, RemoveNumber, ChangePassword, Undo, FixHost)}
    return simple[kind](**data)
