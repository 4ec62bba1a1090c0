"""Buttons under a plan card: approve (or apply, where the proposer may approve
alone), reject, cancel. Every press is checked against the plan, its version
and the policy; a second press counts once; simultaneous presses apply once."""

from __future__ import annotations

import asyncio

from aiogram import Bot, F, Router
from aiogram.types import CallbackQuery

from bot.plans.changes import Actor, ChangeError, Next
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import error_text

from .buttons import PlanAction, PlanButton, outdated
from .cards import apply_and_report, refresh_card
from .errors import popup

RECORDING_WAITS = 50  # x 0.1 s


async def pressed(
    query: CallbackQuery, callback_data: PlanButton, bot: Bot, services: Services, actor: Actor, lang: str
) -> None:
    changes = services.changes
    row = await changes.row(callback_data.plan)
    message = query.message
    for _ in range(RECORDING_WAITS):  # pressed the moment the card came: where it is is being recorded
        if row is None or row.message_id is not None:
            break
        await asyncio.sleep(0.1)
        row = await changes.row(callback_data.plan)
    if (
        row is None
        or message is None
        or row.chat_id != message.chat.id
        or row.message_id != message.message_id
    ):
        await changes.record("forged_button", actor, data=query.data)
        await query.answer(t("tg.button.unknown", lang), show_alert=True)
        return
    try:
        match callback_data.action:
            case PlanAction.APPROVE:
                row, tally = await changes.approve(actor, row.id, version=callback_data.version)
                await query.answer(t("tg.button.counted", lang, have=tally.have, need=tally.need))
            case PlanAction.REJECT:
                row = await changes.reject(actor, row.id)
                await query.answer(t("tg.button.rejected", lang))
            case PlanAction.CANCEL:
                row = await changes.cancel(actor, row.id)
                await query.answer(t("tg.button.cancelled", lang))
    except ChangeError as exc:  # the pop-up at once (the press waits for it), then the card as it is now
        await popup(query, error_text(exc, lang))
        await refresh_card(bot, services, row)
        return
    await refresh_card(bot, services, row)
    if await changes.next_step(row) is Next.APPLY:
        await apply_and_report(bot, services, row, actor)


async def unknown_button(query: CallbackQuery, services: Services, actor: Actor, lang: str) -> None:
    if outdated(query.data):  # ours, in a format no longer made: said politely, not taken for a forgery
        await query.answer(t("tg.button.outdated", lang), show_alert=True)
        return
    await services.changes.record("forged_button", actor, data=(query.data or "")[:64])
    await query.answer(t("tg.button.unknown", lang), show_alert=True)


def router() -> Router:
    """A fresh router (a router belongs to one dispatcher)."""
    r = Router(name="approvals")
    r.callback_query.register(pressed, PlanButton.filter())
    r.callback_query.register(unknown_button, F.data)
    return r
