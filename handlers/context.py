"""Helpers the routers share: the chat's PBX."""

from __future__ import annotations

from aiogram.types import Message

from bot.text.render import tr


async def need_pbx(message: Message, pbx: str | None, lang: str) -> bool:
    if pbx is None:
        await message.answer(tr("tg.no_pbx", lang))
        return False
    return True
