"""SIP passwords and CSV files: only in a private chat, deleted as soon as read.

A password goes to the plan it answers: a reply to the bot's question names the
plan (and the login, or "the next one missing"); else the plan whose deep link
(`start=pw-<plan>`) the user opened last; else the one login waiting. With
several waiting and nothing to tell them apart, the bot asks which with
buttons and holds the password sealed (never in callback data) until the pick.
A user's messages here are handled one at a time, in order.

Every private text that is no command is deleted, used or not. In a group, a
text that is the sealed password of an open plan of the chat's PBX (whoever
posts it: compared in constant time) is deleted and the password dropped from
its plan; a short line from a proposer who owes a password is deleted too.
Files are deleted wherever they come from, whatever their size. Each of these
is audited by event name, never with the password.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiogram import BaseMiddleware, Bot, F, Router
from aiogram.exceptions import TelegramBadRequest, TelegramForbiddenError
from aiogram.types import (
    CallbackQuery,
    Document,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    TelegramObject,
)

from bot.errors import BotError, ChangeError
from bot.plans.changes import Actor, Next
from bot.plans.commands import decode_csv, parse_csv
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import error_text, esc

from .buttons import DROP, SecretPick
from .cards import apply_and_report, ask_secret, ask_secrets, card_language, refresh_card
from .context import need_pbx
from .numbers import propose_and_post

log = logging.getLogger("pbxbot.secrets")
MAX_CSV_BYTES = 2 * 1024 * 1024
GROUP_GUESS_CHARS = 64  # a proposer's one-line group message this short may be the password they owe


class PrivateTurns(BaseMiddleware):
    """A user's private messages, one at a time in the order they came: two quick
    passwords go to the first and then the next login, never both to one. An
    update middleware, so the turn is taken before anything is awaited."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        message = getattr(event, "message", None)
        if (
            message is None
            or message.chat.type != "private"
            or message.from_user is None
            or ((message.text or "").startswith("/") and message.reply_to_message is None)
        ):  # commands run side by side: a slow /numbers never holds up a /whoami
            return await handler(event, data)
        user = message.from_user.id
        lock, users = self._locks.get(user, (asyncio.Lock(), 0))
        self._locks[user] = (lock, users + 1)
        try:
            async with lock:  # asyncio.Lock is first come, first served
                return await handler(event, data)
        finally:
            lock, users = self._locks[user]
            if users == 1:
                del self._locks[user]
            else:
                self._locks[user] = (lock, users - 1)


async def _delete(message: Message) -> bool:
    try:
        await message.delete()
    except TelegramBadRequest as exc:
        log.warning("could not delete a message that may hold a secret: %s", exc.message)
        return False
    return True


async def _audit(
    services: Services, actor: Actor, event: str, plan_id: str | None = None, **detail: Any
) -> None:
    await services.changes.record(event, actor, plan_id=plan_id, **detail)


async def private_text(message: Message, bot: Bot, services: Services, actor: Actor, lang: str) -> None:
    deleted = await _delete(message)  # first: a password must not stay in the chat, used or not
    password = message.text or ""  # as typed: the validator refuses outer spaces rather than guess
    answered = message.reply_to_message
    replied_to = answered.message_id if answered is not None else None
    candidates = await services.changes.secrets.candidates(actor.id, replied_to)
    if not candidates:
        await _audit(services, actor, "secret_unused", reason="nothing_waiting", deleted=deleted)
        await message.answer(t("tg.secret.nothing_waiting", lang))
    elif len(candidates) > 1:
        await _hold(message, services, actor, password, candidates, lang)
    else:
        plan_id, login = candidates[0]
        await _bind(bot, services, actor, plan_id, login, password, lang)
    if not deleted:
        await message.answer(t("tg.secret.delete_yourself", lang))


async def _hold(
    message: Message,
    services: Services,
    actor: Actor,
    password: str,
    candidates: list[tuple[str, str | None]],
    lang: str,
) -> None:
    """Several logins wait: keep the password sealed and ask which one it is."""
    secrets = services.changes.secrets
    hold, choices = await secrets.hold(actor.id, password, candidates)

    def button(text: str, choice: int) -> list[InlineKeyboardButton]:
        return [InlineKeyboardButton(text=text, callback_data=SecretPick(hold=hold, choice=choice).pack())]

    rows = [
        button(t("tg.secret.choice", lang, login=login, id=plan_id), i)
        for i, (plan_id, login) in enumerate(choices)
    ]
    rows.append(button(t("tg.secret.choice_none", lang), DROP))
    sent = await message.answer(
        t("tg.secret.which", lang), reply_markup=InlineKeyboardMarkup(inline_keyboard=rows)
    )
    await secrets.hold_asked_in(hold, sent.message_id)
    await _audit(services, actor, "secret_held", choices=len(choices))


async def _bind(
    bot: Bot, services: Services, actor: Actor, plan_id: str, login: str | None, password: str, lang: str
) -> None:
    """The password goes to the plan (the login, or its next missing one); then ask
    for what is still missing, refresh the card, apply when everything is in."""
    changes = services.changes
    try:
        login, replaced = await changes.add_secret(actor, plan_id, login, password)
    except BotError as exc:  # not the error handler's answer: the refusal is audited and said as "not used"
        if exc.code == "plan_closed":
            await changes.secrets.forget_prompts(plan_id)  # its questions and link point nowhere now
        await _audit(services, actor, "secret_unused", plan_id, reason=exc.code)
        await bot.send_message(actor.id, t("tg.secret.unused", lang, why=error_text(exc, lang, html=True)))
        return
    key = "tg.secret.replaced" if replaced else "tg.secret.received"
    await bot.send_message(actor.id, t(key, lang, login=esc(login), id=plan_id))
    row = await changes.row(plan_id)
    if row is None:  # plans are never deleted, and add_secret has just found it
        raise ChangeError("no_plan", plan=plan_id)
    if await changes.missing_secrets(row):
        await ask_secrets(bot, services, row, lang)
    await refresh_card(bot, services, row)
    if await changes.next_step(row) is Next.APPLY:
        await apply_and_report(bot, services, row, actor)


async def picked(
    query: CallbackQuery, callback_data: SecretPick, bot: Bot, services: Services, actor: Actor, lang: str
) -> None:
    secrets = services.changes.secrets
    choice = None if callback_data.choice == DROP else callback_data.choice
    taken = await secrets.take_held(callback_data.hold, actor.id, choice)
    if taken is None:
        await _audit(services, actor, "secret_pick_gone", hold=callback_data.hold)
        await query.answer(t("tg.secret.pick_gone", lang), show_alert=True)
        return
    await query.answer()
    if callback_data.choice == DROP:
        await _audit(services, actor, "secret_dropped")
        text = t("tg.secret.dropped", lang)
    else:
        plan_id, login = taken.choices[callback_data.choice]
        text = t("tg.secret.picked", lang, login=esc(login), id=plan_id)
    if taken.message_id is not None:
        try:
            await bot.edit_message_text(text=text, chat_id=actor.id, message_id=taken.message_id)
        except TelegramBadRequest as exc:
            log.info("could not edit the question: %s", exc.message)
    if callback_data.choice == DROP:
        return
    await _audit(services, actor, "secret_picked", plan_id, login=login)
    password = secrets.open(taken)
    await _bind(bot, services, actor, plan_id, login or None, password, lang)


async def group_text(
    message: Message, bot: Bot, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    """A sealed password of an open plan, posted by anyone, or a short line from a
    proposer who owes one: deleted, with a warning to change it."""
    text = (message.text or "").strip()
    if not text:
        return
    pasted = await services.changes.pasted_secret(pbx, text) if pbx else None
    if pasted is not None:
        await _pasted(message, bot, services, actor, *pasted, lang)
        return
    if "\n" in text or len(text) > GROUP_GUESS_CHARS or not await services.changes.awaiting_secret(actor.id):
        return
    deleted = await _delete(message)
    await _audit(services, actor, "secret_in_group", deleted=deleted)
    key = "tg.secret.leaked_deleted" if deleted else "tg.secret.leaked"
    await message.answer(t(key, lang, bot=services.bot_username))


async def _pasted(
    message: Message, bot: Bot, services: Services, actor: Actor, row: Any, login: str, lang: str
) -> None:
    """The password is exposed: delete it, drop it from its plan, ask the proposer for a new one."""
    deleted = await _delete(message)
    dropped = await services.changes.secrets.drop_exposed(row, login)
    await _audit(
        services,
        actor,
        "secret_pasted_in_group",
        row.id,
        login=login,
        deleted=deleted,
        dropped=dropped,
        by_proposer=actor.id == row.proposer_id,
    )
    key = "tg.secret.pasted_deleted" if deleted else "tg.secret.pasted"
    await message.answer(t(key, lang, login=esc(login), id=row.id, bot=services.bot_username))
    if not dropped:
        return
    await refresh_card(bot, services, row)
    proposer_lang = card_language(services, row)
    try:
        await bot.send_message(
            row.proposer_id, t("tg.secret.exposed", proposer_lang, login=esc(login), id=row.id)
        )
    except (TelegramForbiddenError, TelegramBadRequest) as exc:
        log.info("cannot tell %s: %s", row.proposer_id, exc.message)
        return
    await ask_secret(bot, services, row, login, proposer_lang)


def _refusal(message: Message, doc: Document, pbx: str | None) -> str | None:
    """Why a file is not read (it is deleted all the same), or None."""
    if message.chat.type != "private":
        return "group"
    if pbx is None:
        return "no_pbx"
    if (doc.file_size or 0) > MAX_CSV_BYTES:
        return "too_big"
    if not (message.caption or "").strip():
        return "no_provider"
    return None


async def document(
    message: Message, bot: Bot, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    """A CSV of numbers (login,password,destination[,phone]); the caption names the provider.
    Any file is deleted once read or refused: it may hold passwords."""
    doc = message.document
    if doc is None:  # the router passes documents only
        return
    reason = _refusal(message, doc, pbx)
    data = None
    try:
        if reason is None:
            data = await bot.download(doc.file_id)
    finally:
        deleted = await _delete(message)
        await _audit(
            services, actor, "file_deleted", reason=reason or "read", deleted=deleted, size=doc.file_size
        )
    yourself = "" if deleted else " " + t("tg.secret.delete_yourself", lang)
    if reason == "group":
        await message.answer(t("tg.csv.private_only", lang) + yourself)
        return
    if reason == "no_pbx":
        await need_pbx(message, pbx, lang)
        return
    if reason == "too_big":
        await message.answer(t("tg.csv.too_big_deleted", lang) + yourself)
        return
    if reason == "no_provider":
        await message.answer(t("cli.csv_needs_provider", lang) + yourself)
        return
    assert data is not None and pbx is not None  # no refusal: the chat has a PBX, the file was read
    intent, passwords = parse_csv(decode_csv(data.read()), (message.caption or "").strip())
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
    # a reply to the bot's question is a password even when it starts with "/" (and no command took it)
    r.message.register(
        private_text,
        F.chat.type == "private",
        F.text,
        ~F.text.startswith("/") | F.reply_to_message,
    )
    r.message.register(group_text, F.chat.type.in_({"group", "supergroup"}), F.text, ~F.text.startswith("/"))
    r.message.register(document, F.document)
    r.callback_query.register(picked, SecretPick.filter())
    return r
