"""Builds the long-lived parts from the settings: storage, vault, PBX handles.
Shared by the CLI, the bot and the scheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from bot.config import PbxProfile, Settings
from bot.plans.changes import PbxHandle
from bot.plans.service import Changes
from bot.plans.vault import KEY_FILE, Vault
from bot.routing.watch import DriftWatch
from bot.services import Services
from pbx.budget import Budget, LocalBudget, RedisBudget
from pbx.mikopbx import MikoPbxClient
from storage.db import database_url, make_engine, migrate
from storage.repos import Repos


def open_store(settings: Settings) -> Repos:
    """The database of the settings, migrated to the head revision."""
    engine = make_engine(database_url(settings.storage.url, settings.storage.data_dir))
    migrate(engine)
    return Repos(engine)


def open_vault(settings: Settings) -> Vault:
    key = settings.storage.secret_key
    if key is not None:
        return Vault(key.get_secret_value())
    return Vault.from_file(settings.storage.data_dir / KEY_FILE)


def open_changes(settings: Settings, handles: Mapping[str, PbxHandle], store: Repos | None = None) -> Changes:
    """The core's facade over these PBXs, as the settings configure it (one place for
    the bot and every CLI command: a new setting of the core is wired here once)."""
    return Changes(
        store if store is not None else open_store(settings),
        settings.policy,
        open_vault(settings),
        handles,
        recipe_when=settings.recipe.when,
        phone_dids=settings.phone_dids,
    )


def pbx_handle(client: MikoPbxClient, profile: PbxProfile) -> PbxHandle:
    return PbxHandle.of(client, reload_wait=profile.reload_wait)


def drift_watch(services: Services, bot: Any | None = None) -> DriftWatch:
    """The consumer of drift: `drift_watch(services, bot).observe` is the `on_drift(before, after)`
    hook the mirror's refresher calls. With a bot, the PBX's chats are told when a drift moves
    where a number's calls end; without one, drift is only recorded (audit, digest, /drift)."""
    from handlers.drift import DriftNotifier

    return DriftWatch(services, DriftNotifier(bot) if bot is not None else None)


def budget_key(profile: PbxProfile) -> str:
    """What the budget in Redis is keyed by: the PBX's address (nginx counts per client
    and PBX), so two profiles naming one PBX share it too."""
    parts = urlsplit(profile.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{(parts.hostname or '').lower()}:{port}"


def pbx_budget(settings: Settings, profile: PbxProfile) -> Budget:
    """The PBX's call budget: in Redis, shared by every replica, when `[pbx_budget] redis_url`
    (or `[redis] url`) is set; this process's own otherwise."""
    config = settings.pbx_budget
    url = config.redis_url or settings.redis.url
    if url:
        return RedisBudget(
            url,
            budget_key(profile),
            profile.rate_limit_per_min,
            config.burst,
            background_share=config.background_share,
            fallback_share=config.fallback_share,
        )
    return LocalBudget(profile.rate_limit_per_min, config.burst, background_share=config.background_share)


def open_pbx(settings: Settings, name: str, **kwargs: Any) -> MikoPbxClient:
    """The client of the profile `name`, with its budget (closed with the client)."""
    profile = settings.pbx[name]
    return MikoPbxClient.from_profile(name, profile, budget=pbx_budget(settings, profile), **kwargs)
