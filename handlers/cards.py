"""The plan card: posted where the plan was proposed (or in the PBX's approval
group), edited in place as the plan moves, with versioned buttons that carry a
short plan id only. Plans too long for one message get a summary card and the
full plan as a document.

A card is owed: it is retried until it is posted (bounded by the plan's expiry);
a card that cannot be posted releases its plan (cancelled with the reason, its
logins free), so no plan is ever open with no card. Edits are retried too.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any, TypeVar

from aiogram import Bot
from aiogram.exceptions import (
    TelegramAPIError,
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import BufferedInputFile, ForceReply, InlineKeyboardButton, InlineKeyboardMarkup

from bot.plans.changes import APPLIED, APPLYING, OPEN, Actor, CardFacts, ChangeError, Outcome
from bot.plans.policy import Action, may
from bot.services import Services, local_time
from bot.text.i18n import t
from bot.text.render import TELEGRAM_LIMIT, Html, lines_of, outcome_text, plan_text, tr, utf16_len

if TYPE_CHECKING:  # the core hands rows over as plain data
    from storage.tables import PlanRow

from .buttons import NewPassword, PlanAction, PlanButton

log = logging.getLogger("pbxbot.cards")
PROGRESS_EVERY = 2.0  # seconds between progress edits of a long apply
EDIT_PATIENCE = 600.0  # seconds an edit of a card is retried while Telegram cannot take it
CARD_RELEASED = "card_undeliverable"  # the reason a plan is cancelled when its card cannot be posted
_TRANSIENT = (TelegramRetryAfter, TelegramServerError, TelegramNetworkError, TimeoutError)
T = TypeVar("T")


def card_language(services: Services, row: PlanRow, lang: str | None = None) -> str:
    return lang or services.settings.default_language


def alone(services: Services, row: PlanRow, facts: CardFacts) -> bool:
    """The policy lets the proposer approve alone: the card says Apply, not Approve."""
    policy = services.settings.policy
    need = facts.tally.need
    return policy.self_approve and may(policy, row.proposer_id, Action.APPROVE) and need <= 1


MAX_PASSWORD_BUTTONS = 5  # "new password for <login>" buttons under one card, at most


def rejected_logins(row: PlanRow) -> list[str]:
    """Logins of an applied plan whose registration came back rejected, sorted: the
    order a NewPassword button's `n` counts in."""
    if row.status != APPLIED:
        return []
    registration = (row.outcome or {}).get("registration") or {}
    return sorted(login for login, state in registration.items() if state == "rejected")


def _new_password_buttons(row: PlanRow, lang: str) -> InlineKeyboardMarkup | None:
    logins = rejected_logins(row)[:MAX_PASSWORD_BUTTONS]
    if not logins:
        return None
    rows = [
        [
            InlineKeyboardButton(
                text=t("tg.button.new_password", lang, login=login),
                callback_data=NewPassword(plan=row.id, n=n).pack(),
            )
        ]
        for n, login in enumerate(logins)
    ]
    return InlineKeyboardMarkup(inline_keyboard=rows)


async def keyboard(
    services: Services, row: PlanRow, lang: str, facts: CardFacts | None = None
) -> InlineKeyboardMarkup | None:
    if row.status not in OPEN:
        return _new_password_buttons(row, lang)
    facts = facts or await services.changes.card_facts(row)

    def button(action: PlanAction, key: str) -> InlineKeyboardButton:
        data = PlanButton(action=action, plan=row.id, version=row.version).pack()
        return InlineKeyboardButton(text=t(key, lang), callback_data=data)

    if alone(services, row, facts):
        rows = [
            [button(PlanAction.APPROVE, "tg.button.apply"), button(PlanAction.CANCEL, "tg.button.cancel")]
        ]
    else:
        rows = [
            [button(PlanAction.APPROVE, "tg.button.approve"), button(PlanAction.REJECT, "tg.button.reject")],
            [button(PlanAction.CANCEL, "tg.button.cancel")],
        ]
    if facts.missing and services.bot_username:
        url = f"https://t.me/{services.bot_username}?start=pw-{row.id}"
        rows.append([InlineKeyboardButton(text=t("tg.button.password", lang), url=url)])
    return InlineKeyboardMarkup(inline_keyboard=rows)


async def _lines_about(services: Services, row: PlanRow, lang: str, facts: CardFacts) -> list[Html]:
    lines = [tr("tg.card.proposer", lang, name=row.proposer_name or str(row.proposer_id))]
    if facts.approvers:
        lines.append(tr("tg.card.approved_by", lang, names=", ".join(facts.approvers)))
    missing = facts.missing if row.status in OPEN else []
    if missing:
        lines.append(tr("tg.card.waiting_secret", lang, logins=", ".join(missing)))
    if row.status in OPEN:
        expires = local_time(row.expires_at, await services.tz_of(row.chat_id)).strftime("%d.%m %H:%M")
        lines.append(tr("tg.card.expires", lang, at=expires))
    return lines


async def card_text(
    services: Services,
    row: PlanRow,
    lang: str,
    *,
    extra: str = "",
    summary: bool = False,
    facts: CardFacts | None = None,
) -> str:
    changes = services.changes
    facts = facts or await changes.card_facts(row)
    plan = changes.plan_of(row)
    plan.needs_secret = facts.missing if row.status in OPEN else []
    names = row.summary.get("names") or {}
    tally = facts.tally if row.status in OPEN else None
    if summary:
        body = _summary(plan, row, lang)
    else:
        body = plan_text(
            plan,
            lang,
            plan_id=row.id,
            destinations=names.get("destinations"),
            providers=names.get("providers"),
            status=row.status,
            tally=tally,
            html=True,
        )
    parts = [body, lines_of(await _lines_about(services, row, lang, facts), html=True)]
    outcome = outcome_text(None, row.outcome, lang, html=True) if row.status not in (*OPEN, APPLYING) else ""
    parts += [p for p in (outcome, extra) if p]
    return Html("\n\n").join(p for p in parts if p)  # `extra` (plain) is escaped here


def _summary(plan: Any, row: PlanRow, lang: str) -> str:
    counts: dict[str, int] = {}
    for step in plan.steps:
        counts[step.kind.value] = counts.get(step.kind.value, 0) + 1
    lines = [
        tr(
            "plan.header",
            lang,
            id=row.id,
            pbx=row.pbx,
            kind=t(f"plan.kind.{row.kind}", lang),
            steps=len(plan.steps),
        )
    ]
    for note in plan.notes:
        lines.append(tr(f"plan.note.{note}", lang, host=plan.host or ""))
    lines += [tr(f"tg.count.{kind}", lang, n=n) for kind, n in sorted(counts.items())]
    lines.append(tr("tg.card.full_plan_attached", lang))
    lines.append(tr("plan.status", lang, status=t(f"status.{row.status}", lang)))
    return lines_of(lines, html=True)


def fits(text: str) -> bool:
    return utf16_len(text) <= TELEGRAM_LIMIT


async def persist(
    call: Callable[[int], Awaitable[T]],
    chat_id: int,
    *,
    until: float,
    wanted: Callable[[], Awaitable[bool]] | None = None,
) -> tuple[T, int]:
    """`call(chat_id)` until it goes through: a 429 is waited out (`retry_after`), a
    5xx or a network error backs off (1, 2, 4 ... 60 s), a group that became a
    supergroup is followed to its new id; given up at `until` (monotonic) or once
    it is no longer `wanted`. Returns the result and the chat id it went to."""
    backoff = 1.0
    while True:
        try:
            return await call(chat_id), chat_id
        except TelegramMigrateToChat as exc:
            log.info("chat %s is now %s", chat_id, exc.migrate_to_chat_id)
            chat_id = exc.migrate_to_chat_id
            continue
        except _TRANSIENT as exc:
            wait = float(exc.retry_after) if isinstance(exc, TelegramRetryAfter) else backoff
            backoff = min(backoff * 2, 60.0)
            if time.monotonic() + wait > until or (wanted is not None and not await wanted()):
                raise
            log.warning("telegram did not take it (%s); again in %.0f s", type(exc).__name__, wait)
            await asyncio.sleep(wait)


def _seconds_left(services: Services, row: PlanRow) -> float:
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    return (expires - services.changes.clock()).total_seconds()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TelegramBadRequest | TelegramForbiddenError):
        return exc.message[:200]  # Telegram's own description
    return type(exc).__name__


async def release(services: Services, row: PlanRow, exc: BaseException) -> PlanRow:
    """The card could not be posted: the plan is cancelled with the reason and its logins freed."""
    try:
        released = await services.changes.release(row.id, CARD_RELEASED, error=_why(exc))
    except ChangeError:  # it ended meanwhile (cancelled, expired), or is being applied
        log.warning("the card of plan %s could not be posted (%s)", row.id, _why(exc))
        return await services.changes.row(row.id) or row
    log.warning("the card of plan %s could not be posted (%s): plan released", row.id, _why(exc))
    return released


@dataclass(frozen=True)
class Card:
    """A plan's card as sent: its text (the short one when the plan does not fit), buttons."""

    text: str
    summary: bool  # the plan itself goes as a document
    markup: InlineKeyboardMarkup | None


async def render(services: Services, row: PlanRow, lang: str, facts: CardFacts | None = None) -> Card:
    """The card of `row` in `lang` (see `card_language`)."""
    facts = facts or await services.changes.card_facts(row)
    text = await card_text(services, row, lang, facts=facts)
    summary = not fits(text)
    if summary:
        text = await card_text(services, row, lang, summary=True, facts=facts)
    return Card(text, summary, await keyboard(services, row, lang, facts))


async def post_card(
    bot: Bot,
    services: Services,
    row: PlanRow,
    chat_id: int,
    lang: str | None = None,
    *,
    placeholder: int | None = None,
    facts: CardFacts | None = None,
    rendered: Card | None = None,
) -> PlanRow:
    """Send the card (and the full plan as a document when it is too long); remember
    where it is. Retried until posted, at most until the plan expires; when it cannot
    be posted the plan is released and returned with no `message_id`. `placeholder`:
    a message of the bot's in `chat_id` (the notice of a long read) the card replaces."""
    lang = card_language(services, row, lang)
    until = time.monotonic() + max(0.0, _seconds_left(services, row))

    async def wanted() -> bool:
        current = await services.changes.row(row.id)
        return current is not None and current.status in OPEN

    try:
        card = rendered or await render(services, row, lang, facts)
        text, summary, markup = card.text, card.summary, card.markup
        if summary:
            full = plan_text(
                services.changes.plan_of(row),
                lang,
                plan_id=row.id,
                destinations=(row.summary.get("names") or {}).get("destinations"),
            )
            document = BufferedInputFile(full.encode(), filename=f"plan-{row.id}.txt")
            caption = t("tg.card.full_plan", lang, id=row.id)
            _, chat_id = await persist(
                lambda chat: bot.send_document(chat, document, caption=caption),
                chat_id,
                until=until,
                wanted=wanted,
            )
        message_id = None
        if placeholder is not None and not summary:
            message_id = await _in_place(bot, chat_id, placeholder, text, markup, until)
        if message_id is None:
            message, chat_id = await persist(
                lambda chat: bot.send_message(chat, text, reply_markup=markup),
                chat_id,
                until=until,
                wanted=wanted,
            )
            message_id = message.message_id
        _remember(services, (chat_id, message_id), _digest(text, markup))
    except (TelegramAPIError, TimeoutError) as exc:
        return await release(services, row, exc)
    except BaseException as exc:  # cancelled (shutdown) or a bug: the plan is not left without a card
        await release(services, row, exc)
        raise
    return await services.changes.card_posted(row.id, chat_id, message_id)


async def _in_place(
    bot: Bot, chat_id: int, message_id: int, text: str, markup: InlineKeyboardMarkup | None, until: float
) -> int | None:
    """The card written over the bot's message `message_id`; None when that cannot be (gone, moved)."""
    try:
        _, where = await persist(
            lambda chat: bot.edit_message_text(
                text, chat_id=chat, message_id=message_id, reply_markup=markup
            ),
            chat_id,
            until=until,
        )
    except TelegramBadRequest as exc:
        log.info("the notice %s could not become the card: %s", message_id, exc.message[:100])
        return None
    return message_id if where == chat_id else None


async def tell_released(bot: Bot, row: PlanRow, chat_ids: list[int], lang: str) -> None:
    """Tell the proposer their plan was released because its card could not be posted."""
    error = (row.outcome or {}).get("error") or ""
    for chat_id in dict.fromkeys(chat_ids):
        try:
            await bot.send_message(chat_id, tr("tg.delivery.card_released", lang, id=row.id, error=error))
            return
        except TelegramAPIError as exc:
            log.info("cannot tell %s that plan %s was released: %s", chat_id, row.id, type(exc).__name__)


async def refresh_card(
    bot: Bot,
    services: Services,
    row: PlanRow,
    *,
    extra: str = "",
    lang: str | None = None,
    patience: float = EDIT_PATIENCE,
) -> None:
    """Edit the card in place; "not modified" is success, a lost card is posted again.
    Retried for `patience` seconds while Telegram cannot take it. One refresh of a card
    at a time: read, draw, compare with what it shows, send and remember as one step, or
    a refresh drawn from older state could land last, or be skipped as "already shown"."""
    lock = services.card_locks.setdefault(row.id, asyncio.Lock())
    async with lock:
        await _refresh(bot, services, row, extra=extra, lang=lang, patience=patience)


async def _refresh(
    bot: Bot, services: Services, row: PlanRow, *, extra: str, lang: str | None, patience: float
) -> None:
    row = await services.changes.row(row.id) or row
    if row.chat_id is None or row.message_id is None:
        return
    lang = card_language(services, row, lang)
    facts = await services.changes.card_facts(row)
    text = await card_text(services, row, lang, extra=extra, facts=facts)
    if not fits(text):
        text = await card_text(services, row, lang, extra=extra, summary=True, facts=facts)
    markup = await keyboard(services, row, lang, facts)
    where, digest = (row.chat_id, row.message_id), _digest(text, markup)
    if services.shown is not None and services.shown.get(where) == digest:
        return  # the card shows exactly this: Telegram would refuse the edit ("not modified")
    try:
        await persist(
            lambda chat: bot.edit_message_text(
                text=text, chat_id=chat, message_id=row.message_id, reply_markup=markup
            ),
            row.chat_id,
            until=time.monotonic() + patience,
        )
    except TelegramBadRequest as exc:
        if "not modified" in exc.message:  # another process showed it (replicas keep no memory)
            _remember(services, where, digest)
            return
        if "not found" in exc.message:
            await post_card(bot, services, row, row.chat_id, lang)
            return
        raise
    _remember(services, where, digest)


SHOWN_LIMIT = 10_000  # cards remembered per process; the oldest are forgotten first


def _digest(text: str, markup: InlineKeyboardMarkup | None) -> str:
    buttons = markup.model_dump_json(exclude_none=True) if markup is not None else ""
    return hashlib.sha256(f"{text}\0{buttons}".encode()).hexdigest()


def _remember(services: Services, where: tuple[int, int], digest: str) -> None:
    shown = services.shown
    if shown is None:
        return
    shown.pop(where, None)
    shown[where] = digest
    while len(shown) > SHOWN_LIMIT:
        del shown[next(iter(shown))]


async def apply_and_report(bot: Bot, services: Services, row: PlanRow, actor: Actor) -> Outcome | None:
    """Apply an approved plan with every password it needs, showing progress on
    long plans, then the outcome; a stale plan's new version gets its own card."""
    last = 0.0

    async def progress(current: PlanRow, done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if total >= 10 and (now - last >= PROGRESS_EVERY or done == total):
            last = now
            lang = card_language(services, current)
            try:  # progress is a courtesy: it never holds the apply between two writes
                await refresh_card(
                    bot,
                    services,
                    current,
                    extra=t("tg.card.progress", lang, done=done, total=total),
                    patience=0,
                )
            except TelegramAPIError as exc:
                log.info("plan %s: a progress edit was skipped (%s)", current.id, type(exc).__name__)

    try:
        outcome = await services.changes.apply(actor, row.id, progress=progress)
    except ChangeError as exc:  # the card shows where the plan is; any other refusal goes on to be answered
        await refresh_card(bot, services, row)
        if exc.code in ("not_approved", "plan_closed"):
            return None  # another press, or another process, is applying it
        raise
    await refresh_card(bot, services, outcome.row)
    if outcome.replacement is not None and outcome.replacement.row is not None and row.chat_id is not None:
        new = outcome.replacement.row
        lang = card_language(services, new)
        await refresh_card(bot, services, outcome.row, extra=t("outcome.replaced", lang, id=new.id))
        await post_card(bot, services, new, row.chat_id)
    return outcome


PLACEHOLDER_LIMIT = 64  # Telegram's limit for ForceReply.input_field_placeholder


async def _prompt(
    bot: Bot, services: Services, row: PlanRow, login: str | None, text: str, hint: str
) -> bool:
    """Send a question that asks for a reply, and remember which plan (and login) a reply to it answers."""
    markup = ForceReply(force_reply=True, input_field_placeholder=hint[:PLACEHOLDER_LIMIT])
    try:
        sent = await bot.send_message(row.proposer_id, text, reply_markup=markup)
    except (TelegramForbiddenError, TelegramBadRequest) as exc:
        log.info("cannot write to %s first: %s", row.proposer_id, exc.message)
        return False
    await services.changes.secrets.asked(row.proposer_id, row.id, login, sent.message_id)
    return True


async def ask_secret(bot: Bot, services: Services, row: PlanRow, login: str, lang: str) -> bool:
    """Ask the proposer, in private, for the SIP password of `login`: a reply to this
    question is that password (a second reply replaces it). False when the bot may
    not write first (the card carries a deep link instead)."""
    text = tr("tg.secret.ask_login", lang, login=login, id=row.id)
    return await _prompt(bot, services, row, login, text, t("tg.secret.placeholder", lang, login=login))


async def ask_secrets(bot: Bot, services: Services, row: PlanRow, lang: str) -> bool:
    """Ask for what the plan still misses: one login by name, or several in the plan's
    order (each reply goes to the next login still missing). False: nothing asked."""
    missing = await services.changes.missing_secrets(row)
    if len(missing) <= 1:
        return bool(missing) and await ask_secret(bot, services, row, missing[0], lang)
    text = tr("tg.secret.ask_plan", lang, logins=", ".join(missing), id=row.id)
    return await _prompt(bot, services, row, None, text, t("tg.secret.placeholder", lang, login=missing[0]))
