"""/drift (recent changes made outside the bot) and a drift alert's "Put back" button."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message

from bot.plans.changes import Actor
from bot.routing.watch import put_back_intent, recent, recent_text
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import Html, tr

from .buttons import DriftButton
from .context import need_pbx
from .longanswer import answer_long
from .numbers import propose_and_post


class DriftNotifier:
    """How DriftWatch tells a chat: the alert, with its "Put back" button when it has one."""

    def __init__(self, bot: Bot):
        self.bot = bot

    async def drift_alert(self, chat_id: int, text: Html, alert_id: int | None, lang: str) -> None:
        markup = None
        if alert_id is not None:
            button = InlineKeyboardButton(
                text=t("drift.put_back_button", lang), callback_data=DriftButton(alert=alert_id).pack()
            )
            markup = InlineKeyboardMarkup(inline_keyboard=[[button]])
        await self.bot.send_message(chat_id, text, reply_markup=markup)


async def drift(message: Message, services: Services, pbx: str | None, lang: str) -> None:
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    events = await recent(services, pbx)
    text = recent_text(pbx, events, lang, await services.tz_of(message.chat.id))
    await answer_long(message, text, lang=lang, filename=f"drift-{pbx}.txt")


async def put_back_pressed(
    query: CallbackQuery,
    callback_data: DriftButton,
    bot: Bot,
    services: Services,
    actor: Actor,
    pbx: str | None,
    lang: str,
) -> None:
    await query.answer()
    if pbx is None or query.message is None:
        return
    intent = await put_back_intent(services, pbx, callback_data.alert)
    if intent is None:
        await query.message.answer(tr("drift.put_back_gone", lang))
        return
    await propose_and_post(
        bot,
        services,
        query.message,
        actor,
        pbx,
        intent,
        lang,
        command=f"/drift put back {callback_data.alert}",
    )


def router() -> Router:
    """A fresh router (a router belongs to one dispatcher)."""
    r = Router(name="drift")
    r.message.register(drift, Command("drift"))
    r.callback_query.register(put_back_pressed, DriftButton.filter())
    return r
