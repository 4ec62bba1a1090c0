"""Helpers the routers share: the chat's PBX."""

from __future__ import annotations

from aiogram.types import Message

from bot.text.render import tr


async def need_pbx(message: Message, pbx: str | None, lang: str) -> str | None:
    """The chat's PBX; None once the user is told the chat has none."""
    if pbx is None:
        await message.answer(tr("tg.no_pbx", lang))
    return pbx
