"""The routing digest: per PBX, each number -> account -> registration -> where
its calls go; what changed since the last digest and who changed it; the
doctor's findings; inbound calls per number over the period; plans waiting
for approval. Data first (build), text second (render), a PNG for weeks.

A PBX that cannot be reached gets a line saying so; the rest still goes out.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from bot.errors import DigestUsage
from bot.plans.snapshot import Snapshot, SnapshotReader
from bot.text.i18n import t
from bot.text.render import lines_of, pbx_error_text, texts
from pbx.budget import Priority, at
from pbx.errors import PbxError
from pbx.models import CdrRecord, RegistrationStatus, Route
from storage.tables import DigestScheduleRow

from .doctor import Evidence, Finding, Severity, diagnose
from .drift import DRIFT_EVENT, DriftEvent, event_line
from .rules import number_key
from .trace import Tracer

if TYPE_CHECKING:
    from bot.services import Services
    from storage.aio import AsyncRepos
    from storage.repos import Repos
    from storage.tables import PlanRow

CHANGE_EVENTS = ("applied", "rolled_back", "failed")
DRIFT_SHOWN = 30  # drift events a digest lists at most
COMPACT_OVER = 40  # more numbers than this: list those in trouble and the busiest, attach the rest
TOP_BUSIEST = 10
CDR_LIMIT = 20_000  # records read per digest at most


@dataclass(frozen=True)
class NumberLine:
    login: str
    phone: str
    host: str
    state: str  # registration state, or "disabled"
    state_minutes: int | None
    destination: str  # where a call to it ends up (by trace), as a name
    outcome: str  # dial | default | not_found | no_account
    calls: int

    @property
    def ok(self) -> bool:
        return self.state in ("registered", "disabled") and self.outcome in ("dial", "no_account")


@dataclass(frozen=True)
class Change:
    at: datetime
    plan_id: str
    event: str
    kind: str
    command: str
    who: str


@dataclass
class Digest:
    pbx: str
    since: datetime
    until: datetime
    reachable: bool = True
    error: str = ""
    failure: PbxError | None = None  # why the PBX could not be read, when it could not
    numbers: list[NumberLine] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    drift: list[DriftEvent] = field(default_factory=list)  # changed outside the bot (bot/routing/watch.py)
    findings: list[Finding] = field(default_factory=list)
    waiting: list[PlanRow] = field(default_factory=list)  # open plans
    calls_by_day: dict[str, dict[date, int]] = field(default_factory=dict)  # login -> day -> calls
    calls_total: int = 0

    @property
    def state(self) -> str:
        """What quiet mode compares: the numbers' routing and the findings."""
        blob = json.dumps(
            [[n.login, n.state, n.destination, n.outcome] for n in self.numbers]
            + [[f.code, f.subject] for f in self.findings],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def wrong(self) -> bool:
        return not self.reachable or any(f.severity is Severity.ERROR for f in self.findings)


@dataclass
class Readings:
    """What a digest reads from the PBX; None when the PBX did not answer."""

    snapshot: Snapshot | None = None
    registration: dict[str, RegistrationStatus] = field(default_factory=dict)
    default: Route | None = None
    records: list[CdrRecord] = field(default_factory=list)
    error: str = ""
    failure: PbxError | None = None


async def read(
    pbx: Any, reader: SnapshotReader, *, since: datetime, until: datetime, tz: ZoneInfo | None = None
) -> Readings:
    """Every account in full, registrations, the default route, and the CDR of the
    period (MikoPBX keeps call times in its own local time: `tz`)."""
    try:
        snapshot, registration, default = await asyncio.gather(
            reader.read(every_host=True), reader.registrations(), pbx.default_route()
        )
    except PbxError as exc:
        return Readings(error=str(exc), failure=exc)
    records = []
    try:
        start, end = (since.astimezone(tz), until.astimezone(tz)) if tz else (since, until)
        window = {"date_from": f"{start:%Y-%m-%d %H:%M:%S}", "date_to": f"{end:%Y-%m-%d %H:%M:%S}"}
        async for record in pbx.iter_cdr(page_size=1000, **window):
            records.append(record)
            if len(records) >= CDR_LIMIT:
                break
    except PbxError:
        records = []  # calls are evidence; the rest of the digest stands without them
    return Readings(snapshot, registration, default, records)


def compose(
    readings: Readings,
    store: Repos,
    name: str,
    *,
    since: datetime,
    until: datetime,
    phone_dids: Mapping[str, str] | None = None,
) -> Digest:
    """The digest from what was read and the audit trail (no PBX calls here)."""
    digest = Digest(name, since, until)
    plans = {row.id: row for row in store.plans.find(pbx=name, limit=500)}
    for e in store.audit.since(name, since, CHANGE_EVENTS):
        row = plans.get(e.plan_id or "")
        who = e.actor_name or str(e.actor_id or "")
        digest.changes.append(
            Change(e.at, e.plan_id or "", e.event, row.kind if row else "", row.command if row else "", who)
        )
    digest.drift = [
        DriftEvent.from_detail(e.detail, e.at) for e in store.audit.since(name, since, (DRIFT_EVENT,))
    ]
    digest.waiting = [r for r in plans.values() if r.status in ("proposed", "approved")]
    if readings.snapshot is None:
        digest.reachable, digest.error, digest.failure = False, readings.error, readings.failure
        return digest
    records = readings.records
    evidence = Evidence(
        readings.registration,
        {r.did for r in records if r.did},
        [(r.from_account, r.did) for r in records if r.did],
        default=readings.default,
        phone_dids=phone_dids or {},
    )
    tracer = Tracer(readings.snapshot, readings.default)  # one for the doctor and the numbers
    digest.findings = diagnose(readings.snapshot, evidence, tracer=tracer)
    _numbers(digest, tracer, readings.snapshot, readings.registration, records)
    return digest


@at(Priority.REPORT)
async def build(
    pbx: Any,
    reader: SnapshotReader,
    store: Repos | AsyncRepos,
    name: str,
    *,
    since: datetime,
    until: datetime,
    tz: ZoneInfo,
    phone_dids: Mapping[str, str] | None = None,
) -> Digest:
    """Read the PBX and put the digest together: composing (the audit trail, a
    trace of every number) runs off the event loop, on the store's own threads."""
    readings = await read(pbx, reader, since=since, until=until, tz=tz)
    sync = store.sync if hasattr(store, "sync") else store  # an AsyncRepos's Repos, or Repos
    return await asyncio.to_thread(
        compose, readings, sync, name, since=since, until=until, phone_dids=phone_dids
    )


def _numbers(digest: Digest, tracer: Tracer, snapshot: Snapshot, registration: dict, records: list) -> None:
    key_to_login: dict[str, str] = {}
    for p in snapshot.details.values():
        if p.username:
            key_to_login[number_key(p.username)] = p.username
            if p.note and number_key(p.note).startswith("+"):
                key_to_login[number_key(p.note)] = p.username
    per_login: Counter[str] = Counter()
    by_day: dict[str, Counter[date]] = defaultdict(Counter)
    for record in records:
        login = key_to_login.get(number_key(record.did or record.dst_num or ""))
        if login is None:
            continue
        per_login[login] += 1
        try:
            day = datetime.fromisoformat(record.start).date()
        except ValueError:
            continue
        by_day[login][day] += 1
    digest.calls_total = sum(per_login.values())
    digest.calls_by_day = {login: dict(days) for login, days in by_day.items()}
    for p in sorted(snapshot.details.values(), key=lambda p: (p.host, p.username)):
        status = registration.get(p.id)
        state = "disabled" if p.disabled else (status.state.value if status else "unknown")
        minutes = (status.state_duration // 60) if status and status.state_duration is not None else None
        traced = tracer.trace(p.username) if p.username else None
        destination = ""
        outcome = "no_account"
        if traced is not None:
            outcome = traced.outcome
            if traced.destination:
                destination = tracer.names.get(traced.destination, traced.destination)
        digest.numbers.append(
            NumberLine(
                p.username,
                p.note if number_key(p.note).startswith("+") else "",
                p.host,
                state,
                minutes,
                destination,
                outcome,
                per_login.get(p.username, 0),
            )
        )


def _duration(minutes: int | None, lang: str) -> str:
    if minutes is None:
        return ""
    if minutes >= 2 * 24 * 60:
        return t("digest.days", lang, n=minutes // (24 * 60))
    if minutes >= 120:
        return t("digest.hours", lang, n=minutes // 60)
    return t("digest.minutes", lang, n=minutes)


def number_line(n: NumberLine, lang: str, *, html: bool = True) -> str:
    _t = texts(html)
    icon = {"registered": "✅", "disabled": "⏸"}.get(n.state, "❌")
    state = t(f"state.{n.state}", lang) + (f" {_duration(n.state_minutes, lang)}" if n.state_minutes else "")
    where = (
        n.destination
        if n.outcome == "dial"
        else t(f"digest.outcome.{n.outcome}", lang, destination=n.destination)
    )
    who = n.login + (f" ({n.phone})" if n.phone else "")
    return _t(
        "digest.number",
        lang,
        icon=icon,
        number=who,
        host=n.host,
        state=state,
        destination=where,
        calls=n.calls,
    )


def numbers_table(digest: Digest, lang: str) -> bytes:
    """Every number, one per line (the file a big PBX's digest attaches)."""
    return "\n".join(number_line(n, lang, html=False) for n in digest.numbers).encode()


def render(digest: Digest, lang: str, tz: ZoneInfo, *, html: bool = True) -> str:
    """The digest as text for a phone (`Html` unless html=False); split it with render.split_text."""
    _t = texts(html)
    period = f"{digest.since.astimezone(tz):%d.%m %H:%M} – {digest.until.astimezone(tz):%d.%m %H:%M}"
    lines = [_t("digest.header", lang, pbx=digest.pbx, period=period)]
    if digest.failure is not None:
        lines.append(_t("digest.pbx_failed", lang, error=pbx_error_text(digest.failure, lang, html=html)))
    elif not digest.reachable:
        lines.append(_t("digest.unreachable", lang, error=digest.error))
    else:
        lines.append(_t("digest.numbers", lang, n=len(digest.numbers), calls=digest.calls_total))
        shown = digest.numbers
        if len(shown) > COMPACT_OVER:
            # a big PBX: the numbers that need a look, and the busiest; the full list goes as a file
            trouble = [n for n in shown if not n.ok]
            busiest = sorted((n for n in shown if n.ok and n.calls), key=lambda n: -n.calls)[:TOP_BUSIEST]
            lines.append(_t("digest.compact", lang, ok=len(shown) - len(trouble), trouble=len(trouble)))
            shown = trouble[:COMPACT_OVER] + busiest
        lines += [number_line(n, lang, html=html) for n in shown]
    lines.append("")
    if digest.changes:
        lines.append(_t("digest.changes", lang, n=len(digest.changes)))
        for c in digest.changes:
            lines.append(
                _t(
                    "digest.change",
                    lang,
                    at=f"{c.at.astimezone(tz):%d.%m %H:%M}",
                    plan=c.plan_id,
                    status=t(f"status.{c.event}", lang),
                    command=(c.command or "")[:80],
                    who=c.who,
                )
            )
    else:
        lines.append(_t("digest.no_changes", lang))
    if digest.drift:
        lines.append(_t("digest.drift", lang, n=len(digest.drift)))
        for e in digest.drift[:DRIFT_SHOWN]:
            lines.append(event_line(e, lang, at=f"{e.noticed_at.astimezone(tz):%d.%m %H:%M}", html=html))
        if len(digest.drift) > DRIFT_SHOWN:
            lines.append(_t("drift.more_events", lang, n=len(digest.drift) - DRIFT_SHOWN))
    else:
        lines.append(_t("digest.no_drift", lang))
    if digest.reachable:
        if digest.findings:
            lines.append(_t("digest.findings", lang, n=len(digest.findings)))
            for f in digest.findings:
                title = t(f"doctor.{f.code}.title", lang, **f.params)  # plain: escaped as a whole below
                lines.append(f"  {t(f'doctor.severity.{f.severity.value}', lang)} {title}")
        else:
            lines.append(_t("digest.no_findings", lang))
    if digest.waiting:
        lines.append(_t("digest.waiting", lang, n=len(digest.waiting)))
        for row in digest.waiting:
            lines.append(
                _t(
                    "digest.waiting_plan",
                    lang,
                    plan=row.id,
                    status=t(f"status.{row.status}", lang),
                    command=(row.command or "")[:80],
                    who=row.proposer_name,
                )
            )
    return lines_of(lines, html)


def chart_days(digest: Digest, tz: ZoneInfo | None = None) -> list[date]:
    """Every day of the digest's period (in `tz`) and of its data, in order."""

    def local(moment: datetime) -> date:
        return (moment.astimezone(tz) if tz is not None and moment.tzinfo else moment).date()

    data = {d for counts in digest.calls_by_day.values() for d in counts}
    first = min([local(digest.since), *data])
    last = max([local(digest.until - timedelta(microseconds=1)), *data])
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def chart_png(digest: Digest, lang: str = "en", *, top: int = 12, tz: ZoneInfo | None = None) -> bytes | None:
    """Inbound calls per number per day, as a PNG (matplotlib's Agg: no display needed)."""
    if not digest.calls_by_day:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    days = chart_days(digest, tz)
    busiest = sorted(digest.calls_by_day, key=lambda login: -sum(digest.calls_by_day[login].values()))[:top]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        # one group of bars per day of the period, zeros included: one day of data reads as one
        # day, not as a date axis stretched around a single point
        width = 0.8 / len(busiest)
        for i, login in enumerate(busiest):
            counts = digest.calls_by_day[login]
            xs = [x + (i - (len(busiest) - 1) / 2) * width for x in range(len(days))]
            ax.bar(xs, [counts.get(d, 0) for d in days], width=width, label=login)
        ax.set_xticks(range(len(days)), [f"{d:%d.%m}" for d in days])
        ax.set_xlim(-0.6, len(days) - 0.4)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(t("digest.chart_title", lang, pbx=digest.pbx))
        ax.set_ylabel(t("digest.chart_calls", lang))
        ax.legend(fontsize="small", ncol=2)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(fig)


def period_bounds(period: str, now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime, str]:
    """The period a digest run covers, ending now, and its key (one digest per chat and key)."""
    local = now.astimezone(tz)
    if period == "weekly":
        year, week, _ = local.isocalendar()
        return now - timedelta(days=7), now, f"weekly:{year}-W{week:02d}"
    if period == "daily":
        return now - timedelta(days=1), now, f"daily:{local:%Y-%m-%d}"
    return now - timedelta(days=1), now, f"now:{local:%Y-%m-%dT%H:%M:%S.%f}"


# ---------------------------------------------------------------------- the /digest grammar

WEEKDAYS = {
    "mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6,
    "пн": 0, "вт": 1, "ср": 2, "чт": 3, "пт": 4, "сб": 5, "вс": 6,
}  # fmt: skip


@dataclass(frozen=True)
class DigestCommand:
    action: str  # now | daily | weekly | off | quiet | show | tz
    hour: int = 0
    minute: int = 0
    weekday: int | None = None
    quiet: bool | None = None
    timezone: str | None = None


def _time(text: str) -> tuple[int, int]:
    hour, sep, minute = text.partition(":")
    if sep and hour.isdigit() and minute.isdigit() and 0 <= int(hour) <= 23 and 0 <= int(minute) <= 59:
        if len(minute) == 2:
            return int(hour), int(minute)
    raise DigestUsage("bad_time", value=text[:20])


def parse_digest(args: str) -> DigestCommand:
    """`/digest` arguments: nothing (post now), `daily HH:MM`, `weekly <day> HH:MM`,
    `off`, `quiet on|off`, `tz Europe/Samara`, `status`."""
    if args.split()[:1] and args.split()[0].lower() == "tz" and len(args.split()) == 2:
        name = args.split()[1]
        try:
            ZoneInfo(name)
        except (ValueError, KeyError, OSError):
            raise DigestUsage("bad_tz", value=name[:40]) from None
        return DigestCommand("tz", timezone=name)
    words = args.lower().split()
    if not words:
        return DigestCommand("now")
    head, rest = words[0], words[1:]
    if head == "daily" and len(rest) == 1:
        hour, minute = _time(rest[0])
        return DigestCommand("daily", hour, minute)
    if head == "weekly" and len(rest) == 2:
        if rest[0] not in WEEKDAYS:
            raise DigestUsage("bad_day", value=rest[0][:20])
        hour, minute = _time(rest[1])
        return DigestCommand("weekly", hour, minute, WEEKDAYS[rest[0]])
    if head == "off" and not rest:
        return DigestCommand("off")
    if head == "quiet" and rest in (["on"], ["off"]):
        return DigestCommand("quiet", quiet=rest[0] == "on")
    if head == "status" and not rest:
        return DigestCommand("show")
    raise DigestUsage("usage")


async def schedule_row(
    services: Services, chat_id: int, pbx: str, command: DigestCommand, by: int
) -> DigestScheduleRow:
    """The row for `/digest daily|weekly ...`, keeping the chat's quiet setting and time zone."""
    current = await services.db.schedules.get(chat_id)
    return DigestScheduleRow(
        chat_id=chat_id,
        pbx=pbx,
        period=command.action,
        weekday=command.weekday,
        hour=command.hour,
        minute=command.minute,
        timezone=current.timezone if current else services.settings.timezone,
        quiet=current.quiet if current else False,
        created_by=by,
    )
