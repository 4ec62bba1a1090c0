"""SIP passwords and CSV files: only in a private chat, deleted as soon as read.

A password typed in a group is deleted at once (when the bot may) with a
warning to change it; it is never used. A CSV sent in a group is deleted too.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import Message

from bot.changes import Actor, ChangeError
from bot.commands import UsageError, parse_csv
from bot.i18n import t
from bot.render import error_text
from bot.services import Services
from storage.tables import AuditRow

from .cards import apply_and_report, ask_secret, refresh_card
from .context import need_pbx, reply
from .numbers import propose_and_post

log = logging.getLogger("pbxbot.secrets")
MAX_CSV_BYTES = 2 * 1024 * 1024


async def _delete(message: Message) -> bool:
    try:
        await message.delete()
    except TelegramBadRequest as exc:
        log.warning("could not delete a message that holds a secret: %s", exc.message)
        return False
    return True


async def private_text(message: Message, bot: Bot, services: Services, actor: Actor, lang: str) -> None:
    waiting = services.changes.awaiting_secret(actor.id)
    if not waiting:
        await message.answer(t("tg.not_understood", lang))
        return
    deleted = await _delete(message)  # first: the password must not stay in the chat
    row, missing = waiting[0]
    login = missing[0]
    try:
        services.changes.add_secret(actor, row.id, login, (message.text or "").strip())
    except ChangeError as exc:
        await message.answer(error_text(exc, lang, html=True))
        return
    await message.answer(t("tg.secret.received", lang, login=login, id=row.id))
    if not deleted:
        await message.answer(t("tg.secret.delete_yourself", lang))
    row = services.store.get_plan(row.id)
    if len(missing) > 1:
        await ask_secret(bot, services, row, missing[1], lang)
    await refresh_card(bot, services, row)
    if services.changes.ready(row):
        await apply_and_report(bot, services, row, actor)


async def group_text(message: Message, services: Services, actor: Actor, lang: str) -> None:
    """A proposer who owes a password and types a single word in the group: treat it as a leak."""
    text = (message.text or "").strip()
    if not services.changes.awaiting_secret(actor.id) or not text or len(text.split()) != 1:
        return
    deleted = await _delete(message)
    services.store.audit(AuditRow(actor_id=actor.id, event="secret_in_group", detail={"deleted": deleted}))
    key = "tg.secret.leaked_deleted" if deleted else "tg.secret.leaked"
    await message.answer(t(key, lang, bot=services.bot_username))


async def document(
    message: Message, bot: Bot, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    """A CSV of numbers (login,password,destination[,phone]); the caption names the provider."""
    if message.chat.type != "private":
        deleted = await _delete(message)
        await message.answer(
            t("tg.csv.private_only", lang) + ("" if deleted else " " + t("tg.secret.delete_yourself", lang))
        )
        return
    if not await need_pbx(message, pbx, lang):
        return
    doc = message.document
    if doc.file_size and doc.file_size > MAX_CSV_BYTES:
        await message.answer(t("tg.csv.too_big", lang))
        return
    provider = (message.caption or "").strip()
    if not provider:
        await _delete(message)
        await message.answer(t("cli.csv_needs_provider", lang))
        return
    data = await bot.download(doc.file_id)
    await _delete(message)  # it holds passwords
    try:
        intent, passwords = parse_csv(data.read().decode("utf-8-sig", errors="replace"), provider)
    except UsageError as exc:
        await reply(message, error_text(exc, lang, html=True))
        return
    await propose_and_post(
        bot,
        services,
        message,
        actor,
        pbx,
        intent,
        lang,
        command=f"CSV {doc.file_name or ''}",
        secrets=passwords,
    )


def router() -> Router:
    """A fresh router (a router belongs to one dispatcher)."""
    r = Router(name="secrets")
    r.message.register(private_text, F.chat.type == "private", F.text, ~F.text.startswith("/"))
    r.message.register(group_text, F.chat.type.in_({"group", "supergroup"}), F.text, ~F.text.startswith("/"))
    r.message.register(document, F.document)
    return r
