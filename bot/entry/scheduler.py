"""APScheduler 3.11 wiring: digest schedules (kept in the database) and housekeeping.

Schedules are loaded from the database at start into a memory job store with
stable job ids (`digest:<chat>`), coalesced, with a misfire grace. Each run
first takes the (chat, period) row; only the run that took it posts, so two
processes (or a restart in the same minute) never post one digest twice.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.plans.mirror import MirrorRefresher
from bot.routing import digest as digests
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import split_text
from storage.tables import DigestScheduleRow, utcnow

log = logging.getLogger("pbxbot.scheduler")
MISFIRE_GRACE = 3600  # a digest up to an hour late still goes out (after a restart, say)


class Poster(Protocol):
    async def text(self, chat_id: int, text: str) -> None: ...
    async def png(self, chat_id: int, data: bytes, caption: str) -> None: ...
    async def document(self, chat_id: int, data: bytes, filename: str, caption: str) -> None: ...


@dataclass
class DigestRun:
    """What one scheduled digest run did."""

    posted: bool
    reason: str  # posted | taken (another run has this period) | quiet (nothing new)
    digest: digests.Digest | None = None


class Scheduler:
    def __init__(self, services: Services, poster: Poster, *, aps: AsyncIOScheduler | None = None):
        self.services = services
        self.poster = poster
        self.aps = aps or AsyncIOScheduler()

    # ------------------------------------------------------------------ jobs

    async def start(
        self, housekeeping: Callable[[], Awaitable[None]] | None = None, *, every: float = 60.0
    ) -> None:
        for row in await self.services.db.schedules.all():
            self._job(row)
        if housekeeping is not None:
            self.aps.add_job(
                housekeeping,
                "interval",
                seconds=every,
                id="housekeeping",
                max_instances=1,
                coalesce=True,
                replace_existing=True,
            )
        self.aps.start()

    def refresh_mirrors(self, refreshers: Iterable[MirrorRefresher]) -> None:
        """A round of each PBX mirror's refresher every `every` seconds (the owner only:
        replicas share the mirror in the database)."""
        for refresher in refreshers:
            self.aps.add_job(
                refresher.run_once,
                "interval",
                seconds=refresher.every,
                id=f"mirror:{refresher.reader.pbx.name}",
                max_instances=1,
                coalesce=True,
                replace_existing=True,
            )

    def shutdown(self) -> None:
        if self.aps.running:
            self.aps.shutdown(wait=False)
            self.aps = AsyncIOScheduler()  # a stopped APScheduler cannot start again

    async def sync(self) -> None:
        """Follow schedules set or dropped by other processes (the owner runs this every minute)."""
        rows = {f"digest:{row.chat_id}": row for row in await self.services.db.schedules.all()}
        for job in self.aps.get_jobs():
            if job.id.startswith("digest:") and job.id not in rows:
                job.remove()
        for job_id, row in rows.items():
            job = self.aps.get_job(job_id)
            if job is None or job.kwargs.get("stamp") != row.updated_at.isoformat():
                self._job(row)

    def _job(self, row: DigestScheduleRow) -> None:
        trigger = CronTrigger(
            hour=row.hour,
            minute=row.minute,
            day_of_week=row.weekday if row.period == "weekly" else None,
            timezone=ZoneInfo(row.timezone),
        )
        self.aps.add_job(
            self.run,
            trigger,
            args=(row.chat_id,),
            kwargs={"period": row.period, "stamp": row.updated_at.isoformat()},
            id=f"digest:{row.chat_id}",
            replace_existing=True,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE,
            max_instances=1,
        )

    async def set(self, row: DigestScheduleRow) -> None:
        row.updated_at = utcnow()
        await self.services.db.schedules.set(row)
        self._job(row)

    async def off(self, chat_id: int) -> bool:
        job = self.aps.get_job(f"digest:{chat_id}")
        if job is not None:
            job.remove()
        return await self.services.db.schedules.drop(chat_id)

    def next_run(self, chat_id: int) -> datetime | None:
        job = self.aps.get_job(f"digest:{chat_id}")
        return job.next_run_time if job is not None else None

    # ------------------------------------------------------------------ runs

    async def run(
        self,
        chat_id: int,
        *,
        period: str = "now",
        pbx: str | None = None,
        lang: str | None = None,
        now: datetime | None = None,
        stamp: str = "",  # the schedule row's version the job was made from (see sync)
    ) -> DigestRun:
        """One digest for a chat: take the (chat, period) row, build, post (or stay quiet)."""
        services = self.services
        store = services.db
        schedule = await store.schedules.get(chat_id)
        name = pbx or (schedule.pbx if schedule else await services.pbx_of_chat(chat_id, private=chat_id > 0))
        if name is None or name not in services.changes.pbxs:
            return DigestRun(False, "no_pbx")
        tz = ZoneInfo(schedule.timezone if schedule else services.settings.timezone)
        now = now or utcnow()
        since, until, key = digests.period_bounds(period, now, tz)
        run_id = await store.digests.claim(chat_id, key)
        if run_id is None:
            return DigestRun(False, "taken")
        last = await store.digests.last(chat_id, before=run_id)
        if last is not None and last.posted and period != "now" and last.at > since - timedelta(days=7):
            since = last.at  # "what changed since the last digest"
        handle = services.changes.pbxs[name]
        built = await digests.build(
            handle.client,
            handle.reader,
            store,
            name,
            since=since,
            until=until,
            tz=tz,
            phone_dids=services.settings.phone_dids,
        )
        quiet = schedule is not None and schedule.quiet and period != "now"
        if (
            quiet
            and not built.wrong
            and not built.changes
            and not built.drift
            and last is not None
            and last.state == built.state
        ):
            await store.digests.finish(run_id, posted=False, state=built.state)
            return DigestRun(False, "quiet", built)
        lang = lang or services.settings.default_language
        for part in split_text(digests.render(built, lang, tz)):
            await self.poster.text(chat_id, part)
        if built.reachable and len(built.numbers) > digests.COMPACT_OVER:
            table = digests.numbers_table(built, lang)
            await self.poster.document(chat_id, table, f"numbers-{name}.txt", t("digest.all_numbers", lang))
        if period == "weekly":
            chart = digests.chart_png(built, lang, tz=tz)
            if chart is not None:
                await self.poster.png(chat_id, chart, t("digest.chart", lang))
        await store.digests.finish(run_id, posted=True, state=built.state)
        return DigestRun(True, "posted", built)
