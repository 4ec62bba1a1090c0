"""/start, /help, /whoami, /pbx."""

from __future__ import annotations

from aiogram import Bot, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import Message

from bot.plans.changes import Actor
from bot.plans.policy import Action, Role, may
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import Html, lines_of, tr

from .cards import ask_secrets, refresh_card

# command -> the action it needs; /help lists only what the caller may do
COMMANDS: dict[str, Action] = {
    "addnumber": Action.PROPOSE,
    "route": Action.PROPOSE,
    "removenumber": Action.PROPOSE,
    "password": Action.PROPOSE,
    "undo": Action.PROPOSE,
    "numbers": Action.VIEW,
    "plans": Action.VIEW,
    "history": Action.VIEW,
    "cancel": Action.CANCEL_OWN,
    "doctor": Action.VIEW,
    "trace": Action.VIEW,
    "map": Action.VIEW,
    "digest": Action.VIEW,
    "drift": Action.VIEW,
    "pbx": Action.VIEW,
    "whoami": Action.VIEW,
    "help": Action.VIEW,
}


def help_text(services: Services, user_id: int, lang: str) -> Html:
    policy = services.settings.policy
    lines = [tr("tg.help.header", lang)]
    lines += [
        tr(f"tg.help.{name}", lang) for name, action in COMMANDS.items() if may(policy, user_id, action)
    ]
    if may(policy, user_id, Action.PROPOSE):
        lines.append(tr("tg.help.csv", lang))
    if may(policy, user_id, Action.APPROVE):
        lines.append(tr("tg.help.approve", lang))
    return lines_of(lines, html=True)


async def start(
    message: Message, command: CommandObject, bot: Bot, services: Services, actor: Actor, lang: str
) -> None:
    payload = command.args or ""
    if payload.startswith("pw-"):
        # the card's Password button: the next password this user sends goes to that plan
        row = await services.changes.row(payload[3:])
        waiting = [r for r, _ in await services.changes.awaiting_secret(actor.id) if row and r.id == row.id]
        if waiting:
            await services.changes.secrets.link(actor.id, waiting[0].id)
            await ask_secrets(bot, services, waiting[0], lang)
            await refresh_card(bot, services, waiting[0])
            return
    await message.answer(tr("tg.start", lang) + "\n\n" + help_text(services, actor.id, lang))


async def help_(message: Message, services: Services, actor: Actor, lang: str) -> None:
    await message.answer(help_text(services, actor.id, lang))


async def whoami(message: Message, actor: Actor, role: Role, pbx: str | None, lang: str) -> None:
    await message.answer(
        tr(
            "tg.whoami",
            lang,
            id=actor.id,
            role=t(f"tg.role.{role.name.lower()}", lang),
            chat=message.chat.id,
            pbx=pbx or "—",
            lang=lang,
        )
    )


async def pbx_(
    message: Message, command: CommandObject, services: Services, actor: Actor, pbx: str | None, lang: str
) -> None:
    name = (command.args or "").strip()
    known = ", ".join(sorted(services.changes.pbxs))
    if not name:
        await message.answer(tr("tg.pbx.current", lang, pbx=pbx or "—", known=known))
        return
    if not may(services.settings.policy, actor.id, Action.CONFIGURE):
        await message.answer(tr("change.not_allowed", lang, action="pbx"))
        return
    if name not in services.changes.pbxs:
        await message.answer(tr("change.unknown_pbx", lang, pbx=name, known=known))
        return
    await services.bind_chat(message.chat.id, name, title=message.chat.title or "", by=actor.id)
    await message.answer(tr("tg.pbx.bound", lang, pbx=name))


def router() -> Router:
    """A fresh router (a router belongs to one dispatcher)."""
    r = Router(name="common")
    r.message.register(start, CommandStart())
    r.message.register(help_, Command("help"))
    r.message.register(whoami, Command("whoami"))
    r.message.register(pbx_, Command("pbx"))
    return r
