"""Builds the Telegram side: Bot (with the outbound limiter and, when set, a
custom Bot API server), Dispatcher with the access middleware and the routers,
the command menus, and the housekeeping jobs; runs long polling.

The only module in bot/ that imports aiogram (handlers/ holds the routers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiogram import Bot, Dispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.session.middlewares.base import BaseRequestMiddleware
from aiogram.client.telegram import TelegramAPIServer
from aiogram.dispatcher.middlewares.user_context import UserContextMiddleware
from aiogram.enums import ParseMode
from aiogram.exceptions import TelegramAPIError
from aiogram.fsm.storage.base import BaseEventIsolation, DefaultKeyBuilder, StorageKey
from aiogram.methods import GetUpdates
from aiogram.methods.base import Response
from aiogram.types import (
    BotCommand,
    BotCommandScopeAllGroupChats,
    BotCommandScopeAllPrivateChats,
    Update,
)
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.config import ConfigError, Settings
from bot.plans.changes import PbxHandle
from bot.plans.mirror import MirrorRefresher
from bot.plans.policy import trap_warnings
from bot.routing.watch import DriftWatch
from bot.services import Services
from bot.text.i18n import CATALOGUES, t
from handlers import routers
from handlers.access import Access, Observe, ReadAhead
from handlers.cards import refresh_card
from handlers.errors import error_handler
from handlers.routing import TelegramPoster
from handlers.secrets import PrivateTurns
from handlers.throttle import LocalBudget, RedisBudget, Throttle
from pbx.mikopbx import MikoPbxClient

from .health import BEAT, heartbeat_path, remove_heartbeat, write_heartbeat
from .leader import Leadership
from .metrics import Metrics
from .scheduler import Scheduler
from .wiring import drift_watch, open_changes, open_pbx, open_store

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.lock import Lock

log = logging.getLogger("pbxbot.app")

GROUP_COMMANDS = (
    "addnumber",
    "route",
    "removenumber",
    "password",
    "numbers",
    "plans",
    "history",
    "cancel",
    "undo",
    "doctor",
    "trace",
    "map",
    "digest",
    "drift",
    "help",
)
PRIVATE_COMMANDS = (*GROUP_COMMANDS, "pbx", "whoami")


def make_throttle(settings: Settings) -> Throttle:
    """Telegram's limits: one budget per group for every replica (Redis when `[redis] url` is set)."""
    tg = settings.telegram
    if settings.redis.url:
        budget: Any = RedisBudget(
            settings.redis.url, max_connections=settings.server.max_concurrent_updates + 8
        )
    else:
        budget = LocalBudget()
    return Throttle(
        budget,
        group_limit=tg.group_limit,
        group_window=tg.group_window,
        global_limit=tg.global_limit,
        patience=tg.retry_patience,
    )


def make_bot(settings: Settings, throttle: Throttle | None = None) -> Bot:
    token = settings.telegram.token
    if token is None:
        raise ConfigError(["telegram.token: required to run the bot (or telegram.token_file)"])
    api_base = settings.telegram.api_base
    session = AiohttpSession(api=TelegramAPIServer.from_base(api_base)) if api_base else AiohttpSession()
    session.middleware(throttle or make_throttle(settings))
    session.middleware(KeptResponseTypes())
    defaults = DefaultBotProperties(parse_mode=ParseMode.HTML, link_preview_is_disabled=True)
    return Bot(token.get_secret_value(), session=session, default=defaults)


def telegram_problem(exc: BaseException) -> tuple[str, dict[str, str]]:
    """A failed Telegram call as a catalogue key (`telegram.*`) and its parameters, for
    one line in `check` and at the start: a malformed or refused token, another poller
    on the token, Telegram unreachable, or Telegram's own refusal by name."""
    from aiogram.exceptions import (
        TelegramConflictError,
        TelegramNetworkError,
        TelegramServerError,
        TelegramUnauthorizedError,
    )
    from aiogram.utils.token import TokenValidationError

    if isinstance(exc, TokenValidationError):
        return "telegram.token_malformed", {}
    if isinstance(exc, TelegramUnauthorizedError):
        return "telegram.token_refused", {}
    if isinstance(exc, TelegramConflictError):
        return "telegram.conflict", {}
    if isinstance(exc, TelegramNetworkError | TelegramServerError | TimeoutError | OSError):
        return "telegram.unreachable", {"error": telegram_reason(exc)}
    return "telegram.error", {"error": telegram_reason(exc)}


def telegram_reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def telegram_fatal(exc: BaseException) -> bool:
    """Retrying cannot help: the token is malformed or refused."""
    return telegram_problem(exc)[0] in ("telegram.token_malformed", "telegram.token_refused")


class Pulse(BaseRequestMiddleware):
    """Watches the polling loop's getUpdates: when Telegram last answered (the heartbeat
    is written only while it does), and one log line per kind of trouble (another poller
    on the token, Telegram unreachable; again after `REPEAT` s) instead of aiogram's two
    per retry; "polling again" once answers come back after a silence."""

    REPEAT = 600.0

    def __init__(self) -> None:
        self.answered = time.monotonic()  # the start counts as an answer
        self.silence = 35.0  # seconds without an answer: the bot is not working
        self.said: dict[str, float] = {}  # trouble key -> when it was logged

    async def __call__(self, make_request: Any, bot: Bot, method: Any) -> Any:
        if not isinstance(method, GetUpdates):
            return await make_request(bot, method)
        try:
            result = await make_request(bot, method)
        except Exception as exc:
            key, params = telegram_problem(exc)
            now = time.monotonic()
            if now - self.said.get(key, -self.REPEAT) >= self.REPEAT:
                self.said[key] = now
                log.warning("%s", t(key, "en", **params))
            raise
        now = time.monotonic()
        if self.said and now - self.answered >= self.silence:
            log.warning("%s", t("telegram.polling_again", "en"))
            self.said.clear()
        self.answered = now
        return result


class KeptResponseTypes(BaseRequestMiddleware):
    """Holds `Response[<what a method returns>]` for every method the bot has called.

    aiogram validates each answer with `Response[method.__returning__]`, a generic
    model pydantic keeps in a weak cache; nothing else holds it, so after each garbage
    collection the next answer builds its validator again: about 50 ms per sendMessage
    (half of a command's time in the bot, measured with py-spy on bench/bot.py). Kept
    here, it is built once per method."""

    def __init__(self) -> None:
        self.kept: dict[type, type] = {}

    async def __call__(self, make_request: Any, bot: Bot, method: Any) -> Any:
        kind = type(method)
        if kind not in self.kept:
            self.kept[kind] = Response[method.__returning__]
        return await make_request(bot, method)


class Refusals(BaseRequestMiddleware):
    """Counts the requests Telegram refuses (an error answer) in /metrics, by method and code."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def __call__(self, make_request: Any, bot: Bot, method: Any) -> Any:
        try:
            return await make_request(bot, method)
        except TelegramAPIError as exc:
            code = _CODES.get(type(exc).__name__)
            if code is not None:  # not a network error: Telegram answered, and refused
                self.metrics.telegram_refused.labels(type(method).__name__, str(code)).inc()
            raise


_CODES = {  # aiogram's exceptions by the status Telegram answered with
    "TelegramBadRequest": 400,
    "TelegramUnauthorizedError": 401,
    "TelegramForbiddenError": 403,
    "TelegramNotFound": 404,
    "TelegramConflictError": 409,
    "TelegramEntityTooLarge": 413,
    "TelegramRetryAfter": 429,
    "TelegramMigrateToChat": 400,
    "TelegramServerError": 500,
}


class _PollingNoise(logging.Filter):
    """aiogram's two lines per failed getUpdates and its "Connection established":
    `Pulse` says it once per episode."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(
            ("Failed to fetch updates", "Sleep for", "Connection established")
        )


_POLLING_NOISE = _PollingNoise()


class RedisTurns(BaseEventIsolation):
    """One (chat, user)'s updates in turn across replicas: aiogram's Redis lock, with a
    blocking connection pool of its own sized for this process's updates in flight
    (never `MaxConnectionsError`), renewed while its update runs (a handler may wait
    minutes for the group's budget; a dead replica's lock lapses after `ttl` seconds)."""

    def __init__(self, url: str, *, max_connections: int, ttl: float = 30.0):
        import redis.asyncio as aioredis  # only replicas pay for the redis client

        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=120)
        self.redis: Redis | None = aioredis.Redis(connection_pool=pool)
        self.ttl = ttl
        self.key_builder = DefaultKeyBuilder()

    async def _renew(self, lock: Lock) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await lock.reacquire()
            except Exception as exc:  # (the update goes on; its turn may lapse)
                log.warning("could not renew an update's turn: %s", type(exc).__name__)
                return

    @contextlib.asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncIterator[None]:
        from redis.exceptions import LockError

        assert self.redis is not None, "an update after close()"
        lock = self.redis.lock(name=self.key_builder.build(key, "lock"), timeout=self.ttl, sleep=0.05)
        await lock.acquire()
        renew = asyncio.create_task(self._renew(lock))
        try:
            yield
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew
            try:
                await lock.release()
            except LockError:
                log.warning("an update's turn lapsed before it ended")

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None


def _turn_key(update: Update) -> tuple[int | None, int | None]:
    context = UserContextMiddleware.resolve_event_context(update)
    return context.chat_id, context.user_id


class BoundedDispatcher(Dispatcher):
    """At most `max_concurrent` updates run at once in this process. With `ordered`
    (replicas: Redis event isolation), one (chat, user)'s updates first wait their
    turn here, in memory, so a busy chat's queue never takes every slot, and the
    Redis lock is waited on by at most `max_concurrent` updates."""

    def __init__(self, *, max_concurrent: int, ordered: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.max_concurrent = max_concurrent
        self.slots = asyncio.Semaphore(max_concurrent)
        self.ordered = ordered
        self._turns: dict[tuple[int | None, int | None], list[Any]] = {}
        self.running = 0
        self.peak = 0
        self.handled: list[Callable[[int], None]] = []  # called with each update's id once it is handled

    @contextlib.asynccontextmanager
    async def _turn(self, update: Update) -> AsyncIterator[None]:
        key = _turn_key(update) if self.ordered else (None, None)
        if key == (None, None):  # unordered, or an update of no chat and no user
            yield
            return
        entry = self._turns.setdefault(key, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._turns.pop(key, None)

    async def feed_update(self, bot: Bot, update: Update, **kwargs: Any) -> Any:
        async with self._turn(update), self.slots:
            self.running += 1
            self.peak = max(self.peak, self.running)
            try:
                return await super().feed_update(bot, update, **kwargs)
            finally:
                self.running -= 1
                for listener in self.handled:
                    listener(update.update_id)


class BoundedRequestHandler(SimpleRequestHandler):
    """The webhook with backpressure: at most `max_pending` updates accepted and not
    finished; beyond that the answer to Telegram waits, so Telegram sends more slowly."""

    def __init__(self, *args: Any, max_pending: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pending = asyncio.Semaphore(max_pending)

    async def _handle_request_background(self, bot: Bot, request: web.Request) -> web.Response:
        await self.pending.acquire()
        try:
            return await super()._handle_request_background(bot, request)
        except BaseException:
            self.pending.release()
            raise

    async def _background_feed_update(self, bot: Bot, update: dict[str, Any]) -> None:
        try:
            await super()._background_feed_update(bot, update)
        finally:
            self.pending.release()


def make_dispatcher(services: Services, metrics: Metrics | None = None) -> BoundedDispatcher:
    """Routers behind the access check, at most `[server] max_concurrent_updates` at
    once; with `[redis] url`, FSM storage and event isolation in Redis (pools of their
    own, blocking, sized for that bound), so webhook replicas handle one chat's
    updates in turn."""
    redis_url = services.settings.redis.url
    bound = services.settings.server.max_concurrent_updates
    if redis_url:
        import redis.asyncio as aioredis  # only replicas pay for the redis client
        from aiogram.fsm.storage.redis import RedisStorage

        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=bound + 4, timeout=120)
        storage = RedisStorage(aioredis.Redis(connection_pool=pool))
        isolation = RedisTurns(redis_url, max_connections=bound + 4)
        dispatcher = BoundedDispatcher(
            max_concurrent=bound, ordered=True, storage=storage, events_isolation=isolation
        )
    else:
        dispatcher = BoundedDispatcher(max_concurrent=bound)
    if metrics is not None:
        dispatcher.update.outer_middleware(Observe(metrics))
    dispatcher.update.outer_middleware(PrivateTurns())  # before anything awaits: arrival order
    access = Access(services)
    dispatcher.message.outer_middleware(access)
    dispatcher.callback_query.outer_middleware(access)
    dispatcher.include_routers(*routers())
    dispatcher.errors.register(error_handler(services))  # no update ends without an answer
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


HOUSEKEEPING_PATIENCE = 30.0  # seconds a card edit may wait out Telegram here: the next round retries


async def housekeeping(bot: Bot, services: Services) -> None:
    """Expire open plans past their time (their cards say so); reconcile plans a dead
    process left applying; edit the cards of plans that ended where no card could be
    edited (`pbxbot recover`)."""
    for row in await services.changes.expire():
        with contextlib.suppress(TelegramAPIError):
            await refresh_card(bot, services, row, patience=HOUSEKEEPING_PATIENCE)
    await services.changes.recover()
    for row in await services.changes.cards_to_refresh():
        try:
            await refresh_card(bot, services, row, patience=HOUSEKEEPING_PATIENCE)
        except TelegramAPIError as exc:
            log.warning("plan %s: its card could not be edited: %s", row.id, exc)
            continue
        await services.changes.card_refreshed(row.id)


@dataclass
class BotApp:
    """A running bot, stoppable: long polling in a task, or a webhook server with
    /healthz and /metrics; the schedules run only while this process owns them."""

    bot: Bot
    dispatcher: BoundedDispatcher
    services: Services
    scheduler: Scheduler
    metrics: Metrics
    leadership: Leadership
    task: asyncio.Task | None = None
    runner: web.AppRunner | None = None
    webhook_handler: SimpleRequestHandler | None = None
    throttle: Throttle | None = None
    pulse: Pulse = field(default_factory=Pulse)
    beating: asyncio.Task | None = None
    polling_timeout: int = 10
    drift: DriftWatch | None = None  # `drift.observe` is the mirror refresher's `on_drift` hook
    refreshers: list[MirrorRefresher] = field(default_factory=list)  # one a PBX: the mirror's refresher

    async def start(self, *, polling_timeout: int = 10) -> None:
        settings = self.services.settings
        me = await self.bot.get_me()
        self.services.bot_username = me.username or ""
        for key, params in trap_warnings(settings.policy):  # `pbxbot check` says the same
            log.warning("%s", t(key, "en", **params))
        await set_commands(self.bot)
        self.services.scheduler = self.scheduler
        # plans this host's dead processes left half-applied: whole again before anything else
        await housekeeping(self.bot, self.services)
        self.leadership.start(self._own, self._disown)
        if settings.telegram.mode == "webhook":
            await self._serve_webhook()
            return
        await self.bot.delete_webhook(drop_pending_updates=False)
        self.bot.session.middleware(self.pulse)
        logging.getLogger("aiogram.dispatcher").addFilter(_POLLING_NOISE)
        self.polling_timeout = polling_timeout
        self.pulse.silence = 2 * polling_timeout + 15
        self.task = asyncio.create_task(
            self.dispatcher.start_polling(
                self.bot,
                handle_signals=False,
                close_bot_session=False,
                polling_timeout=polling_timeout,
                handle_as_tasks=True,
                tasks_concurrency_limit=settings.server.max_pending_updates,
            )
        )
        await self._beat_once()  # `pbxbot health` passes from the moment the bot runs
        self.beating = asyncio.create_task(self._beat())

    async def _own(self) -> None:
        await housekeeping(self.bot, self.services)
        await self.scheduler.start(
            self._housekeeping, every=self.services.settings.server.housekeeping_seconds
        )
        self.scheduler.refresh_mirrors(self.refreshers)
        self.metrics.scheduler_owner.set(1)

    async def _housekeeping(self) -> None:
        await self.scheduler.sync()
        await housekeeping(self.bot, self.services)

    def _disown(self) -> None:
        self.scheduler.shutdown()
        self.metrics.scheduler_owner.set(0)

    async def _serve_webhook(self) -> None:
        settings = self.services.settings
        secret = settings.telegram.webhook_secret
        token = secret.get_secret_value() if secret else None
        app = web.Application()
        self.webhook_handler = BoundedRequestHandler(
            dispatcher=self.dispatcher,
            bot=self.bot,
            secret_token=token,
            max_pending=settings.server.max_pending_updates,
        )
        self.webhook_handler.register(app, path=settings.server.webhook_path)
        setup_application(app, self.dispatcher, bot=self.bot)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, settings.server.host, settings.server.port).start()
        assert settings.telegram.webhook_url  # Settings refuse mode = webhook without it
        await self.bot.set_webhook(
            settings.telegram.webhook_url,
            secret_token=token,
            allowed_updates=self.dispatcher.resolve_used_update_types(),
            drop_pending_updates=False,
        )
        await self._beat_once()
        self.beating = asyncio.create_task(self._beat())

    def alive(self) -> bool:
        """Working: the webhook server runs, or polling runs and Telegram answered
        getUpdates within twice its long-poll timeout (plus slack)."""
        if self.runner is not None:
            return True
        if self.task is None or self.task.done():
            return False
        return time.monotonic() - self.pulse.answered < self.pulse.silence

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            await self._beat_once()

    async def _beat_once(self) -> None:
        if not self.alive():
            return
        path = heartbeat_path(self.services.settings)
        try:
            await asyncio.to_thread(write_heartbeat, path, mode=self.services.settings.telegram.mode)
        except OSError as exc:
            log.warning("the heartbeat %s cannot be written: %s", path, exc)

    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            ok = await asyncio.to_thread(self.services.store.ping)
        except Exception:
            ok = False
        body = {"status": "ok" if ok else "database unreachable", "scheduler_owner": self.leadership.owner}
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        data = await asyncio.to_thread(self.metrics.render)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self, *, drain_timeout: float = 120.0) -> None:
        if self.beating is not None:
            self.beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.beating
            self.beating = None
            with contextlib.suppress(OSError):
                remove_heartbeat(heartbeat_path(self.services.settings))
        await self.leadership.stop()
        self.scheduler.shutdown()
        if self.task is not None:
            with contextlib.suppress(RuntimeError):
                await self.dispatcher.stop_polling()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.task, 30)
            self.task = None
        # let updates in flight finish (an apply should not be cut between two writes)
        pending = set(getattr(self.dispatcher, "_handle_update_tasks", set()))
        if self.webhook_handler is not None:
            pending |= set(getattr(self.webhook_handler, "_background_feed_update_tasks", set()))
        if pending:
            await asyncio.wait(pending, timeout=drain_timeout)
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        await self.bot.session.close()
        if self.throttle is not None:
            await self.throttle.budget.close()

    async def wait(self) -> None:
        if self.task is not None:
            await self.task
        else:
            await asyncio.Event().wait()


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    clients: dict[str, MikoPbxClient] | None = None,
    polling_timeout: int = 10,
    leader_interval: float | None = None,
    **handle,
) -> AsyncIterator[BotApp]:
    """The bot with its storage, vault and PBX clients (one per profile unless given), running."""
    make_bot(settings)  # a missing or malformed token stops here, before the database is touched
    store = open_store(settings)
    metrics = Metrics(store.plans.count_by_status)
    own: list[MikoPbxClient] = []
    if clients is None:
        clients = {}
        for name in settings.pbx:
            clients[name] = open_pbx(settings, name)
            own.append(clients[name])
    for name, client in clients.items():
        client.listeners.append(metrics.pbx_listener(name))
    handles = {
        name: PbxHandle.of(client, reload_wait=settings.pbx[name].reload_wait, **handle)
        for name, client in clients.items()
    }
    changes = open_changes(settings, handles, store)
    services = Services(settings, changes, store)
    throttle = make_throttle(settings)
    bot = make_bot(settings, throttle)
    bot.session.middleware(Refusals(metrics))
    bot.session.middleware(ReadAhead(services))  # a command's PBX reads leave as its update arrives
    if settings.redis.url:  # replicas: another process may edit a card; no memory of what it shows
        services.shown = None
    dispatcher = make_dispatcher(services, metrics)
    leadership = Leadership(store.engine, interval=leader_interval or settings.server.leader_interval)
    app = BotApp(bot, dispatcher, services, Scheduler(services, TelegramPoster(bot)), metrics, leadership)
    app.throttle = throttle
    app.drift = drift_watch(services, bot)
    for pbx_handle in handles.values():  # what the mirror finds changed outside the bot: named, told
        pbx_handle.reader.on_drift = app.drift.observe
    if settings.mirror.refresh_share > 0:
        app.refreshers = [
            MirrorRefresher(
                handle.reader,
                per_minute=settings.pbx[name].rate_limit_per_min,
                share=settings.mirror.refresh_share,
                every=settings.mirror.refresh_seconds,
            )
            for name, handle in handles.items()
        ]
    try:
        await app.start(polling_timeout=polling_timeout)
        yield app
    finally:
        await app.stop()
        for client in own:
            await client.aclose()
        if dispatcher.storage is not None:
            await dispatcher.storage.close()
        await dispatcher.fsm.events_isolation.close()
        store.engine.dispose()
