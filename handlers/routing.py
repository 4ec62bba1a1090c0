"""/doctor (with Fix buttons), /trace, /map, /digest. A refusal (a /digest that does not
parse, the PBX failing) is answered by handlers/errors.py."""

from __future__ import annotations

import asyncio

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject
from aiogram.types import (
    BufferedInputFile,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
)

from bot.plans.changes import Actor
from bot.plans.commands import FixHost, parse_number
from bot.plans.policy import Action, may
from bot.routing.digest import WEEKDAYS, parse_digest, schedule_row
from bot.routing.doctor import Finding, Severity, examine
from bot.routing.routemap import read_map
from bot.routing.trace import Tracer
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import Html, tr
from bot.text.routemap import draw
from bot.text.views import doctor_text, trace_text

from .buttons import FixButton
from .context import need_pbx
from .longanswer import answer_long
from .numbers import propose_and_post
from .progress import Announcer


class TelegramPoster:
    def __init__(self, bot: Bot):
        self.bot = bot

    async def text(self, chat_id: int, text: str) -> None:
        await self.bot.send_message(chat_id, text)

    async def png(self, chat_id: int, data: bytes, caption: str) -> None:
        await self.bot.send_photo(chat_id, BufferedInputFile(data, filename="calls.png"), caption=caption)

    async def document(self, chat_id: int, data: bytes, filename: str, caption: str) -> None:
        await self.bot.send_document(chat_id, BufferedInputFile(data, filename=filename), caption=caption)


def fix_keyboard(findings: list[Finding], lang: str) -> InlineKeyboardMarkup | None:
    fixes: dict[str, str] = {}
    for f in findings:
        if f.fix_key and f.fix_key not in fixes and len(fixes) < 8:
            fixes[f.fix_key] = getattr(f.fix, "host", "")
    if not fixes:
        return None
    rows = [
        [
            InlineKeyboardButton(
                text=t("doctor.fix_button", lang, host=host)[:60], callback_data=FixButton(key=key).pack()
            )
        ]
        for key, host in fixes.items()
    ]
    return InlineKeyboardMarkup(inline_keyboard=rows)


async def doctor(message: Message, services: Services, pbx: str | None, lang: str, actor: Actor) -> None:
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    handle = services.changes.pbxs[pbx]
    announcer = Announcer(message, lang)
    with announcer.listening():
        _, findings = await examine(handle.client, handle.reader, phone_dids=services.settings.phone_dids)
    keyboard = (
        fix_keyboard(findings, lang) if may(services.settings.policy, actor.id, Action.PROPOSE) else None
    )
    text = doctor_text(pbx, findings, lang)
    await answer_long(
        message, text, lang=lang, filename=f"doctor-{pbx}.txt", reply_markup=keyboard, announcer=announcer
    )


async def map_(message: Message, services: Services, pbx: str | None, lang: str, actor: Actor) -> None:
    """The routing map as a picture, then the doctor's findings as text (with their Fix buttons)."""
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    handle = services.changes.pbxs[pbx]
    rmap = await read_map(handle.client, handle.reader, phone_dids=services.settings.phone_dids)
    findings = rmap.findings
    if rmap.paths:
        png = await asyncio.to_thread(draw, rmap, lang)  # matplotlib: off the event loop
        count = {s: sum(1 for f in findings if f.severity is s) for s in (Severity.ERROR, Severity.WARNING)}
        caption = tr(
            "map.caption",
            lang,
            pbx=pbx,
            numbers=len(rmap.paths),
            errors=count[Severity.ERROR],
            warnings=count[Severity.WARNING],
        )
        await message.answer_photo(BufferedInputFile(png, filename=f"map-{pbx}.png"), caption=caption)
    else:
        await message.answer(tr("map.empty", lang, pbx=pbx))
    keyboard = (
        fix_keyboard(findings, lang) if may(services.settings.policy, actor.id, Action.PROPOSE) else None
    )
    text = doctor_text(pbx, findings, lang)
    await answer_long(message, text, lang=lang, filename=f"doctor-{pbx}.txt", reply_markup=keyboard)


async def fix_pressed(
    query: CallbackQuery,
    callback_data: FixButton,
    bot: Bot,
    services: Services,
    actor: Actor,
    pbx: str | None,
    lang: str,
) -> None:
    await query.answer()
    if pbx is None or query.message is None:
        return
    handle = services.changes.pbxs[pbx]
    _, findings = await examine(handle.client, handle.reader, phone_dids=services.settings.phone_dids)
    fix = next(
        (f.fix for f in findings if isinstance(f.fix, FixHost) and f.fix_key == callback_data.key), None
    )
    if fix is None:
        await query.message.answer(tr("doctor.fix_gone", lang))
        return
    await propose_and_post(
        bot,
        services,
        query.message,
        actor,
        pbx,
        fix,
        lang,
        command=f"/doctor fix {fix.host}",
    )


async def trace_(
    message: Message, command: CommandObject, services: Services, pbx: str | None, lang: str
) -> None:
    number = (command.args or "").strip()
    if not number:
        await message.answer(tr("trace.usage", lang))
        return
    number = parse_number(number, "trace")  # a phone in any spelling, as one number; else a login
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    handle = services.changes.pbxs[pbx]
    announcer = Announcer(message, lang)
    with announcer.listening():
        snapshot = await handle.reader.read(number=number)
    default = await handle.client.default_route()
    result = Tracer(snapshot, default).trace(number)
    text = trace_text(pbx, number, result, lang, html=True)
    await answer_long(message, text, lang=lang, filename="trace.txt", announcer=announcer)


async def digest(
    message: Message, command: CommandObject, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    parsed = parse_digest(command.args or "")
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    scheduler = services.scheduler
    if scheduler is None:  # set when the app starts, before polling or the webhook
        raise RuntimeError("the scheduler is not running")
    chat_id = message.chat.id
    if parsed.action == "now":
        with Announcer(message, lang).listening():  # a long read of the PBX is said at once
            await scheduler.run(chat_id, period="now", pbx=pbx, lang=lang)
        return
    if parsed.action != "show" and not may(services.settings.policy, actor.id, Action.CANCEL_OWN):
        await message.answer(tr("change.not_allowed", lang, action="digest"))
        return
    if parsed.action in ("daily", "weekly"):
        row = await schedule_row(services, chat_id, pbx, parsed, actor.id)
        await scheduler.set(row)
        await message.answer(_schedule_text(row, lang))
    elif parsed.action == "off":
        await scheduler.off(chat_id)
        await message.answer(tr("digest.off", lang))
    elif parsed.action == "tz":
        current = await services.schedule_of(chat_id)
        if current is None:  # a setting of a schedule: nothing to keep it in yet, and the user is told so
            await message.answer(tr("digest.setting_needs_schedule", lang, command=message.text or ""))
            return
        if parsed.timezone is None:  # parse_digest names the zone of every "tz" command
            raise AssertionError("a /digest tz command without a zone")
        current.timezone = parsed.timezone
        await scheduler.set(current)
        await message.answer(_schedule_text(current, lang))
    elif parsed.action == "quiet":
        current = await services.schedule_of(chat_id)
        if current is None:
            await message.answer(tr("digest.setting_needs_schedule", lang, command=message.text or ""))
            return
        current.quiet = bool(parsed.quiet)
        await scheduler.set(current)
        await message.answer(
            tr("digest.quiet", lang, state=t("digest.on" if current.quiet else "digest.off_word", lang))
        )
    else:
        current = await services.schedule_of(chat_id)
        await message.answer(_schedule_text(current, lang) if current else tr("digest.none", lang))


def _schedule_text(row, lang: str) -> Html:
    at = f"{row.hour:02d}:{row.minute:02d}"
    quiet = t("digest.quiet_suffix", lang) if row.quiet else ""
    if row.period == "weekly":
        names = [k for k, v in WEEKDAYS.items() if v == row.weekday]
        day = names[1] if lang == "ru" and len(names) > 1 else names[0]
        return tr("digest.scheduled_weekly", lang, day=day, at=at, tz=row.timezone, quiet=quiet)
    return tr("digest.scheduled_daily", lang, at=at, tz=row.timezone, quiet=quiet)


def router() -> Router:
    """A fresh router (a router belongs to one dispatcher)."""
    r = Router(name="routing")
    r.message.register(doctor, Command("doctor"))
    r.message.register(trace_, Command("trace"))
    r.message.register(map_, Command("map"))
    r.message.register(digest, Command("digest"))
    r.callback_query.register(fix_pressed, FixButton.filter())
    return r
