"""Where a SIP password goes, below Telegram: storage (SQLite and PostgreSQL)
and the change service. Two passwords at once never collide; a held password
is taken once; a pasted password is recognised only by its own plan's PBX."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text

from bot.plans.changes import ChangeError
from bot.plans.commands import parse_csv
from bot.plans.vault import Vault
from storage.tables import utcnow
from tests import personas
from tests.test_changes import Clock, make_changes
from tests.test_storage import plan_row

PASSWORD, OTHER = "Sip-Pa55-847900", "Other pw 555"
OLGA = personas.actor(personas.OLGA)  # the operator, as Changes sees her


@pytest.fixture
def vault(tmp_path):
    return Vault.from_file(tmp_path / "secret.key")


def test_the_migration_creates_the_prompt_and_hold_tables(engine):
    assert {"secret_prompts", "held_secrets"} <= set(inspect(engine).get_table_names())


def test_one_login_takes_one_password_unless_it_replaces(store, vault):
    row = plan_row()
    store.add_plan(row)
    assert store.secrets.put(row.id, "847900", vault.seal(PASSWORD), replace=False) is False
    assert store.secrets.put(row.id, "847900", vault.seal(OTHER), replace=False) is None  # taken
    assert vault.open_all(store.secrets.of(row.id)) == {"847900": PASSWORD}
    assert store.secrets.put(row.id, "847900", vault.seal(OTHER), replace=True) is True
    assert vault.open_all(store.secrets.of(row.id)) == {"847900": OTHER}
    assert store.secrets.erase(row.id, "847900") and store.secrets.of(row.id) == {}


def test_eight_writers_at_once_one_login_one_winner(store, vault):
    row = plan_row()
    store.add_plan(row)
    tokens = [vault.seal(f"pw-{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda tok: store.secrets.put(row.id, "847900", tok, replace=False), tokens))
    assert results.count(False) == 1 and results.count(None) == 7


def test_prompts_links_and_held_passwords(store, vault, engine):
    a, b = plan_row(), plan_row()
    store.add_plan(a)
    store.add_plan(b)
    store.prompts.ask(7, a.id, "847900", 11)
    store.prompts.ask(7, b.id, None, 12)
    assert (store.prompts.asked(7, 11).plan_id, store.prompts.asked(7, 11).login) == (a.id, "847900")
    assert (store.prompts.asked(7, 12).plan_id, store.prompts.asked(7, 12).login) == (b.id, None)
    assert store.prompts.asked(8, 11) is None  # another user's reply to that message id means nothing
    store.prompts.set_link(7, a.id)
    store.prompts.set_link(7, b.id)
    assert store.prompts.link(7) == b.id and store.prompts.link(8) is None

    hold = store.held.hold(7, vault.seal(PASSWORD), [[a.id, "847900"], [b.id, "555001"]])
    with engine.connect() as conn:
        assert PASSWORD not in conn.execute(text("SELECT token FROM held_secrets")).scalar_one()
    assert store.held.take(hold, 8) is None  # not theirs
    taken = store.held.take(hold, 7)
    assert vault.open(taken.token) == PASSWORD and taken.choices[1] == [b.id, "555001"]
    assert store.held.take(hold, 7) is None  # once
    old = store.held.hold(7, vault.seal(PASSWORD), [])
    assert store.held.purge(utcnow() + timedelta(seconds=1)) == 1 and store.held.get(old) is None


def test_the_vault_compares_candidates_with_the_sealed_value(vault):
    token = vault.seal(PASSWORD)
    assert vault.matches(token, ["x", PASSWORD])
    assert not vault.matches(token, ["x", PASSWORD[:-1], PASSWORD + " "])


@pytest.fixture
def changes(store, client, tmp_path):
    return make_changes(store, client, Clock(), tmp_path)


async def test_the_next_password_goes_to_the_next_missing_login_and_a_named_one_replaces(changes):
    intent, _ = parse_csv("900201;x;IVR\n900202;x;IVR\n", "zadarma")
    row = (await changes.propose(OLGA, "demo", intent, command="CSV")).row
    assert await changes.add_secret(OLGA, row.id, None, PASSWORD) == ("900201", False)
    assert await changes.add_secret(OLGA, row.id, "900201", OTHER) == ("900201", True)
    assert await changes.add_secret(OLGA, row.id, None, OTHER) == ("900202", False)
    with pytest.raises(ChangeError) as exc:
        await changes.add_secret(OLGA, row.id, None, "a third")
    assert exc.value.code == "secrets_complete"
    assert changes.vault.open_all(changes.store.secrets.of(row.id)) == {"900201": OTHER, "900202": OTHER}
    trail = [e.event for e in changes.store.audit.trail(plan_id=row.id)]
    assert trail.count("secret_received") == 2 and trail.count("secret_replaced") == 1


async def test_a_pasted_password_is_found_in_its_pbx_open_plans_only(changes):
    intent, _ = parse_csv("900201;x;IVR\n", "zadarma")
    row = (await changes.propose(OLGA, "demo", intent, command="CSV")).row
    await changes.add_secret(OLGA, row.id, None, PASSWORD)
    assert (await changes.pasted_secret("demo", PASSWORD))[1] == "900201"
    assert (await changes.pasted_secret("demo", f"here:  {PASSWORD}  ok"))[0].id == row.id
    assert await changes.pasted_secret("demo", PASSWORD[:-1]) is None
    assert await changes.pasted_secret("branch", PASSWORD) is None  # another PBX's chat
    await changes.cancel(OLGA, row.id)
    assert await changes.pasted_secret("demo", PASSWORD) is None  # erased with its plan
