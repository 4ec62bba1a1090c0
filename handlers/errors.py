"""The last word on an update no handler finished: the user gets one answer, the log
gets the update id and the exception (bot/entry/logs.py masks any secret in it).

A PBX failure that reached this far is answered with its one line (what kind of
failure, at which call); anything else with "something went wrong on my side"
and the update id to find it in the log. A button press is answered as a pop-up,
or, when the handler answered it already, with a message in its chat.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import ErrorEvent, InaccessibleMessage, Message

from bot.services import Services
from bot.text.i18n import pick_language, t
from bot.text.render import pbx_error_text, tr
from pbx.errors import PbxError

log = logging.getLogger("pbxbot.errors")
POPUP_LIMIT = 200  # Telegram's limit for a callback answer's text


def error_handler(services: Services) -> Callable[..., Awaitable[bool]]:
    """The `dp.errors` handler (bot/entry/app.py registers it on the Dispatcher)."""

    async def on_error(event: ErrorEvent, bot: Bot) -> bool:
        update, exc = event.update, event.exception
        message: Message | InaccessibleMessage | None = update.message
        query = update.callback_query
        kind = update.event_type
        log.error("update %s (%s) failed: %s", update.update_id, kind, type(exc).__name__, exc_info=exc)
        source = query or update.message
        user = source.from_user if source else None
        lang = pick_language(user.language_code if user else None, services.settings.default_language)
        pbx = exc if isinstance(exc, PbxError) else None
        params = {"update": update.update_id}
        try:
            if query is not None:
                text = pbx_error_text(pbx, lang) if pbx else t("tg.error.unexpected", lang, **params)
                try:
                    await query.answer(text[:POPUP_LIMIT], show_alert=True)
                    return True
                except TelegramAPIError:  # answered already by the handler: say it in the chat
                    message = query.message
            if message is not None:
                unexpected = tr("tg.error.unexpected", lang, **params)
                html = pbx_error_text(pbx, lang, html=True) if pbx else unexpected
                await bot.send_message(message.chat.id, html)
        except Exception:  # the answer itself failed (Telegram down, the chat gone): the log has it
            log.warning("update %s: could not tell the user of the failure", update.update_id, exc_info=True)
        return True

    return on_error
