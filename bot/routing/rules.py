"""The routing rules every reader of the PBX shares (the doctor, trace and
digest here; the snapshot, planner and executor in bot/plans): when two host
names are one server, what number two spellings share, how MikoPBX reads an
account's extra parameters, what the recipe is and whether an account has it,
and how Asterisk matches a route's DID.

The floor of the core: this module imports nothing of ours but pbx.models, so
bot/plans may read it without an import circle (tests/test_architecture.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers

from pbx.models import Provider, ProviderSummary, Route

# ---------------------------------------------------------------------- hosts


@functools.lru_cache(maxsize=4096)  # pure; a plan over a 5,000-account host asks ~35,000 times
def host_key(host: str) -> str:
    """One spelling per server: MikoPBX compares host strings as written, but
    surrounding spaces, a trailing dot or case never make another server."""
    return host.strip().rstrip(".").lower()


def same_host(a: str, b: str) -> bool:
    return host_key(a) == host_key(b)


# ---------------------------------------------------------------------- numbers

DEFAULT_REGION = "RU"


@functools.lru_cache(maxsize=65536)  # pure, and a digest asks for every login and every call's DID
def normalise_phone(text: str, region: str = DEFAULT_REGION) -> str | None:
    """E.164 for a valid phone number ("+7(495)229-30-42", "84952293042" and
    "74952293042" are one number), None for anything else — logins such as
    847706 are never turned into fake numbers."""
    cleaned = re.sub(r"[\s()\-.]", "", text)
    if not re.fullmatch(r"\+?\d{5,17}", cleaned):
        return None
    try:
        number = phonenumbers.parse(cleaned, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def number_key(text: str, region: str = DEFAULT_REGION) -> str:
    """The key two spellings of one number share: E.164 for a phone, the text itself for a login."""
    return normalise_phone(text, region) or text.strip()


def has_number(account: Provider | ProviderSummary, number: str) -> bool:
    """The account's login is `number`, or its login or its note is that phone
    number in any spelling (a login 74951234567 is found as +7 (495) 123-45-67)."""
    if account.username == number:
        return True
    key = number_key(number)
    if not key.startswith("+"):
        return False
    return number_key(account.username) == key or (bool(account.note) and number_key(account.note) == key)


def phone_of(account: Provider | ProviderSummary) -> str | None:
    """The phone an account is known by, in E.164: its note's (what /addnumber writes
    there), else its login's when the login is a phone number; None for neither."""
    return (normalise_phone(account.note) if account.note else None) or normalise_phone(account.username)


# How an operator writes a phone in the Request-URI of the calls it sends (the DID a
# route must hold, literally: Asterisk compares text).
PHONE_DID_FORMS = ("e164", "national", "plus")


def phone_did(phone: str, form: str = "e164", region: str = DEFAULT_REGION) -> str:
    """The DID for a phone (any spelling) in an operator's form: `e164` 74951234567
    (E.164 without '+'), `national` 84951234567 (the trunk prefix and the national
    number, digits only), `plus` +74951234567. Raises ValueError for a non-phone."""
    e164 = normalise_phone(phone, region)
    if e164 is None or form not in PHONE_DID_FORMS:
        raise ValueError(f"not a phone number or form: {phone!r} {form!r}")
    if form == "plus":
        return e164
    if form == "national":
        number = phonenumbers.parse(e164)
        return re.sub(r"\D", "", phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    return e164[1:]


def accounts_of_number(providers: Iterable[ProviderSummary], number: str) -> list[ProviderSummary]:
    return [p for p in providers if has_number(p, number)]


# ---------------------------------------------------------------------- extra parameters and the recipe

# The context the recipe sets: several logins on one host, each call routed by its login.
RECIPE_CONTEXT = "public-direct-dial"

# Sections MikoPBX's pjsip generator reads from extra parameters; anything else is ignored.
KNOWN_SECTIONS = {"registration-auth", "registration", "endpoint-auth", "aor", "identify", "endpoint"}


# An extra parameter whose name speaks of a credential (pjsip auth's password, md5_cred,
# oauth_secret, refresh_token; chan_sip's secret): its value is never shown nor audited.
SENSITIVE_KEY = re.compile(r"pass|secret|md5_cred|token", re.IGNORECASE)
MASK = "•••"


def masked_attributes(text: str) -> str:
    """`manualattributes` with the value of every credential-named key as `•••` (for a
    card, an audit row): the lines, sections and other values as they are."""
    out = []
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        stripped = key.strip()
        if (
            sep
            and value.strip()
            and not stripped.startswith((";", "#", "["))
            and SENSITIVE_KEY.search(stripped)
        ):
            line = f"{key}={MASK}"
        out.append(line)
    return "\n".join(out)


@dataclass(frozen=True)
class Attributes:
    """`manualattributes` as MikoPBX's Util::parseIniSettings reads it, plus what it drops."""

    sections: dict[str, dict[str, str]]
    unknown_sections: list[str]
    lines_without_value: list[str]

    @classmethod
    def parse(cls, text: str) -> Attributes:
        sections: dict[str, dict[str, str]] = {}
        unknown: list[str] = []
        dropped: list[str] = []
        current = ""
        for raw in (text or "").splitlines():
            line = raw.strip()
            if not line or line.startswith((";", "#")):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                sections.setdefault(current, {})
                if current not in KNOWN_SECTIONS and current not in unknown:
                    unknown.append(current)
                continue
            key, sep, value = line.partition("=")
            if not sep or not value.strip():
                dropped.append(line[:60])
                continue
            sections.setdefault(current, {})[key.strip()] = value.strip()
        return cls(sections, unknown, dropped)

    @property
    def recipe(self) -> bool:
        return self.sections.get("endpoint", {}).get("context") == RECIPE_CONTEXT


def shared_context(host: str, port: int | str | None) -> str:
    """The context MikoPBX gives the enabled accounts sharing one host:port
    (IncomingContexts: the host and port, letters and digits only, + "-incoming")."""
    return re.sub(r"[^A-Za-z0-9]", "", f"{host}{port}") + "-incoming"


def did_matches(pattern: str, did: str) -> bool:
    """Asterisk's extension match for a route DID: plain, or a `_`-pattern (X Z N . ! [a-b])."""
    if not pattern.startswith("_"):
        return pattern == did
    out, body, i = [], pattern[1:], 0
    while i < len(body):
        ch = body[i]
        if ch == "[":
            end = body.find("]", i)
            end = len(body) if end < 0 else end
            out.append("[" + re.escape(body[i + 1 : end]).replace("\\-", "-") + "]")
            i = end
        else:
            out.append(
                {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(ch, re.escape(ch))
            )
        i += 1
    return re.fullmatch("".join(out), did) is not None


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


@functools.lru_cache(maxsize=4096)  # a host of 5,000 accounts holds a handful of distinct texts
def has_recipe(manualattributes: str) -> bool:
    """The text is exactly as `merge_recipe` leaves it: the recipe as the bot writes it.
    (`Attributes.recipe` is looser: any `[endpoint]` whose context is the recipe's,
    which is what MikoPBX acts on.)"""
    return merge_recipe(manualattributes) == manualattributes.replace("\r\n", "\n").rstrip("\n")


def of_number(
    providers: list[ProviderSummary], routes: list[Route], number: str
) -> tuple[list[ProviderSummary], list[Route]]:
    """One number's part of the lists: the accounts with that login or phone, and the
    routes bound to them or whose DID is the number (login or phone, any spelling)."""
    mine = [p for p in providers if has_number(p, number)]
    keys = {number_key(number)} | {number_key(p.username) for p in mine}
    keys |= {phone for p in mine if (phone := phone_of(p)) is not None}
    ids = {p.id for p in mine}
    return mine, [r for r in routes if r.providerid in ids or (r.number and number_key(r.number) in keys)]
