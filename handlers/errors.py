"""The one answer to an update no handler finished (`dp.errors`).

Handlers do not catch the core's refusals. An error of the tree (bot/errors.py)
or of the PBX that leaves a handler lands here and is answered once, worded by
`render.error_text` (escaped by construction): as a pop-up when it came from a
button press not answered yet, else in the chat, split at Telegram's limit.
The log gets one line with the update id (info for a refusal, warning for the
PBX's failure, which carries the call but never a body or a secret).

Anything else is a bug: the user hears "something went wrong on my side" with
the update id, and the log gets the update id and the exception
(bot/entry/logs.py masks any secret in it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from aiogram.types import CallbackQuery, ErrorEvent, InaccessibleMessage, Message

from bot.errors import BotError, expected
from bot.services import Services
from bot.text.i18n import pick_language, t
from bot.text.render import error_text, split_text, tr

log = logging.getLogger("pbxbot.errors")
POPUP_LIMIT = 200  # Telegram's limit for a callback answer's text


async def popup(query: CallbackQuery, text: str) -> None:
    """A press's answer as a pop-up (plain text, cut at Telegram's limit)."""
    await query.answer(text[:POPUP_LIMIT], show_alert=True)


def error_handler(services: Services) -> Callable[..., Awaitable[bool]]:
    """The `dp.errors` handler (bot/entry/app.py registers it on the Dispatcher)."""

    async def on_error(event: ErrorEvent, bot: Bot) -> bool:
        update, exc = event.update, event.exception
        message, query = update.message, update.callback_query
        kind, update_id = update.event_type, update.update_id
        told = expected(exc)
        if isinstance(exc, BotError):
            log.info("update %s (%s) refused: %s %s", update_id, kind, type(exc).__name__, exc.code)
        elif told:
            log.warning("update %s (%s): the PBX failed: %s", update_id, kind, exc)
        else:
            log.error("update %s (%s) failed: %s", update_id, kind, type(exc).__name__, exc_info=exc)
        source = query or message
        user = source.from_user if source else None
        lang = pick_language(user.language_code if user else None, services.settings.default_language)
        try:
            where: Message | InaccessibleMessage | None = message  # the message whose chat hears of it
            chat = (query.message if query is not None else message) if source else None
            tz = await services.tz_of(chat.chat.id if chat is not None else None)
            if query is not None:
                unexpected = t("tg.error.unexpected", lang, update=update_id)
                text = error_text(exc, lang, tz=tz) if told else unexpected
                try:
                    await popup(query, text)
                    return True
                except TelegramAPIError:  # answered already by the handler: say it in the chat
                    where = query.message
            if where is not None:
                html = (
                    error_text(exc, lang, html=True, tz=tz)
                    if told
                    else tr("tg.error.unexpected", lang, update=update_id)
                )
                topic = (
                    where.message_thread_id if isinstance(where, Message) and where.is_topic_message else None
                )
                for part in split_text(html):  # in its topic, as Message.answer sends
                    await bot.send_message(where.chat.id, part, message_thread_id=topic)
        except Exception:  # the answer itself failed (Telegram down, the chat gone): the log has it
            log.warning("update %s: could not tell the user of the failure", update_id, exc_info=True)
        return True

    return on_error
