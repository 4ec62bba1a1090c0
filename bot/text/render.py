"""Text for people: plan cards, outcomes and errors, in Russian or English.

Two forms of one text: plain (`t`, the CLI) and Telegram HTML (`tr`, an `Html`).
`Html` is the one way markup is made: a catalogue template is formatted with
every value escaped unless it is `Html` already (made by `tr` or `esc`), so a
name like `</code>` or `&` from a user or the PBX is shown, never parsed.
Catalogue texts carry no tags (`<login>` in them is text), so their literal
parts are escaped too. `html=True` on the functions below gives `Html`.
No secret ever reaches these functions: plan records carry no `secret`, and
nothing here reads the vault.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
import string
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, SupportsIndex, overload

from bot.errors import BotError, ConfigError, InputError, PlanError, UsageError
from bot.plans.executor import ApplyResult
from bot.plans.planner import NEW_PREFIX, Plan, Step, StepKind
from bot.plans.policy import Tally
from bot.plans.usage import EXAMPLES
from bot.routing.rules import masked_attributes
from pbx.errors import (
    PbxAuthError,
    PbxError,
    PbxForbidden,
    PbxMalformed,
    PbxNotFound,
    PbxRateLimited,
    PbxTimeout,
    PbxUnavailable,
    PbxUnsupported,
)

from .i18n import CATALOGUES, format_value, t, template

# Fields an update step shows when they change (the rest are shown only when they do too).
_HIDDEN = {"id", "secret"}
# One value from a user or the PBX, as a message shows it at most (a 5,000-character name
# must not make a one-line answer too long for Telegram).
MAX_VALUE = 500


class Html(str):
    """Telegram HTML as it stands. Adding or joining plain text to it escapes that text;
    splitting it keeps the type. Build it with `tr` or `esc`, never `Html(user_text)`."""

    __slots__ = ()

    def __html__(self) -> Html:
        return self

    def __add__(self, other: str) -> Html:
        if not isinstance(other, str):
            return NotImplemented
        return Html(str.__add__(self, esc(other)))

    def __radd__(self, other: str) -> Html:
        if not isinstance(other, str):
            return NotImplemented
        return Html(str.__add__(esc(other), self))

    def join(self, parts: Iterable[str]) -> Html:
        return Html(str.join(self, (esc(p) for p in parts)))

    def split(self, sep: str | None = None, maxsplit: SupportsIndex = -1) -> list[Html]:  # type: ignore[override]
        return [Html(p) for p in str.split(self, sep, maxsplit)]

    def splitlines(self, keepends: bool = False) -> list[Html]:  # type: ignore[override]
        return [Html(p) for p in str.splitlines(self, keepends)]

    def __repr__(self) -> str:
        return f"Html({str.__repr__(self)})"


def esc(value: Any) -> Html:
    """A value for Telegram's HTML parse mode (`Html` stays as it is)."""
    if isinstance(value, Html):
        return value
    return Html(html_lib.escape(str(value), quote=False))


def clip(text: str, limit: int = MAX_VALUE) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


_FORMATTER = string.Formatter()


@functools.lru_cache(maxsize=4096)  # a catalogue has about 900 texts
def _parsed(text: str) -> tuple[tuple[str, str | None, str | None, str | None], ...]:
    return tuple(_FORMATTER.parse(text))


def tr(key: str, lang: str, /, **params: Any) -> Html:
    """`t` for Telegram: the catalogue text as `Html`, each value escaped (and clipped
    to MAX_VALUE characters) unless it is `Html` already."""
    out: list[str] = []
    for literal, field, spec, conversion in _parsed(template(key, lang)):
        out.append(html_lib.escape(literal, quote=False))
        if field is None:
            continue
        value = params[field] if field in params else _FORMATTER.get_field(field, (), params)[0]
        if isinstance(value, Html):  # markup already: as it is
            out.append(value)
            continue
        value = _FORMATTER.convert_field(value, conversion)
        out.append(html_lib.escape(clip(format_value(value, spec or "", lang)), quote=False))
    return Html("".join(out))


def texts(html: bool) -> Callable[..., str]:
    """The catalogue function for a text's form: `tr` (Telegram HTML) or `t` (plain)."""
    return tr if html else t


@overload
def lines_of(lines: Iterable[str], html: Literal[True]) -> Html: ...
@overload
def lines_of(lines: Iterable[str], html: bool) -> str: ...
def lines_of(lines: Iterable[str], html: bool) -> str:
    return Html("\n").join(lines) if html else "\n".join(lines)


def _attrs(value: str) -> str:
    """Extra parameters on one line, a credential's value masked (a password in
    `[registration-auth]` of an account the recipe updates never reaches the card)."""
    return " | ".join(line for line in masked_attributes(str(value or "")).splitlines() if line.strip())


def _field_name(key: str, lang: str) -> str:
    return t(f"field.{key}", lang) if f"field.{key}" in CATALOGUES["en"] else key


def _provider_words(step_record: dict[str, Any], lang: str, names: dict[str, str]) -> str:
    pid = step_record.get("providerid")
    if not pid:
        return t("plan.any_provider", lang)
    if pid.startswith(NEW_PREFIX):
        return t("plan.new_provider", lang, login=pid[len(NEW_PREFIX) :])
    return t("plan.provider", lang, provider=names.get(pid, pid))


def _did(record: dict[str, Any], lang: str) -> str:
    number = record.get("number")
    return t("plan.did", lang, did=number) if number else t("plan.any_did", lang)


def step_lines(
    n: int,
    step: Step,
    lang: str,
    *,
    destinations: dict[str, str] | None = None,
    providers: dict[str, str] | None = None,
    html: bool = False,
) -> list[str]:
    _t = texts(html)
    destinations = destinations or {}
    providers = providers or {}
    record = step.after if step.after is not None else (step.before or {})
    empty = t("plan.empty_value", lang)
    params: dict[str, Any] = {"n": n, "target": step.target, "login": step.login}
    if step.kind.on_provider:
        params.update(
            host=record.get("host", ""), port=record.get("port", ""), transport=record.get("transport", "")
        )
    else:
        extension = record.get("extension", "")
        params.update(
            did=_did(record, lang),
            provider=_provider_words(record, lang, providers),
            destination=destinations.get(extension, extension),
        )
    lines = [_t(f"plan.step.{step.kind.value}", lang, **params)]
    if step.kind is StepKind.CREATE_PROVIDER:
        lines.append(_t("plan.secret", lang))  # the password itself never reaches a text
        if record.get("manualattributes"):
            lines.append(_t("plan.attrs", lang, value=_attrs(record["manualattributes"])))
    if step.kind is StepKind.SET_SECRET:
        lines.append(_t("plan.secret_change", lang))  # neither password ever reaches a text
    if step.kind in (StepKind.UPDATE_PROVIDER, StepKind.UPDATE_ROUTE):
        before, after = step.before or {}, step.after or {}
        for key in sorted(set(before) | set(after)):
            if key in _HIDDEN or before.get(key) == after.get(key):
                continue
            old, new = before.get(key, ""), after.get(key, "")
            if key == "manualattributes":
                old, new = _attrs(old or ""), _attrs(new or "")
            elif key == "providerid":
                old = _provider_words(before, lang, providers)
                new = _provider_words(after, lang, providers)
            elif key == "extension":
                old, new = destinations.get(old, old), destinations.get(new, new)
            lines.append(
                _t(
                    "plan.field",
                    lang,
                    field=_field_name(key, lang),
                    before=old if old not in (None, "") else empty,
                    after=new if new not in (None, "") else empty,
                )
            )
    lines.append(_t(f"plan.reason.{step.reason}", lang))
    return lines


def plan_text(
    plan: Plan,
    lang: str,
    *,
    plan_id: str | None = None,
    destinations: dict[str, str] | None = None,
    providers: dict[str, str] | None = None,
    status: str | None = None,
    tally: Tally | None = None,
    html: bool = False,
) -> str:
    """The plan card: header, one block per step, notes, approvals (`Html` with html=True)."""
    _t = texts(html)
    kind = t(f"plan.kind.{plan.kind.value}", lang)
    head = {"pbx": plan.pbx, "kind": kind, "steps": len(plan.steps)}
    if plan_id:
        lines = [_t("plan.header", lang, id=plan_id, **head)]
    else:
        lines = [_t("plan.header_draft", lang, **head)]
    if plan.empty:
        lines.append(_t("plan.empty", lang))
        return lines_of(lines, html)
    for note in plan.notes:
        lines.append(_t(f"plan.note.{note}", lang, host=plan.host or ""))
    for n, step in enumerate(plan.steps, start=1):
        lines += step_lines(n, step, lang, destinations=destinations, providers=providers, html=html)
    if plan.needs_secret:
        lines.append(_t("plan.needs_secret", lang, logins=", ".join(plan.needs_secret)))
    if status:
        lines.append(_t("plan.status", lang, status=t(f"status.{status}", lang)))
    if tally is not None and status in (None, "proposed"):
        lines.append(_t("plan.approvals", lang, have=tally.have, need=tally.need))
    return lines_of(lines, html)


def outcome_text(
    result: ApplyResult | None, outcome: dict[str, Any], lang: str, *, html: bool = False
) -> str:
    _t = texts(html)
    lines: list[str] = []
    if outcome.get("error") == "interrupted":
        lines.append(_t("outcome.interrupted", lang))
        if outcome.get("recovered"):
            lines.append(_t(f"outcome.recovered.{outcome['recovered']}", lang))
    elif outcome.get("error"):
        step = (outcome.get("failed_step") or 0) + 1
        lines.append(_t("outcome.error", lang, step=step, error=outcome["error"]))
        if not outcome.get("leftovers"):
            lines.append(_t("outcome.rolled_back", lang))
    for left in outcome.get("leftovers") or []:
        lines.append(
            _t(
                "outcome.leftover",
                lang,
                step=left["step"] + 1,
                kind=left["kind"],
                record=left["record"],
                now=t(f"leftover.{left.get('now', 'other')}", lang),
                error=left["error"],
            )
        )
    if outcome.get("leftovers"):
        lines.append(_t("outcome.leftover_help", lang))
    if outcome.get("replan_error"):
        lines.append(_t("outcome.replan_failed", lang))
        reason = replan_reason(outcome["replan_error"], lang, html)
        lines.append(_t("outcome.replan_reason", lang, reason=reason))
    registration = outcome.get("registration") or {}
    if registration:
        lines.append(_t("outcome.registration_header", lang))
        for login, state in sorted(registration.items()):
            lines.append(_t("outcome.registration", lang, login=login, state=t(f"state.{state}", lang)))
    return lines_of(lines, html)


def replan_reason(error: dict[str, Any], lang: str, html: bool = False) -> str:
    """Why a stale plan could not be planned again: `{"code", "params"}` (and `kind`,
    "plan_error" or "change", when given) as the sentence its error has elsewhere;
    "…" for a parameter the outcome did not keep (only strings and numbers are kept)."""
    code = str(error.get("code") or "")
    params = error.get("params") or {}
    kind = error.get("kind")
    for key in [f"{kind}.{code}"] if kind else [f"plan_error.{code}", f"change.{code}"]:
        if key in CATALOGUES["en"]:
            fields = {
                re.split(r"\W", field or "", maxsplit=1)[0]
                for _, field, _, _ in _FORMATTER.parse(template(key, lang))
                if field is not None
            }
            try:
                return texts(html)(key, lang, **{name: params.get(name, "…") for name in fields})
            except (IndexError, ValueError, AttributeError, KeyError):
                break
    return esc(code or "?") if html else code or "?"


@overload
def error_text(exc: Exception, lang: str, *, html: Literal[True], tz: tzinfo | None = None) -> Html: ...
@overload
def error_text(exc: Exception, lang: str, *, html: bool = False, tz: tzinfo | None = None) -> str: ...
def error_text(exc: Exception, lang: str, *, html: bool = False, tz: tzinfo | None = None) -> str:
    """An error of the tree (bot/errors.py) or of the PBX as its sentence: the one
    place an error is worded for a person. A command's refusal gets its usage line,
    a CSV row's its line number. Anything else (a bug) is shown in its own words.
    A moment among its params is told in `tz` (the chat's; None: this machine's)."""
    _t = texts(html)
    if isinstance(exc, PbxError):
        return pbx_error_text(exc, lang, html=html)
    if not isinstance(exc, BotError):
        return esc(clip(str(exc))) if html else str(exc)
    if isinstance(exc, ConfigError):
        return lines_of([_t(exc.key, lang, problem=problem) for problem in exc.problems], html)
    params: dict[str, Any] = {
        k: _moment(v, tz) if isinstance(v, datetime) else v for k, v in exc.params.items()
    }
    if isinstance(exc, PlanError):
        if "candidates" in params:
            params["candidates"] = ", ".join(f"{name} ({value})" for name, value in params["candidates"])
        if "hosts" in params:
            params["hosts"] = ", ".join(params["hosts"])
    if isinstance(exc, UsageError) and exc.code == "not_a_command":
        params["example"] = EXAMPLES["addnumber"]
    text = _t(exc.key, lang, **params)
    if isinstance(exc, InputError) and exc.line:  # a rule (bot/plans/validate.py) a CSV row breaks
        text = _t("usage.csv_line", lang, line=exc.line, rule=text)
    if isinstance(exc, UsageError) and exc.usage:
        text += "\n" + _t("usage.line", lang, usage=exc.usage, example=exc.example)
    return text


def _moment(value: datetime, tz: tzinfo | None) -> str:
    """A stored moment (naive means UTC) as the day and the time in `tz`."""
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(tz).strftime("%d.%m %H:%M")


# "<pbx>: GET /path: ..." as the client words every error of a call
_WHERE = re.compile(r"^(?P<pbx>.*?): (?P<method>GET|POST|PUT|PATCH|DELETE) (?P<path>\S+?):?(?: |$)")


@overload
def pbx_error_text(exc: PbxError, lang: str, *, html: Literal[True]) -> Html: ...
@overload
def pbx_error_text(exc: PbxError, lang: str, *, html: bool = False) -> str: ...
def pbx_error_text(exc: PbxError, lang: str, *, html: bool = False) -> str:
    """One line for a PBX failure: what kind, and for an unexpected answer, at which call."""
    _t = texts(html)
    where = _WHERE.match(str(exc))
    call = f"{where['method']} {where['path']}" if where else "?"
    pbx = where["pbx"] if where else ""
    reason = str(exc)[where.end() :].strip() if where else str(exc)
    detail = "; ".join(exc.messages) or reason
    if isinstance(exc, PbxMalformed):
        return _t("pbx.malformed", lang, call=call)
    if isinstance(exc, PbxRateLimited):
        return _t("pbx.rate_limited", lang, pbx=pbx)
    if isinstance(exc, PbxTimeout):
        return _t("pbx.timeout", lang, pbx=pbx, call=call)
    if isinstance(exc, PbxUnavailable):  # unreachable, 5xx, a dropped connection
        return _t("pbx.unavailable", lang, pbx=pbx, call=call, error=reason)
    if isinstance(exc, PbxForbidden):
        return _t("pbx.forbidden", lang, pbx=pbx, call=call)
    if isinstance(exc, PbxAuthError):
        return _t("pbx.auth", lang, pbx=pbx)
    if isinstance(exc, PbxUnsupported):
        return _t("pbx.unsupported", lang, pbx=pbx)
    if isinstance(exc, PbxNotFound):
        return _t("pbx.not_found", lang, call=call, error=detail)
    return _t("pbx.refused", lang, call=call, error=detail)


TELEGRAM_LIMIT = 4096


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Parts of at most `limit` UTF-16 units (Telegram's count), cut at line ends
    where possible. Texts carry no HTML tags across lines, so a cut at a line end is
    safe; a hard cut of one very long line never splits an entity (`&amp;`).
    `Html` in, `Html` parts out."""
    markup = isinstance(text, Html)
    wrap: Callable[[str], str] = Html if markup else str
    parts: list[str] = []
    current = ""
    for line in str(text).split("\n"):
        while utf16_len(line) > limit:  # one very long line: cut it hard
            cut = limit
            while utf16_len(line[:cut]) > limit:
                cut -= 1
            if markup:
                amp = line.rfind("&", max(0, cut - 10), cut)
                if amp > 0 and ";" not in line[amp:cut]:
                    cut = amp
            if current:
                parts.append(current)
                current = ""
            parts.append(line[:cut])
            line = line[cut:]
        candidate = f"{current}\n{line}" if current else line
        if utf16_len(candidate) > limit:
            parts.append(current)
            current = line
        else:
            current = candidate
    if current or not parts:
        parts.append(current)
    return [wrap(p) for p in parts if p.strip()] or [wrap(str(text)[:limit])]
