"""DriftWatch: what the mirror's refresher hands over when the PBX differs from what it held.

    watch = DriftWatch(services, notifier)
    refresher.on_drift = watch.observe        # async (before, after) -> None

Each drift event goes to the audit trail (`drift`; never a secret). When a drift
moves where a number's calls end (trace before vs after), the chats of the PBX
are told at once: one message for what one refresh found, at most one message a
chat every `interval` seconds (what comes meanwhile is held and sent together
when the interval is over), with a "Put back" button whose plan (`PutBack`, kind
`restore`) is proposed and approved like any other. The alert is an audit row
too (`drift_alert`): the button carries its id, and the intent is read from it.
`recent` serves /drift; the digest reads the `drift` rows itself.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from bot.plans.commands import Intent, PutBack, intent_from_dict, intent_to_dict
from bot.plans.snapshot import Snapshot
from bot.services import local_time
from bot.text.render import TELEGRAM_LIMIT, Html, lines_of, texts, tr, utf16_len
from storage.tables import AuditRow

from .drift import (
    DRIFT_EVENT,
    DriftEvent,
    OutcomeChange,
    diff,
    event_line,
    outcome_changes,
    outcome_line,
    put_back,
)

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger("pbxbot.drift")

ALERT_EVENT = "drift_alert"
ALERT_INTERVAL = 60.0  # seconds between two alerts to one chat
ALERT_LINES = 20  # outcome changes one alert lists at most
ALERT_LIMIT = TELEGRAM_LIMIT  # one message: the rest is in /drift


class Notifier(Protocol):
    async def drift_alert(self, chat_id: int, text: Html, alert_id: int | None, lang: str) -> None: ...


@dataclass
class _Pending:
    pbx: str
    changes: list[OutcomeChange] = field(default_factory=list)
    routes: dict[int, dict[str, Any]] = field(default_factory=dict)  # first seen wins: the oldest "before"
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    cannot: list[DriftEvent] = field(default_factory=list)

    def add(self, changes: list[OutcomeChange], intent: PutBack | None, cannot: list[DriftEvent]) -> None:
        self.changes += changes
        self.cannot += [c for c in cannot if (c.kind, c.key) not in {(x.kind, x.key) for x in self.cannot}]
        if intent is None:
            return
        for r in intent.routes:  # the oldest "before", the newest "after"
            kept_route = self.routes.setdefault(int(r["id"]), dict(r))
            if "after" in r:
                kept_route["after"] = r["after"]
        for a in intent.accounts:
            kept = self.accounts.setdefault(a["id"], {**a, "fields": {}, "after": {}})
            kept["fields"] = {**a["fields"], **kept["fields"]}
            kept["after"] = {**kept["after"], **a.get("after", {})}

    @property
    def intent(self) -> PutBack | None:
        if not self.routes and not self.accounts:
            return None
        return PutBack(tuple(self.routes.values()), tuple(self.accounts.values()))


async def record_drift(db: Any, before: Snapshot, after: Snapshot, now: datetime) -> list[DriftEvent]:
    """Name what changed outside the bot and keep each event in the audit trail (so the
    digest and /drift have it), telling no one: what every reader of the mirror does with
    drift it finds, the command line's too. `db`: the store (awaitable repos)."""
    events = diff(before, after, noticed_at=now)
    if events:
        await db.audit.add(
            *(AuditRow(at=now, pbx=after.pbx, event=DRIFT_EVENT, detail=e.to_detail()) for e in events)
        )
        log.info("drift on %s: %d event(s)", after.pbx, len(events))
    return events


class DriftWatch:
    def __init__(
        self, services: Services, notifier: Notifier | None = None, *, interval: float = ALERT_INTERVAL
    ):
        self.services = services
        self.notifier = notifier
        self.interval = interval
        self._sent: dict[int, float] = {}  # chat -> loop time of its last alert
        self._pending: dict[tuple[int, str], _Pending] = {}
        self._timers: dict[tuple[int, str], asyncio.Task[None]] = {}

    async def observe(self, before: Snapshot, after: Snapshot) -> list[DriftEvent]:
        """The refresher's hook: record each drift event, alert when calls end elsewhere."""
        changes = self.services.changes
        events = await record_drift(changes.db, before, after, changes.clock())
        if not events:
            return []
        pbx = after.pbx
        moved = outcome_changes(before, after, events)
        if moved:
            behind = [e for c in moved for e in c.events]
            intent, cannot = put_back(before, behind, after)
            for chat in await self.services.approval_chats(pbx):
                self._pending.setdefault((chat, pbx), _Pending(pbx)).add(moved, intent, cannot)
                await self._due(chat, pbx)
        return events

    async def _due(self, chat: int, pbx: str) -> None:
        loop = asyncio.get_running_loop()
        key = (chat, pbx)
        if key in self._timers:
            return  # a held alert goes out when the interval is over, with this one in it
        wait = self._sent.get(chat, -self.interval) + self.interval - loop.time()
        if wait <= 0:
            await self._send(chat, pbx)
            return

        async def later() -> None:
            await asyncio.sleep(wait)
            self._timers.pop(key, None)
            await self._send(chat, pbx)

        self._timers[key] = asyncio.create_task(later())

    async def flush(self) -> None:
        """Send every held alert now (the end of a test, a shutdown)."""
        for key, task in list(self._timers.items()):
            task.cancel()
            self._timers.pop(key, None)
            await self._send(*key)

    async def _send(self, chat: int, pbx: str) -> None:
        pending = self._pending.pop((chat, pbx), None)
        if pending is None or not pending.changes:
            return
        self._sent[chat] = asyncio.get_running_loop().time()
        changes = self.services.changes
        intent = pending.intent
        row = changes.ledger.event(
            ALERT_EVENT,
            None,
            None,
            pbx=pbx,
            chat_id=chat,
            numbers=sorted({c.number for c in pending.changes})[:50],
            put_back=intent_to_dict(intent) if intent else None,
        )
        await changes.db.audit.add(row)
        lang = self.services.settings.default_language
        text = alert_text(pbx, pending.changes, pending.cannot, lang, restorable=intent is not None)
        if self.notifier is not None:
            try:
                await self.notifier.drift_alert(chat, text, row.id if intent else None, lang)
            except Exception:  # a chat that cannot be told must not stop the refresher
                log.exception("drift alert to chat %s failed", chat)


def alert_text(
    pbx: str, changes: list[OutcomeChange], cannot: list[DriftEvent], lang: str, *, restorable: bool
) -> Html:
    _t = texts(True)
    numbers = len({c.number for c in changes})
    lines = [_t("drift.alert", lang, pbx=pbx, n=numbers)]
    lines += [outcome_line(c, lang) for c in changes[:ALERT_LINES]]
    if len(changes) > ALERT_LINES:
        lines.append(_t("drift.more_numbers", lang, n=len(changes) - ALERT_LINES))
    events = {(e.kind, e.key): e for c in changes for e in c.events}
    if events:
        lines.append(_t("drift.because", lang))
        lines += [event_line(e, lang) for e in list(events.values())[:ALERT_LINES]]
    if cannot:
        lines.append(_t("drift.cannot", lang))
        lines += [event_line(e, lang) for e in cannot[:ALERT_LINES]]
    last = tr("drift.put_back_hint" if restorable else "drift.nothing_to_put_back", lang)
    return lines_of([*_fitting(lines, last, lang), last], True)


def _fitting(lines: list[str], last: Html, lang: str) -> list[str]:
    """The lines that fit one Telegram message with `last` after them: an alert too long
    is refused by Telegram and lost (30 records with long names, a hostile description),
    so what does not fit is counted and left to /drift."""
    room = ALERT_LIMIT - utf16_len(last) - 1
    kept: list[str] = []
    for i, line in enumerate(lines):
        more = tr("drift.more_events", lang, n=len(lines) - i)
        if utf16_len(line) + 1 + utf16_len(more) + 1 > room:
            return [*kept, more]
        kept.append(line)
        room -= utf16_len(line) + 1
    return kept


async def recent(services: Services, pbx: str, *, limit: int = 20) -> list[DriftEvent]:
    """/drift: the newest drift events of a PBX, newest first."""
    rows = await services.db.audit.latest(pbx, [DRIFT_EVENT], limit=limit)
    return [DriftEvent.from_detail(r.detail, r.at) for r in rows]


async def put_back_intent(services: Services, pbx: str, alert_id: int) -> Intent | None:
    """The plan a "Put back" button proposes: read from its alert (None: not an alert of this PBX)."""
    row = await services.db.audit.get(alert_id)
    if row is None or row.event != ALERT_EVENT or row.pbx != pbx or not row.detail.get("put_back"):
        return None
    return intent_from_dict(dict(row.detail["put_back"]))


def recent_text(pbx: str, events: list[DriftEvent], lang: str, tz: Any) -> Html:
    _t = texts(True)
    if not events:
        return lines_of([_t("drift.none", lang, pbx=pbx)], True)
    lines = [_t("drift.header", lang, pbx=pbx, n=len(events))]
    lines += [event_line(e, lang, at=_at(e.noticed_at, tz)) for e in events]
    return lines_of(lines, True)


def _at(moment: datetime, tz: Any) -> str:
    return f"{local_time(moment, tz):%d.%m %H:%M}"
