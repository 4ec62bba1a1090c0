"""A long answer (/numbers on 300 accounts, /plans, /history, /doctor) is one
message plus a file, never several messages eating a group's 20 a minute."""

from __future__ import annotations

import html
import re

from aiogram.types import BufferedInputFile, InlineKeyboardMarkup, Message

from bot.text.render import TELEGRAM_LIMIT, Html, esc, split_text, tr, utf16_len

from .progress import Announcer, answer_in_place

_TAG = re.compile(r"<[^>]+>")


def plain(text: str) -> str:
    """The text of an HTML message, for a .txt file."""
    return html.unescape(_TAG.sub("", text))


async def answer_long(
    message: Message,
    text: Html,
    *,
    lang: str,
    filename: str,
    reply_markup: InlineKeyboardMarkup | None = None,
    announcer: Announcer | None = None,
) -> None:
    """Answer with `text`; when it is longer than one message: its beginning, a
    line saying the rest is in the file, and the whole text as `filename` (plain text is escaped).
    With an `announcer` whose notice was posted, the (first) answer is written over the notice."""
    text = esc(text)
    if utf16_len(text) <= TELEGRAM_LIMIT:
        if announcer is not None:
            await answer_in_place(announcer, text, reply_markup=reply_markup)
        else:
            await message.answer(text, reply_markup=reply_markup)
        return
    total = text.count("\n") + 1
    probe = tr("tg.delivery.rest_in_file", lang, more=total, filename=filename)
    head = split_text(text, TELEGRAM_LIMIT - utf16_len(probe) - 2)[0]
    note = tr("tg.delivery.rest_in_file", lang, more=total - head.count("\n") - 1, filename=filename)
    if announcer is not None:
        await answer_in_place(announcer, Html(head + "\n\n" + note), reply_markup=reply_markup)
    else:
        await message.answer(head + "\n\n" + note, reply_markup=reply_markup)
    await message.answer_document(BufferedInputFile(plain(text).encode(), filename=filename))
