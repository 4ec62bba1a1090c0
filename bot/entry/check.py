"""`pbxbot check`: is this install ready? One line per item, exit 1 on a failure.

config       the file and the environment validate
database     reachable; migrations at the head revision
pbx.<name>   reachable, REST API v3, the key accepted, and the key allowed to
             read what the bot reads and to write providers and routes (a
             PATCH of a record that does not exist: 404/422 means allowed,
             401/403 means not; nothing is changed)
telegram     the token accepted; in each configured group, the bot is a
             member and may delete messages (passwords typed there)
vault        the secret key for SIP passwords is usable
files        (warnings, marked !) secret files other users may read
policy       (warnings, marked !) approval counts the configured approvers
             other than a proposer cannot meet (`remove = 2` with one approver)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from bot.config import Settings, exposed_secret_files
from bot.plans.policy import trap_warnings
from bot.plans.vault import VaultError
from bot.text.i18n import t
from pbx.errors import PbxAuthError, PbxError, PbxForbidden, PbxNotFound, PbxUnsupported, PbxValidationError
from pbx.mikopbx import MikoPbxClient
from storage.db import StorageError, alembic_config, database_url, make_engine

# The least-privilege API key, the one list: what the bot reads (by the call that proves it
# may) and writes under /api/v3. The README and deploy/config.example.toml name exactly these
# (tests/test_deploy.py); `system` is ping and checkAuth.
READS = {
    "sip-providers": lambda c: c.list_providers(),
    "incoming-routes": lambda c: c.list_routes(),
    "providers": lambda c: c.registration_statuses(),
    "extensions": lambda c: c.destinations(),
    "general-settings": lambda c: c.general_settings(),
    "cdr": lambda c: c.cdr(limit=1),
    "system": lambda c: c.check_auth(),
}
WRITES = ("sip-providers", "incoming-routes")


@dataclass(frozen=True)
class Item:
    ok: bool
    name: str
    key: str  # message catalogue: check.<key>, or a full key with its dot (cli.vault_bad_key)
    params: tuple[tuple[str, Any], ...] = ()
    warning: bool = False  # ok, but worth a look: shown with "!"

    def text(self, lang: str) -> str:
        return t(self.key if "." in self.key else f"check.{self.key}", lang, **dict(self.params))

    @property
    def detail(self) -> str:
        return self.text("en")


def item(ok: bool, name: str, key: str, **params: Any) -> Item:
    return Item(ok, name, key, tuple(params.items()))


async def check_pbx(name: str, client: MikoPbxClient) -> list[Item]:
    items: list[Item] = []
    where = f"pbx.{name}"
    try:
        if not await client.ping():
            return [item(False, where, "no_api")]
        await client.check_auth()
    except PbxUnsupported as exc:
        return [item(False, where, "unsupported", error=exc)]
    except PbxAuthError as exc:
        return [item(False, where, "refused", error=exc)]
    except PbxError as exc:
        return [item(False, where, "unreachable", error=exc)]
    items.append(item(True, where, "pbx_ok", url=client.base_url))
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
        items.append(item(False, f"{where}.permissions", "denied", what=", ".join(denied)))
    else:
        items.append(item(True, f"{where}.permissions", "allowed"))
    return items


def check_files(settings: Settings) -> list[Item]:
    """A warning per secret file other users may read; the vault key opened."""
    from bot.plans.vault import KEY_FILE

    from .wiring import open_vault

    items = [
        Item(True, key, "secret_file_exposed", (("path", path), ("mode", mode)), warning=True)
        for key, path, mode in exposed_secret_files(settings)
    ]
    key_file = settings.storage.data_dir / KEY_FILE
    if settings.storage.secret_key is None and not key_file.exists():
        return [*items, item(True, "vault", "vault_new", path=key_file)]  # made by the first start
    try:
        open_vault(settings)
    except (VaultError, StorageError) as exc:
        items.append(item(False, "vault", f"cli.{exc.code}", **exc.params))
    else:
        items.append(item(True, "vault", "vault_ok"))
    return items


def check_policy(settings: Settings) -> list[Item]:
    """A warning per kind of trap in [policy] approvals (the bot's start logs the same)."""
    return [
        Item(True, "policy", key, tuple(params.items()), warning=True)
        for key, params in trap_warnings(settings.policy)
    ]


def check_database(settings: Settings) -> list[Item]:
    try:
        url = database_url(settings.storage.url, settings.storage.data_dir)
        engine = make_engine(url)
    except StorageError as exc:
        return [item(False, "database", f"cli.{exc.code}", **exc.params)]
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:
        return [
            item(
                False,
                "database",
                "db_error",
                url=shown,
                error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            )
        ]
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    items = [item(True, "database", "db_ok", url=shown)]
    if current == head:
        items.append(item(True, "database.migrations", "at_head", head=head))
    else:
        items.append(item(False, "database.migrations", "behind", current=current or "-", head=head))
    return items


async def check_telegram(settings: Settings) -> list[Item]:
    from .app import make_bot, telegram_problem, telegram_reason  # aiogram only here

    if settings.telegram.token is None:
        return [item(False, "telegram", "no_token")]
    try:
        bot = make_bot(settings)
    except Exception as exc:  # aiogram checks the token's form before any call
        key, params = telegram_problem(exc)
        return [item(False, "telegram", key, **params)]
    items: list[Item] = []
    try:
        try:
            me = await bot.get_me()
        except Exception as exc:
            key, params = telegram_problem(exc)
            return [item(False, "telegram", key, **params)]
        items.append(item(True, "telegram", "bot", username=me.username))
        for chat_id, pbx in settings.telegram.groups.items():
            try:
                member = await bot.get_chat_member(chat_id, me.id)
            except Exception as exc:
                items.append(
                    item(False, f"telegram.group {chat_id}", "group_unreachable", error=telegram_reason(exc))
                )
                continue
            status = getattr(member, "status", "")
            can_delete = bool(getattr(member, "can_delete_messages", False))
            if status in ("left", "kicked"):
                items.append(item(False, f"telegram.group {chat_id}", "not_member"))
            elif not can_delete:
                items.append(item(False, f"telegram.group {chat_id}", "cannot_delete", pbx=pbx))
            else:
                items.append(item(True, f"telegram.group {chat_id}", "group_ok", pbx=pbx))
    finally:
        await bot.session.close()
    return items


async def run_checks(settings: Settings) -> list[Item]:
    items = [item(True, "config", "config_ok", pbx=len(settings.pbx), groups=len(settings.telegram.groups))]
    items += await asyncio.to_thread(check_database, settings)
    items += check_files(settings)
    items += check_policy(settings)
    from .wiring import open_pbx

    for name in settings.pbx:
        async with open_pbx(settings, name, retries=0) as client:
            items += await check_pbx(name, client)
    items += await check_telegram(settings)
    return items
