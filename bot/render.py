"""Text for people: plan cards, outcomes and errors, in Russian or English.

Plain text here; `html=True` escapes every value taken from the PBX or the
user for Telegram's HTML parse mode. No secret ever reaches these functions:
plan records carry no `secret`, and nothing here reads the vault.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Callable
from typing import Any

from .commands import EXAMPLES, UsageError
from .executor import ApplyResult
from .i18n import CATALOGUES, t
from .planner import NEW_PREFIX, Plan, PlanError, Step, StepKind
from .policy import Tally

# Fields an update step shows when they change (the rest are shown only when they do too).
_HIDDEN = {"id", "secret"}


def esc(value: Any) -> str:
    """A value for Telegram's HTML parse mode."""
    return html_lib.escape(str(value), quote=False)


def _escape(enabled: bool) -> Callable[[Any], str]:
    return esc if enabled else str


def _attrs(value: str) -> str:
    return " | ".join(line for line in value.splitlines() if line.strip()) or ""


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
    esc = _escape(html)
    destinations = destinations or {}
    providers = providers or {}
    record = step.after if step.after is not None else (step.before or {})
    empty = t("plan.empty_value", lang)
    params: dict[str, Any] = {"n": n, "target": esc(step.target), "login": esc(step.login)}
    if step.kind.on_provider:
        params.update(
            host=esc(record.get("host", "")),
            port=record.get("port", ""),
            transport=esc(record.get("transport", "")),
        )
    else:
        extension = record.get("extension", "")
        params.update(
            did=esc(_did(record, lang)),
            provider=esc(_provider_words(record, lang, providers)),
            destination=esc(destinations.get(extension, extension)),
        )
    lines = [t(f"plan.step.{step.kind.value}", lang, **params)]
    if step.kind is StepKind.CREATE_PROVIDER:
        lines.append(t("plan.secret", lang))  # the password itself never reaches a text
        if record.get("manualattributes"):
            lines.append(t("plan.attrs", lang, value=esc(_attrs(record["manualattributes"]))))
    if step.kind in (StepKind.UPDATE_PROVIDER, StepKind.UPDATE_ROUTE):
        before, after = step.before or {}, step.after or {}
        for key in sorted(set(before) | set(after)):
            if key in _HIDDEN or before.get(key) == after.get(key):
                continue
            old, new = before.get(key), after.get(key)
            if key == "manualattributes":
                old, new = _attrs(old or ""), _attrs(new or "")
            elif key == "providerid":
                old = _provider_words(before, lang, providers)
                new = _provider_words(after, lang, providers)
            elif key == "extension":
                old, new = destinations.get(old, old), destinations.get(new, new)
            lines.append(
                t(
                    "plan.field",
                    lang,
                    field=esc(_field_name(key, lang)),
                    before=esc(old if old not in (None, "") else empty),
                    after=esc(new if new not in (None, "") else empty),
                )
            )
    lines.append(t(f"plan.reason.{step.reason}", lang))
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
    """The plan card: header, one block per step, notes, approvals."""
    esc = _escape(html)
    kind = t(f"plan.kind.{plan.kind.value}", lang)
    head = {"pbx": esc(plan.pbx), "kind": kind, "steps": len(plan.steps)}
    if plan_id:
        lines = [t("plan.header", lang, id=esc(plan_id), **head)]
    else:
        lines = [t("plan.header_draft", lang, **head)]
    if plan.empty:
        lines.append(t("plan.empty", lang))
        return "\n".join(lines)
    for note in plan.notes:
        lines.append(t(f"plan.note.{note}", lang, host=esc(plan.host or "")))
    for n, step in enumerate(plan.steps, start=1):
        lines += step_lines(n, step, lang, destinations=destinations, providers=providers, html=html)
    if plan.needs_secret:
        lines.append(t("plan.needs_secret", lang, logins=esc(", ".join(plan.needs_secret))))
    if status:
        lines.append(t("plan.status", lang, status=t(f"status.{status}", lang)))
    if tally is not None and status in (None, "proposed"):
        lines.append(t("plan.approvals", lang, have=tally.have, need=tally.need))
    return "\n".join(lines)


def outcome_text(
    result: ApplyResult | None, outcome: dict[str, Any], lang: str, *, html: bool = False
) -> str:
    esc = _escape(html)
    lines: list[str] = []
    if outcome.get("error") == "interrupted":
        lines.append(t("outcome.interrupted", lang))
        if outcome.get("recovered"):
            lines.append(t(f"outcome.recovered.{outcome['recovered']}", lang))
    elif outcome.get("error"):
        step = (outcome.get("failed_step") or 0) + 1
        lines.append(t("outcome.error", lang, step=step, error=esc(outcome["error"])))
        if not outcome.get("leftovers"):
            lines.append(t("outcome.rolled_back", lang))
    for left in outcome.get("leftovers") or []:
        lines.append(
            t(
                "outcome.leftover",
                lang,
                step=left["step"] + 1,
                kind=esc(left["kind"]),
                record=esc(left["record"]),
                now=t(f"leftover.{left.get('now', 'other')}", lang),
                error=esc(left["error"]),
            )
        )
    if outcome.get("leftovers"):
        lines.append(t("outcome.leftover_help", lang))
    if outcome.get("replan_error"):
        lines.append(t("outcome.replan_failed", lang))
        reason = replan_reason(outcome["replan_error"], lang, html)
        lines.append(t("outcome.replan_reason", lang, reason=reason))
    registration = outcome.get("registration") or {}
    if registration:
        lines.append(t("outcome.registration_header", lang))
        for login, state in sorted(registration.items()):
            lines.append(t("outcome.registration", lang, login=esc(login), state=t(f"state.{state}", lang)))
    return "\n".join(lines)


class _Blanks(dict):
    def __missing__(self, key: str) -> str:
        return "…"  # a parameter the outcome did not keep (only strings and numbers are kept)


def replan_reason(error: dict[str, Any], lang: str, html: bool = False) -> str:
    """Why a stale plan could not be planned again: `{"code", "params"}` (and `kind`,
    "plan_error" or "change", when given) as the sentence its error has elsewhere."""
    esc = _escape(html)
    code = str(error.get("code") or "")
    params = _Blanks({k: esc(v) for k, v in (error.get("params") or {}).items()})
    catalogue = CATALOGUES.get(lang, CATALOGUES["en"])
    kind = error.get("kind")
    for key in [f"{kind}.{code}"] if kind else [f"plan_error.{code}", f"change.{code}"]:
        if key in catalogue:
            try:
                return catalogue[key].format_map(params)
            except (IndexError, ValueError, AttributeError):
                break
    return esc(code or "?")


def error_text(exc: Exception, lang: str, *, html: bool = False) -> str:
    """A UsageError, PlanError or ChangeError as a sentence (and the usage line)."""
    esc = _escape(html)
    if isinstance(exc, UsageError):
        params = {k: esc(v) for k, v in exc.params.items()}
        if exc.code == "not_a_command":
            params["example"] = EXAMPLES["addnumber"]
        text = t(f"usage.{exc.code}", lang, **params)
        if getattr(exc, "line", None):  # a rule (bot/validate.py) a CSV row breaks: which row
            text = t("usage.csv_line", lang, line=esc(exc.line), rule=text)
        if exc.usage:
            text += "\n" + t("usage.line", lang, usage=esc(exc.usage), example=esc(exc.example))
        return text
    if isinstance(exc, PlanError):
        params = dict(exc.params)
        if "candidates" in params:
            params["candidates"] = ", ".join(f"{name} ({value})" for name, value in params["candidates"])
        if "hosts" in params:
            params["hosts"] = ", ".join(params["hosts"])
        return t(f"plan_error.{exc.code}", lang, **{k: esc(v) for k, v in params.items()})
    code = getattr(exc, "code", None)
    params = getattr(exc, "params", {})
    if code is not None:
        return t(f"change.{code}", lang, **{k: esc(v) for k, v in params.items()})
    return esc(exc)


TELEGRAM_LIMIT = 4096


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = TELEGRAM_LIMIT) -> list[str]:
    """Parts of at most `limit` UTF-16 units (Telegram's count), cut at line ends
    where possible. Cards carry no HTML tags across lines, so any cut is safe."""
    parts: list[str] = []
    current = ""
    for line in text.split("\n"):
        while utf16_len(line) > limit:  # one very long line: cut it hard
            cut = limit
            while utf16_len(line[:cut]) > limit:
                cut -= 1
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
    return [p for p in parts if p.strip()] or [text[:limit]]
