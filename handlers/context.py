"""Helpers the routers share: replies split at Telegram's limit, the chat's PBX."""

from __future__ import annotations

from aiogram.types import MaybeInaccessibleMessageUnion, Message

from bot.text.render import Html, esc, split_text, tr


async def reply(message: MaybeInaccessibleMessageUnion, text: Html) -> None:
    """Answer in the message's chat, split at 4,096 characters (`Html`: plain text is escaped)."""
    text = esc(text)
    for part in split_text(text):
        await message.answer(part)


async def need_pbx(message: Message, pbx: str | None, lang: str) -> str | None:
    """The chat's PBX; None once the user is told the chat has none."""
    if pbx is None:
        await message.answer(tr("tg.no_pbx", lang))
    return pbx
