"""Builds the Telegram side: Bot (with the outbound limiter and, when set, a
custom Bot API server), Dispatcher with the access middleware and the routers,
the command menus, and the housekeeping jobs; runs long polling.

The only module in bot/ that imports aiogram.
"""

from __future__ import annotations

# isort: off
from . import lazy_models  # noqa: F401  (before aiogram: its models are built when used)

# isort: on

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.enums import ParseMode
from aiogram.types import BotCommand, BotCommandScopeAllGroupChats, BotCommandScopeAllPrivateChats

from handlers import routers
from handlers.access import Access
from handlers.cards import refresh_card
from handlers.routing import TelegramPoster
from handlers.throttle import Throttle
from pbx.mikopbx import MikoPbxClient

from .changes import Changes, PbxHandle
from .config import ConfigError, Settings
from .i18n import CATALOGUES, t
from .scheduler import Scheduler
from .services import Services
from .wiring import open_store, open_vault

log = logging.getLogger("pbxbot.app")

GROUP_COMMANDS = (
    "addnumber",
    "route",
    "removenumber",
    "numbers",
    "plans",
    "history",
    "cancel",
    "undo",
    "help",
)
PRIVATE_COMMANDS = (*GROUP_COMMANDS, "pbx", "whoami")


def make_bot(settings: Settings) -> Bot:
    token = settings.telegram.token
    if token is None:
        raise ConfigError(["telegram.token: required to run the bot (or telegram.token_file)"])
    api_base = settings.telegram.api_base
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else AiohttpSession()
    session.middleware(Throttle())
    defaults = DefaultBotProperties(parse_mode=ParseMode.HTML, link_preview_is_disabled=True)
    return Bot(token.get_secret_value(), session=session, default=defaults)


def make_dispatcher(services: Services) -> Dispatcher:
    dispatcher = Dispatcher()
    access = Access(services)
    dispatcher.message.outer_middleware(access)
    dispatcher.callback_query.outer_middleware(access)
    dispatcher.include_routers(*routers())
    return dispatcher


async def set_commands(bot: Bot) -> None:
    """The command menu per scope (private, groups) and language."""
    for scope, names in (
        (BotCommandScopeAllPrivateChats(), PRIVATE_COMMANDS),
        (BotCommandScopeAllGroupChats(), GROUP_COMMANDS),
    ):
        for lang in CATALOGUES:
            commands = [BotCommand(command=name, description=t(f"tg.menu.{name}", lang)) for name in names]
            await bot.set_my_commands(commands, scope=scope, language_code=lang)
        default = [BotCommand(command=n, description=t(f"tg.menu.{n}", "en")) for n in names]
        await bot.set_my_commands(default, scope=scope)


async def housekeeping(bot: Bot, services: Services) -> None:
    """Expire open plans past their time (their cards say so); recover plans a dead process left applying."""
    for row in await services.changes.expire():
        await refresh_card(bot, services, row)
    for row in await services.changes.recover():
        await refresh_card(bot, services, row)


@dataclass
class BotApp:
    """A running bot: polling in a task, stoppable; what `pbxbot run`, the shell and the tests use."""

    bot: Bot
    dispatcher: Dispatcher
    services: Services
    scheduler: Scheduler
    task: asyncio.Task | None = None

    async def start(self, *, polling_timeout: int = 10) -> None:
        me = await self.bot.get_me()
        self.services.bot_username = me.username or ""
        await self.bot.delete_webhook(drop_pending_updates=False)
        await set_commands(self.bot)
        await housekeeping(self.bot, self.services)
        self.services.scheduler = self.scheduler
        self.scheduler.start(lambda: housekeeping(self.bot, self.services))
        self.task = asyncio.create_task(
            self.dispatcher.start_polling(
                self.bot, handle_signals=False, close_bot_session=False, polling_timeout=polling_timeout
            )
        )

    async def stop(self, *, drain_timeout: float = 120.0) -> None:
        self.scheduler.shutdown()
        if self.task is not None:
            with contextlib.suppress(RuntimeError):
                await self.dispatcher.stop_polling()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 30)
            self.task = None
        # let updates in flight finish (an apply should not be cut between two writes)
        pending = set(getattr(self.dispatcher, "_handle_update_tasks", set()))
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
        await self.bot.session.close()

    async def wait(self) -> None:
        if self.task is not None:
            await self.task


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    clients: dict[str, MikoPbxClient] | None = None,
    polling_timeout: int = 10,
    **handle,
) -> AsyncIterator[BotApp]:
    """The bot with its storage, vault and PBX clients (one per profile unless given), running."""
    store = open_store(settings)
    own: list[MikoPbxClient] = []
    if clients is None:
        clients = {}
        for name, profile in settings.pbx.items():
            clients[name] = MikoPbxClient.from_profile(name, profile)
            own.append(clients[name])
    handles = {
        name: PbxHandle.of(client, reload_wait=settings.pbx[name].reload_wait, **handle)
        for name, client in clients.items()
    }
    changes = Changes(store, settings.policy, open_vault(settings), handles)
    services = Services(settings, changes, store)
    bot = make_bot(settings)
    app = BotApp(bot, make_dispatcher(services), services, Scheduler(services, TelegramPoster(bot)))
    try:
        await app.start(polling_timeout=polling_timeout)
        yield app
    finally:
        await app.stop()
        for client in own:
            await client.aclose()
        store.engine.dispose()
