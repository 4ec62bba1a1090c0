"""`pbxbot check`: is this install ready? One line per item, exit 1 on a failure.

config       the file and the environment validate
database     reachable; migrations at the head revision
pbx.<name>   reachable, REST API v3, the key accepted, and the key allowed to
             read what the bot reads and to write providers and routes (a
             PATCH of a record that does not exist: 404/422 means allowed,
             401/403 means not; nothing is changed)
telegram     the token accepted; in each configured group, the bot is a
             member and may delete messages (passwords typed there)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from pbx.errors import PbxAuthError, PbxError, PbxForbidden, PbxNotFound, PbxUnsupported, PbxValidationError
from pbx.mikopbx import MikoPbxClient
from storage.db import alembic_config, database_url, make_engine

from .config import Settings

# What the bot reads, by the call that proves it may.
READS = {
    "sip-providers": lambda c: c.list_providers(),
    "incoming-routes": lambda c: c.list_routes(),
    "extensions": lambda c: c.destinations(),
    "providers:getStatuses": lambda c: c.registration_statuses(),
    "cdr": lambda c: c.cdr(limit=1),
}


@dataclass(frozen=True)
class Item:
    ok: bool
    name: str
    detail: str


async def check_pbx(name: str, client: MikoPbxClient) -> list[Item]:
    items: list[Item] = []
    where = f"pbx.{name}"
    try:
        if not await client.ping():
            return [
                Item(False, where, "no MikoPBX REST API v3 answers at this URL (MikoPBX 2026.1 or later?)")
            ]
        await client.check_auth()
    except PbxUnsupported as exc:
        return [Item(False, where, f"no REST API v3: {exc}")]
    except PbxAuthError as exc:
        return [Item(False, where, f"the API key or login was refused: {exc}")]
    except PbxError as exc:
        return [Item(False, where, f"unreachable: {exc}")]
    items.append(Item(True, where, f"reachable, API v3, credentials accepted ({client.base_url})"))
    denied = []
    for resource, call in READS.items():
        try:
            await call(client)
        except (PbxForbidden, PbxAuthError):
            denied.append(f"read {resource}")
        except PbxError:
            pass  # another problem (e.g. no CDR module): not a permission
    for resource, probe in (
        ("sip-providers", lambda: client.patch_provider("SIP-TRUNK-00000000", {"note": ""})),
        ("incoming-routes", lambda: client.patch_route(999_999_999, {"note": ""}, providerid=None)),
    ):
        try:
            await probe()
        except (PbxForbidden, PbxAuthError):
            denied.append(f"write {resource}")
        except (PbxNotFound, PbxValidationError):
            pass  # allowed, and the record does not exist: nothing changed
        except PbxError:
            pass
    if denied:
        items.append(Item(False, f"{where}.permissions", "the key may not: " + ", ".join(denied)))
    else:
        items.append(Item(True, f"{where}.permissions", "reads and provider/route writes allowed"))
    return items


def check_database(settings: Settings) -> list[Item]:
    url = database_url(settings.storage.url, settings.storage.data_dir)
    engine = make_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return [Item(False, "database", f"{shown}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")]
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    items = [Item(True, "database", f"{shown} reachable")]
    if current == head:
        items.append(Item(True, "database.migrations", f"at {head}"))
    else:
        items.append(
            Item(False, "database.migrations", f"at {current or 'none'}, head is {head}: run pbxbot migrate")
        )
    return items


async def check_telegram(settings: Settings) -> list[Item]:
    from .app import make_bot  # aiogram only here

    if settings.telegram.token is None:
        return [Item(False, "telegram", "no token (telegram.token or telegram.token_file)")]
    bot = make_bot(settings)
    items: list[Item] = []
    try:
        try:
            me = await bot.get_me()
        except Exception as exc:
            return [
                Item(
                    False,
                    "telegram",
                    f"the token was refused or Telegram is unreachable: {type(exc).__name__}",
                )
            ]
        items.append(Item(True, "telegram", f"@{me.username}"))
        for chat_id, pbx in settings.telegram.groups.items():
            try:
                member = await bot.get_chat_member(chat_id, me.id)
            except Exception as exc:
                items.append(Item(False, f"telegram.group {chat_id}", f"not reachable: {type(exc).__name__}"))
                continue
            status = getattr(member, "status", "")
            can_delete = bool(getattr(member, "can_delete_messages", False))
            if status in ("left", "kicked"):
                items.append(Item(False, f"telegram.group {chat_id}", "the bot is not a member"))
            elif not can_delete:
                items.append(
                    Item(
                        False,
                        f"telegram.group {chat_id}",
                        f"PBX {pbx}: the bot may not delete messages (make it an admin)",
                    )
                )
            else:
                items.append(
                    Item(True, f"telegram.group {chat_id}", f"PBX {pbx}: member, may delete messages")
                )
    finally:
        await bot.session.close()
    return items


async def run_checks(settings: Settings) -> list[Item]:
    items = [
        Item(True, "config", f"{len(settings.pbx)} PBX profile(s), {len(settings.telegram.groups)} group(s)")
    ]
    items += await asyncio.to_thread(check_database, settings)
    for name, profile in settings.pbx.items():
        async with MikoPbxClient.from_profile(name, profile, retries=0) as client:
            items += await check_pbx(name, client)
    items += await check_telegram(settings)
    return items
