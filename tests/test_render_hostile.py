"""Every message kind the bot sends, rendered with hostile names and arguments, passes
Telegram's HTML check (sandbox/telegram/'s `plain_text`, the function its
sendMessage/editMessageText use) in parts of at most 4,096 characters, and shows
the hostile value as text (escaped, not dropped)."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from bot.config import load_settings
from bot.plans.changes import ChangeError
from bot.plans.commands import UsageError, parse
from bot.plans.planner import Plan, PlanError, PlanKind, Step, StepKind
from bot.plans.policy import Tally
from bot.routing import digest as digests
from bot.routing.digest import DigestUsage, parse_digest
from bot.routing.doctor import Finding, Severity
from bot.text.i18n import CATALOGUES, t
from bot.text.render import (
    MAX_VALUE,
    Html,
    clip,
    error_text,
    esc,
    outcome_text,
    pbx_error_text,
    plan_text,
    split_text,
    tr,
)
from bot.text.views import doctor_text, numbers_lines
from handlers.common import help_text
from handlers.numbers import _plan_line
from handlers.routing import _schedule_text
from pbx import errors as pbx_errors
from pbx.models import Destination, ProviderSummary, RegistrationState, RegistrationStatus, Route
from sandbox.telegram import MAX_TEXT, ApiError, plain_text, utf16_len

LONG = "Ж" * 4000 + "</code>" * 143  # a 5,000-character name
HOSTILE = ["</code>", "<b>", "&", "<a href=x>", "</code><b>& x<a href=x>", LONG]
LANGS = ["ru", "en"]


def telegram_parts(text: str) -> list[str]:
    """What Telegram would show: the text as the bot sends it (split at the limit),
    each part checked as sendMessage checks it. Returns the parts' plain texts."""
    assert isinstance(text, Html), f"not built as Html: {text[:80]!r}"
    shown = []
    for part in split_text(text):
        try:
            plain = plain_text(part, "HTML")
        except ApiError as exc:  # pragma: no cover - the failure this test exists for
            pytest.fail(f"{exc.description}: {part[:200]!r}")
        assert utf16_len(plain) <= MAX_TEXT
        assert plain.strip()
        shown.append(plain)
    return shown


def one_message(text: str) -> str:
    """A text the bot sends as one message (no split): valid and within the limit as it is."""
    assert isinstance(text, Html), f"not built as Html: {text[:80]!r}"
    try:
        plain = plain_text(text, "HTML")
    except ApiError as exc:  # pragma: no cover
        pytest.fail(f"{exc.description}: {text[:200]!r}")
    assert utf16_len(plain) <= MAX_TEXT, utf16_len(plain)
    return plain


def shows(value: str, plain: str) -> bool:
    return clip(value) in plain or value[:200] in plain


# ---------------------------------------------------------------------- the type itself


def test_html_escapes_what_is_not_markup_and_keeps_what_is():
    assert esc("<b>&") == "&lt;b&gt;&amp;" and isinstance(esc("x"), Html)
    assert esc(esc("<b>")) == "&lt;b&gt;"  # never twice
    assert Html("<b>x</b>") + "<i>" == "<b>x</b>&lt;i&gt;"
    assert "<i>" + Html("<b>x</b>") == "&lt;i&gt;<b>x</b>"
    assert Html("\n").join(["<a>", esc("<b>")]) == "&lt;a&gt;\n&lt;b&gt;"
    assert all(isinstance(p, Html) for p in esc("a\nb").split("\n"))
    assert tr("tg.pbx.bound", "en", pbx="<b>") == "This chat now works on PBX &lt;b&gt;."
    assert tr("tg.pbx.bound", "en", pbx=esc("<b>")) == "This chat now works on PBX &lt;b&gt;."
    assert tr("tg.cancel.usage", "en") == "Usage: /cancel &lt;plan&gt;"  # the template's text is text
    assert len(tr("tg.pbx.bound", "en", pbx="x" * 5000)) < MAX_VALUE + 100  # one value is clipped


def test_a_hard_cut_never_splits_an_entity():
    text = esc("&" * 3000)  # 15,000 characters of markup, one line
    parts = split_text(text)
    assert len(parts) > 1 and all(isinstance(p, Html) for p in parts)
    assert "".join(plain_text(p, "HTML") for p in parts) == "&" * 3000


# ---------------------------------------------------------------------- every catalogue text


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_every_catalogue_text_with_hostile_values(lang, value):
    for key, template in CATALOGUES[lang].items():
        names = set(re.findall(r"{(\w+)}", template))
        plain = one_message(tr(key, lang, **dict.fromkeys(names, value)))
        expected = t(key, lang, **dict.fromkeys(names, clip(value)))
        # sandbox/telegram/ unescapes twice ("&amp;amp;" shows as "&"; Telegram shows "&amp;")
        assert plain in (expected, html.unescape(expected)), key
        if names:
            assert shows(value, plain), key


# ---------------------------------------------------------------------- plan cards, outcomes


def hostile_plan(value: str) -> Plan:
    provider = {
        "id": "SIP-1",
        "username": value,
        "host": value,
        "port": 5060,
        "transport": value,
        "description": value,
        "manualattributes": f"[endpoint]\ncontext={value}\n{value}",
    }
    route = {"id": 3, "number": value, "providerid": "SIP-1", "extension": value}
    changed_provider = {**provider, "manualattributes": "", "description": "x"}
    changed_route = {**route, "providerid": None, "extension": "201", "number": "1"}
    steps = [
        Step(StepKind.CREATE_PROVIDER, None, provider, "new_account", value, value),
        Step(StepKind.UPDATE_PROVIDER, provider, changed_provider, "recipe_context", value, value),
        Step(StepKind.DELETE_PROVIDER, provider, None, "remove_account", value, value),
        Step(StepKind.CREATE_ROUTE, None, {**route, "providerid": "@new:" + value}, "route_new_account"),
        Step(StepKind.UPDATE_ROUTE, route, changed_route, "reroute", value, value),
        Step(StepKind.DELETE_ROUTE, route, None, "drop_bound_route", value, value),
    ]
    notes = ["recipe_applied", "login_without_route", "recipe_kept"]
    return Plan(value, PlanKind.ADD, steps, "f", host=value, notes=notes, needs_secret=[value, value])


STATUSES = [k.split(".", 1)[1] for k in CATALOGUES["en"] if k.startswith("status.")]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_plan_cards_in_every_state(lang, value):
    plan = hostile_plan(value)
    names = {value: value, "201": value}
    for status in [None, *STATUSES]:
        text = plan_text(
            plan,
            lang,
            plan_id=value[:20],
            destinations=names,
            providers={"SIP-1": value},
            status=status,
            tally=Tally(have=0, need=1),
            html=True,
        )
        shown = "\n".join(telegram_parts(text))
        assert shows(value, shown)
    plain = plan_text(plan, lang, plan_id="abc123", destinations=names)  # the CLI's: no markup
    assert value in plain and not isinstance(plain, Html)


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_outcomes(lang, value):
    leftover = {"step": 1, "kind": value, "record": value, "error": value}
    for outcome in (
        {"error": value, "failed_step": 2},
        {"error": value, "leftovers": [leftover, leftover]},
        {"error": "interrupted"},
        {"registration": {value: "registered", "847900": "rejected"}},
    ):
        shown = "\n".join(telegram_parts(outcome_text(None, outcome, lang, html=True)))
        if outcome.get("error") != "interrupted":
            assert shows(value, shown)


# ---------------------------------------------------------------------- refusals and errors


def pbx_failures(value: str) -> list[pbx_errors.PbxError]:
    where = f"{value}: GET /sip-providers/{value}"
    return [
        pbx_errors.PbxMalformed(f"{where}: the PBX answered something unexpected"),
        pbx_errors.PbxUnreachable(f"{where}: ConnectError: {value}"),
        pbx_errors.PbxUnavailable(f"{where}: HTTP 502", status=502),
        pbx_errors.PbxTimeout(f"{where}: no answer in time"),
        pbx_errors.PbxRateLimited(f"{where}: HTTP 429"),
        pbx_errors.PbxAuthError(f"{where}: {value}", messages=[value]),
        pbx_errors.PbxForbidden(f"{where}: {value}", messages=[value]),
        pbx_errors.PbxUnsupported(f"{where}: 404 without an API answer"),
        pbx_errors.PbxNotFound(f"{where}: {value}", messages=[value]),
        pbx_errors.PbxValidationError(f"{where}: {value}", messages=[value]),
        pbx_errors.PbxConflict(f"{where}: {value}", messages=[value]),
        pbx_errors.PbxError(value),
    ]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_refusals_and_errors(lang, value):
    errors: list[Exception] = [
        PlanError("login_exists", login=value, host=value, provider_id=value),
        PlanError("no_destination", query=value, candidates=[(value, value)]),
        PlanError("ambiguous_number", number=value, hosts=[value, value]),
        ChangeError("unknown_pbx", pbx=value, known=value),
        ChangeError("pbx_unreachable", plan=value, error=value),
        ChangeError("locked", plan=value, logins=value, who=value, since=value),
        RuntimeError(value),
        *pbx_failures(value),
    ]
    for text in (
        f"/addnumber zadarma {value} → IVR",
        f"/addnumber {value} 1 → IVR",
        f"/route {value}",
        value,
    ):
        try:
            parse(text)
        except UsageError as exc:
            errors.append(exc)
    for exc in errors:
        plain = one_message(error_text(exc, lang, html=True))
        if isinstance(exc, PlanError | ChangeError | RuntimeError):
            assert shows(value, plain), exc
    malformed = one_message(pbx_error_text(pbx_failures("office")[0], lang, html=True))
    assert "GET /sip-providers/office" in malformed and "\n" not in malformed


# ---------------------------------------------------------------------- views, doctor, trace, digest


class HostilePbx:
    def __init__(self, value: str):
        self.name = value
        self.value = value

    async def list_providers(self):
        v = self.value
        return [ProviderSummary(id="SIP-1", username=v, host=v, description=v, note=v)]

    async def list_routes(self):
        v = self.value
        return [
            Route(id=2, number=v, providerid="SIP-1", extension=v),
            Route(id=3, number=v, extension="201"),
        ]

    async def default_route(self):
        return Route(id=1, extension=self.value)

    async def registration_statuses(self):
        return {"SIP-1": RegistrationStatus(id="SIP-1", state=RegistrationState.REJECTED)}

    async def destinations(self):
        return [Destination(value="201", name=self.value)]


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
async def test_numbers(lang, value):
    lines = await numbers_lines(HostilePbx(value), lang, html=True)
    shown = "\n".join(telegram_parts(Html("\n").join(lines)))
    assert shows(value, shown)
    plain = await numbers_lines(HostilePbx(value), lang)  # the CLI: plain text, unchanged
    assert value in "\n".join(plain) and "&lt;" not in "\n".join(plain)


DOCTOR_CODES = sorted(
    {k.split(".")[1] for k in CATALOGUES["en"] if k.startswith("doctor.") and k.endswith(".title")}
)
TRACE_KEYS = sorted(k.split(".", 1)[1] for k in CATALOGUES["en"] if k.startswith("trace."))


def params_of(key: str, value: str) -> dict[str, str]:
    return dict.fromkeys(re.findall(r"{(\w+)}", CATALOGUES["en"][key]), value)


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_doctor_and_trace(lang, value):
    findings = [
        Finding(
            code,
            severity,
            value,
            {**params_of(f"doctor.{code}.title", value), **params_of(f"doctor.{code}.why", value)},
        )
        for code in DOCTOR_CODES
        for severity in (Severity.ERROR,)
    ]
    shown = "\n".join(telegram_parts(doctor_text(value, findings, lang)))
    assert shows(value, shown)
    one_message(doctor_text(value, [], lang))
    lines = [tr("trace.header", lang, pbx=value, number=value)]
    lines += [tr(f"trace.{key}", lang, **params_of(f"trace.{key}", value)) for key in TRACE_KEYS]
    assert shows(value, "\n".join(telegram_parts(Html("\n").join(lines))))


def hostile_digest(value: str, *, reachable: bool = True) -> digests.Digest:
    now = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
    digest = digests.Digest(value, now - timedelta(days=1), now)
    line = digests.NumberLine(value, value, value, "rejected", 300, value, "default", 3)
    digest.numbers = [line, digests.NumberLine(value, "", value, "registered", None, value, "dial", 1)] * 30
    digest.changes = [digests.Change(now, "abc123", "applied", "add", value, value)] * 3
    digest.findings = [
        Finding(code, Severity.WARNING, value, params_of(f"doctor.{code}.title", value))
        for code in DOCTOR_CODES
    ]
    digest.waiting = [SimpleNamespace(id="abc123", status="proposed", command=value, proposer_name=value)]
    if not reachable:
        digest.reachable, digest.error = False, value
        digest.failure = pbx_failures(value)[0]
    return digest


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_digest_text(lang, value):
    tz = ZoneInfo("Europe/Moscow")
    for digest in (hostile_digest(value), hostile_digest(value, reachable=False)):
        shown = "\n".join(telegram_parts(digests.render(digest, lang, tz)))
        assert shows(value[:80], shown)
        plain = digests.render(digest, lang, tz, html=False)  # the CLI's text: no markup
        assert ("&lt;" not in plain and "&amp;" not in plain) or "&amp;" in value
    table = digests.numbers_table(hostile_digest(value), lang).decode()
    assert value in table and "&lt;" not in table.replace(value, "")


# ---------------------------------------------------------------------- handler texts


def settings():
    return load_settings(
        None,
        pbx={"office": {"url": "http://127.0.0.1:9", "api_key": "k" * 32}},
        telegram={"token": "1:x"},
        policy={"admins": [1], "approvers": [2], "operators": [3], "viewers": [4]},
    )


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("value", HOSTILE, ids=["code", "b", "amp", "a", "mix", "long"])
def test_handler_texts(lang, value):
    services = SimpleNamespace(settings=settings())
    for user in (1, 2, 3, 4):
        plain = one_message(help_text(services, user, lang))
        assert "/numbers" in plain and ("/route <" in plain) == (user != 4)
    one_message(tr("tg.start", lang) + "\n\n" + help_text(services, 1, lang))
    now = datetime(2026, 11, 26, 9, 0)
    rows = [
        SimpleNamespace(
            id="abc123",
            status=s,
            kind="add",
            proposer_name=value,
            proposer_id=7,
            updated_at=now,
            command=value,
        )
        for s in STATUSES
    ]
    lines = [tr("tg.history.header", lang, n=len(rows))] + [_plan_line(r, lang, UTC) for r in rows]
    assert shows(value[:80], "\n".join(telegram_parts(Html("\n").join(lines))))
    for period, weekday in (("daily", None), ("weekly", 0)):
        row = SimpleNamespace(hour=9, minute=0, quiet=True, period=period, weekday=weekday, timezone=value)
        assert shows(value, one_message(_schedule_text(row, lang)))
    for args in (f"daily {value}", f"weekly {value} 09:00", f"tz {value}", value, f"quiet {value}"):
        with pytest.raises(DigestUsage) as caught:
            parse_digest(args)
        exc = caught.value
        key = "digest.usage" if exc.code == "usage" else f"digest.{exc.code}"
        one_message(tr(key, lang, **exc.params))
    for key in (
        "tg.secret.ask_login",
        "tg.secret.ask_plan",
        "tg.secret.received",
        "tg.secret.picked",
        "tg.card.waiting_secret",
        "tg.secret.start_me",
    ):
        assert shows(value, one_message(tr(key, lang, **params_of(key, value))))
