"""What reaches the PBX's configuration, checked at one edge: SIP passwords,
logins, hosts and typed destinations, from the chat, a CSV and the CLI alike.

Each function returns the value to use or raises `InputError` (a `UsageError`:
rendered by `render.error_text` as `usage.<code>`, the code naming the rule).
A refusal never carries the refused password, and never a character of it.

Why these rules (MikoPBX = github.com/mikopbx/Core, Asterisk = main/config.c):

* MikoPBX writes a provider's secret into pjsip.conf as a `password = <value>`
  line of its `[<id>-REG-AUTH]` / `[<id>-AUTH]` sections, without escaping
  anything (src/Core/Asterisk/Configs/SIPConf.php generateProviderRegistrationAuth,
  src/Core/System/Util.php overrideConfigurationArray: "$key = $value\\n").
  A line break therefore adds configuration lines of the attacker's choosing;
  Asterisk's parser cuts a value at `;` (a comment; `;--` opens a block
  comment) and strips the whitespace around it. A `#` or `[` only matters at
  the start of a line, which a value after `password = ` never is, so both
  stay allowed once line breaks are refused.
* The REST API trims the secret and allows at most 100 characters
  (src/PBXCoreREST/Lib/Providers/DataStructure.php: 'secret' maxLength 100,
  sanitize 'string' = trim). `XXXXXXXX` is how MikoPBX masks a stored secret:
  SaveRecordAction keeps the old password when it receives it, so it cannot
  be a password.
* Only printable ASCII: SIP digest authentication hashes the password's bytes,
  operators issue Latin passwords, and a Cyrillic letter in one is almost
  always a keyboard-layout slip the PBX would store without a word.
* A login becomes the DID of its "any provider" route.
  IncomingContexts::generateRouteDialplan (src/Core/Asterisk/Configs/Generators/
  Extensions/IncomingContexts.php) writes `exten => _<number>` — a pattern —
  when the number starts with `_` or consists only of the characters of
  `[.|!NXZ0-9\\[\\]-]`: `X.`, `NXXXXXX` or `847-900` would then catch other
  calls. Digits alone are literal in a pattern, so 847900 stays a login.
  The user part itself: MikoPBX's schema for `username` is `^[a-zA-Z0-9_.+\\-]+$`,
  at most 100 characters (DataStructure.php); it is written into
  `client_uri = sip:<login>@<host>:<port>`, where `@`, `;` or a space would
  break the URI.
* Hosts: a DNS name (RFC 1035/1123 labels of 1-63 letters, digits and inner
  hyphens, at most 253 characters, a last label not all digits) or an IP
  address (IPv6 in brackets, as in a SIP URI), an optional port 1-65535.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from bot.errors import InputError
from bot.routing.rules import DEFAULT_REGION, normalise_phone

PASSWORD_MAX = 100  # DataStructure.php: 'secret' => maxLength 100
PASSWORD_MASK = "XXXXXXXX"  # SaveRecordAction: the masked value keeps the old secret
LOGIN_MAX = 100  # DataStructure.php: 'username' => maxLength 100
HOST_MAX = 253  # RFC 1035 (255 octets on the wire, 253 characters written)
LABEL_MAX = 63
DESTINATION_MAX = 200

_LOGIN = re.compile(r"[A-Za-z0-9_.+-]+")
_PHONE_LIKE = re.compile(r"[0-9\s()+.\-]+")  # what a phone is written with
# IncomingContexts::generateRouteDialplan: '/^[.|!|N|X|Z|0-9|\[|\]|\-]+$/m' makes the number a pattern.
_MIKOPBX_PATTERN = re.compile(r"[.|!NXZ0-9\[\]\-]+")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[0-9]{1,5}")


_ALSO: dict[type[Exception], type[InputError]] = {}


def _also(base: type[Exception]) -> type[InputError]:
    """An InputError that is also a `base`: the core's callers catch their own error type."""
    if base not in _ALSO:
        _ALSO[base] = type(f"Input{base.__name__}", (InputError, base), {})
    return _ALSO[base]


def _refuse(code: str, command: str | None, also: type[Exception] | None, **params: str) -> InputError:
    cls = InputError if also is None else _also(also)
    return cls(code, command, **params)


def _printable(text: str) -> bool:
    """No character of Unicode category C (control, format, surrogate, private, unassigned),
    no line or paragraph separator, no space but U+0020."""
    return text.isprintable()


def sip_password(value: str, *, also: type[Exception] | None = None) -> str:
    """The password as given, or InputError naming the rule it breaks (never the password)."""
    if not value:
        raise _refuse("password_empty", None, also)
    if not _printable(value):
        raise _refuse("password_control", None, also)
    if not value.isascii():
        raise _refuse("password_not_ascii", None, also)
    if value != value.strip():
        raise _refuse("password_spaces", None, also)
    if ";" in value:
        raise _refuse("password_semicolon", None, also)
    if len(value) > PASSWORD_MAX:
        raise _refuse("password_too_long", None, also, limit=str(PASSWORD_MAX))
    if value == PASSWORD_MASK:
        raise _refuse("password_mask", None, also, mask=PASSWORD_MASK)
    return value


def sip_passwords(
    values: Mapping[str, str] | None, *, also: type[Exception] | None = None
) -> dict[str, str] | None:
    """Every password of a `{login: password}` mapping (None stays None)."""
    if values is None:
        return None
    return {login: sip_password(password, also=also) for login, password in values.items()}


def password_file_text(text: str) -> str:
    """A password file's content: one trailing line end is the file's, not the password's."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def _shown(value: str) -> str:
    """A refused login or host as it may be shown: printable, at most 40 characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in value[:40])


def sip_login(value: str, command: str | None = None) -> str:
    """A SIP login (the user part MikoPBX registers with, and the DID of its route)."""
    if len(value) > LOGIN_MAX:
        raise InputError("login_too_long", command, login=_shown(value), limit=str(LOGIN_MAX))
    if not _LOGIN.fullmatch(value):
        raise InputError("bad_login", command, login=_shown(value))
    if value.startswith("_") or (_MIKOPBX_PATTERN.fullmatch(value) and not value.isdigit()):
        raise InputError("login_pattern", command, login=_shown(value))
    return value


def phone(value: str, command: str | None = None, region: str = DEFAULT_REGION) -> str:
    """A phone number in any spelling (+7 (495) 123-45-67, 84951234567, 74951234567), as E.164."""
    found = normalise_phone(value, region)
    if found is None:
        raise InputError("bad_phone", command, phone=_shown(value))
    return found


def login_not_phone(value: str, command: str | None = None, region: str = DEFAULT_REGION) -> str:
    """A SIP login that is not a phone written where the login belongs: `+7…` (a
    phone, or the country code of one) is refused with the form to use, so that
    `/addnumber zadarma +7 (495) 123-45-67` never makes an account named `+7`.
    An all-digit login stays verbatim, whatever number it looks like."""
    if value.startswith("+") and value[1:].isdigit():
        raise InputError("phone_as_login", command, phone=normalise_phone(value, region) or _shown(value))
    return sip_login(value, command)


def number(value: str, command: str | None = None) -> str:
    """A login for /route, /removenumber, /numbers (a phone was tried first): text
    written like a phone that is not a valid one is refused as a phone, not a login."""
    if _PHONE_LIKE.fullmatch(value) and not value.isdigit():
        raise InputError("bad_phone", command, phone=_shown(value))
    return sip_login(value, command)


def _dns_name(name: str) -> bool:
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except ValueError:  # UnicodeError: an empty or too long label, a character IDNA refuses
            return False
    labels = name.lower().split(".")
    return (
        len(name) <= HOST_MAX
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
    )


def host(value: str, command: str | None = None) -> tuple[str, int | None]:
    """`host[:port]` -> (host, port or None). A DNS name in lower case (an IDN as punycode),
    an IPv4 address, or an IPv6 address in brackets (`[2001:db8::1]:5060`; bare without a port)."""
    text = value
    port_text: str | None = None
    if text.startswith("["):
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise InputError("bad_host", command, host=_shown(value))
        address = _ip(inside, 6)
        if address is None:
            raise InputError("bad_host", command, host=_shown(value))
        name = f"[{address}]"
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:  # a bare IPv6 address: no port possible
        address = _ip(text, 6)
        if address is None:
            raise InputError("bad_host", command, host=_shown(value))
        name = f"[{address}]"
    else:
        name, colon, port_text_ = text.partition(":")
        port_text = port_text_ if colon else None
        v4 = _ip(name, 4)
        if v4 is not None:
            name = str(v4)
        else:
            if name.endswith("."):  # the root of a fully qualified name
                name = name[:-1]
            if len(name) > HOST_MAX:
                raise InputError("host_too_long", command, host=_shown(value), limit=str(HOST_MAX))
            if not _dns_name(name):
                raise InputError("bad_host", command, host=_shown(value))
            if not name.isascii():
                name = name.encode("idna").decode("ascii")
            name = name.lower()
    port = None
    if port_text is not None:
        if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
            raise InputError("bad_port", command, port=_shown(port_text))
        port = int(port_text)
    return name, port


def _ip(text: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text.isascii() or "%" in text:  # no IPv6 zone: a provider is not on a link-local address
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address if address.version == version else None


def destination(value: str, command: str | None = None) -> str:
    """A typed destination ("IVR", "Отдел продаж", "201"): matched against the PBX's
    destinations, never written as typed; still no control character and a sane length."""
    if not value:
        raise InputError("missing_destination", command)
    if not _printable(value):
        raise InputError("destination_control", command)
    if len(value) > DESTINATION_MAX:
        raise InputError("destination_too_long", command, limit=str(DESTINATION_MAX))
    return value
