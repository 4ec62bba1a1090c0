"""Changes and views: /addnumber, /route, /removenumber, /password, /undo, /numbers,
/plans, /history, /cancel, and the "new password" button of a card whose
registration came back rejected. Thin: parse, call bot.plans.changes, render,
post; a refusal raised on the way is answered by handlers/errors.py."""

from __future__ import annotations

import asyncio
import logging
from datetime import tzinfo
from functools import partial

from aiogram import Bot, Router
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import Command, CommandObject
from aiogram.types import CallbackQuery, MaybeInaccessibleMessageUnion, Message

from bot.errors import UsageError
from bot.plans.changes import Actor, ChangeError, Next, Proposal
from bot.plans.commands import ChangePassword, Intent, parse, parse_number
from bot.plans.policy import Action, may
from bot.services import Services, local_time
from bot.text.i18n import t
from bot.text.render import Html, lines_of, tr
from bot.text.views import numbers_lines

from .buttons import NewPassword
from .cards import (
    apply_and_report,
    ask_secret,
    card_language,
    post_card,
    refresh_card,
    rejected_logins,
    render,
    tell_released,
)
from .context import need_pbx
from .longanswer import answer_long
from .progress import Announcer, answer_in_place

log = logging.getLogger("pbxbot.numbers")
AUDIT_WAIT = 1.0  # s: a proposal's audit rows wait for its card this long at most (Telegram may hold it)


async def propose_and_post(
    bot: Bot,
    services: Services,
    message: MaybeInaccessibleMessageUnion,
    actor: Actor,
    pbx: str,
    intent: Intent,
    lang: str,
    *,
    command: str,
    secrets: dict[str, str] | None = None,
) -> Proposal:
    """Propose, then post the card: in this chat, or, for a plan proposed in a
    private chat, in the PBX's approval group when there is one. A refusal (the
    core's or the PBX's) is answered by handlers/errors.py."""
    announcer = Announcer(message, lang)  # a long read says so at once; the card then takes its place
    with announcer.listening():
        proposal = await services.changes.propose(
            actor,
            pbx,
            intent,
            secrets=secrets,
            command=command,
            audit_later=True,
            # the card is made while the PBX answers, for a plan it then confirms
            card=lambda row, facts: render(services, row, card_language(services, row), facts),
        )
    try:
        return await _post(bot, services, message, actor, pbx, proposal, announcer, lang)
    finally:
        if proposal.row is not None:  # written after the card (see _post); if it never came to that, now
            await services.changes.write_audit(proposal.row.id)


async def _post(
    bot: Bot,
    services: Services,
    message: MaybeInaccessibleMessageUnion,
    actor: Actor,
    pbx: str,
    proposal: Proposal,
    announcer: Announcer,
    lang: str,
) -> Proposal:
    if proposal.row is None:
        await answer_in_place(announcer, tr("plan.empty", lang))
        return proposal
    chat_id = message.chat.id
    if message.chat.type == "private":
        groups = await services.approval_chats(pbx)
        if groups:
            chat_id = groups[0]
            await answer_in_place(announcer, tr("tg.card.posted_in_group", lang, id=proposal.row.id))
    placeholder = announcer.placeholder(chat_id)
    stored = proposal.row
    # the proposal's audit rows after the card, not beside it; or once it takes its time
    late: list[asyncio.Future[None]] = []
    write = partial(services.changes.write_audit, stored.id)
    timer = asyncio.get_running_loop().call_later(
        AUDIT_WAIT, lambda: late.append(asyncio.ensure_future(write()))
    )
    try:
        row = await post_card(
            bot,
            services,
            stored,
            chat_id,
            placeholder=placeholder,
            facts=proposal.facts,
            rendered=proposal.card,
        )
    finally:
        timer.cancel()
        await asyncio.gather(*late)
    await write()
    if row.message_id is None:  # the card could not be posted: the plan is released
        await tell_released(bot, row, [message.chat.id, actor.id], lang)
        return proposal
    missing = await services.changes.missing_secrets(row)
    if missing and not await ask_secret(bot, services, row, missing[0], lang):
        await message.answer(tr("tg.secret.start_me", lang, bot=services.bot_username, id=row.id))
    if await services.changes.next_step(row) is Next.APPLY:
        await apply_and_report(bot, services, row, actor)
    return proposal


async def change(
    message: Message, bot: Bot, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    intent = parse(message.text or "")
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    await propose_and_post(bot, services, message, actor, pbx, intent, lang, command=message.text or "")


async def password(
    message: Message, bot: Bot, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    """/password <login>: the new password is asked for in private once the card is up.
    One typed after the login is never taken: the message is deleted and the user told."""
    try:
        intent = parse(message.text or "")
    except UsageError as exc:
        if exc.code != "password_inline":
            raise
        try:
            await message.delete()
            deleted = True
        except TelegramBadRequest as bad:
            log.warning("could not delete a command that may hold a password: %s", bad.message)
            deleted = False
        await services.changes.record("secret_in_command", actor, deleted=deleted)
        await message.answer(tr("tg.password.inline_deleted" if deleted else "tg.password.inline", lang))
        return
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    await propose_and_post(bot, services, message, actor, pbx, intent, lang, command=message.text or "")


async def new_password(
    query: CallbackQuery, callback_data: NewPassword, bot: Bot, services: Services, actor: Actor, lang: str
) -> None:
    """The card's "new password for <login>" button: /password for that login, proposed
    by whoever pressed it, on the card's PBX (asked for in private like any password)."""
    row = await services.changes.row(callback_data.plan)
    message = query.message
    logins = rejected_logins(row) if row is not None else []
    if (
        row is None
        or message is None
        or row.chat_id != message.chat.id
        or row.message_id != message.message_id
        or not 0 <= callback_data.n < len(logins)
    ):
        await services.changes.record("forged_button", actor, data=(query.data or "")[:64])
        await query.answer(t("tg.button.unknown", lang), show_alert=True)
        return
    if not may(services.settings.policy, actor.id, Action.PROPOSE):
        raise ChangeError("not_allowed", action="password")  # answered as a pop-up
    await query.answer()
    login = logins[callback_data.n]
    intent = ChangePassword(login)
    await propose_and_post(bot, services, message, actor, row.pbx, intent, lang, command=f"/password {login}")


async def numbers(
    message: Message, command: CommandObject, services: Services, pbx: str | None, lang: str
) -> None:
    arg = (command.args or "").strip()
    only = parse_number(arg, "numbers") if arg else None  # `/numbers +7 (495) 123-45-67`: one number
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    lines = await numbers_lines(services.client(pbx), lang, html=True, only=only)
    await answer_long(message, lines_of(lines, html=True), lang=lang, filename=f"numbers-{pbx}.txt")


def _plan_line(row, lang: str, tz: tzinfo) -> Html:
    """One plan in /plans and /history; its time in the chat's zone, as on cards and digests."""
    when = local_time(row.updated_at, tz).strftime("%d.%m %H:%M")
    return tr(
        "tg.plan_line",
        lang,
        id=row.id,
        status=t(f"status.{row.status}", lang),
        kind=t(f"plan.kind.{row.kind}", lang),
        who=row.proposer_name or row.proposer_id,
        when=when,
        command=(row.command or "")[:80],
    )


async def plans(message: Message, services: Services, pbx: str | None, lang: str) -> None:
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    rows = await services.changes.open_plans(pbx)
    tz = await services.tz_of(message.chat.id)
    lines = [tr("tg.plans.header", lang, n=len(rows))] + [_plan_line(r, lang, tz) for r in rows]
    await answer_long(message, lines_of(lines, html=True), lang=lang, filename=f"plans-{pbx}.txt")


async def history(
    message: Message, command: CommandObject, services: Services, pbx: str | None, lang: str
) -> None:
    if (pbx := await need_pbx(message, pbx, lang)) is None:
        return
    arg = (command.args or "").strip()
    n = int(arg) if arg.isdigit() else 10
    rows = await services.changes.history(pbx, n)
    tz = await services.tz_of(message.chat.id)
    lines = [tr("tg.history.header", lang, n=len(rows))] + [_plan_line(r, lang, tz) for r in rows]
    await answer_long(message, lines_of(lines, html=True), lang=lang, filename=f"history-{pbx}.txt")


async def cancel(
    message: Message, command: CommandObject, bot: Bot, services: Services, actor: Actor, lang: str
) -> None:
    plan_id = (command.args or "").strip()
    if not plan_id:
        await message.answer(tr("tg.cancel.usage", lang))
        return
    row = await services.changes.cancel(actor, plan_id)
    await refresh_card(bot, services, row)
    await message.answer(tr("tg.cancel.done", lang, id=row.id))


def router() -> Router:
    """A fresh router (a router belongs to one dispatcher)."""
    r = Router(name="numbers")
    r.message.register(change, Command("addnumber", "route", "removenumber", "undo"))
    r.message.register(password, Command("password"))
    r.message.register(numbers, Command("numbers"))
    r.message.register(plans, Command("plans"))
    r.message.register(history, Command("history"))
    r.message.register(cancel, Command("cancel"))
    r.callback_query.register(new_password, NewPassword.filter())
    return r
