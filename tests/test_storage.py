"""Storage on SQLite and PostgreSQL: migrations, locks, compare-and-set, the
append-only audit trail, secrets sealed at rest."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from bot.plans.vault import Vault, VaultError
from storage.aio import AsyncRepos
from storage.db import database_url, migrate
from storage.tables import AuditRow, PlanRow, utcnow


def plan_row(pbx: str = "office", **fields) -> PlanRow:
    now = utcnow()
    values = dict(
        id="",
        pbx=pbx,
        kind="add",
        status="proposed",
        proposer_id=1,
        expires_at=now + timedelta(hours=24),
        fingerprint="f",
        steps=[{"kind": "create_provider", "after": {"username": "847900"}}],
    )
    values.update(fields)
    return PlanRow(**values)


def test_migrations_create_every_table_and_run_twice(engine):
    migrate(engine)  # idempotent
    tables = set(inspect(engine).get_table_names())
    assert {"plans", "approvals", "audit_events", "locks", "secrets", "chats", "alembic_version"} <= tables


def test_head_is_alembics_head_and_a_database_there_is_not_handed_to_alembic(engine):
    """storage.db.HEAD names the newest migration; the bot's start-up at head never
    imports alembic (a process of its own, as the bot starts)."""
    from alembic.script import ScriptDirectory

    from storage.db import HEAD, alembic_config, revision_of

    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == HEAD
    assert revision_of(engine) == HEAD
    if engine.dialect.name != "sqlite":
        return  # the probe below opens the database by its URL: PostgreSQL's test schema is not in it
    url = engine.url.render_as_string(hide_password=False)
    probe = (
        "import sys; from storage.db import make_engine, migrate; "
        f"migrate(make_engine({url!r})); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert ran.stdout.strip() == "[]"


def test_a_database_behind_head_is_brought_there(engine):
    from alembic import command

    from storage.db import HEAD, alembic_config, revision_of

    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
    assert revision_of(engine) == "0005"
    migrate(engine)
    assert revision_of(engine) == HEAD and "mirror" in inspect(engine).get_table_names()


def test_a_plan_id_drawn_twice_is_drawn_again_and_nothing_of_the_first_try_stays(store, monkeypatch):
    """The plan, its locks and its events are inserted at once; an id already taken fails
    the insert, which is rolled back whole and tried with a new id."""
    import storage.repos as repos_module

    first = plan_row()
    assert store.add_plan(first, ["847706"]) is None
    drawn = iter([first.id, first.id, "c0ffee"])
    monkeypatch.setattr(repos_module._secrets, "token_hex", lambda _n: next(drawn))
    second = plan_row()
    event = lambda row: [AuditRow(plan_id=row.id, pbx="office", event="proposed", detail={})]  # noqa: E731
    assert store.add_plan(second, ["847900"], event) is None
    assert second.id == "c0ffee" and store.plans.get("c0ffee") is not None
    assert store.plans.get(first.id).steps == first.steps  # the first plan untouched
    assert [e.plan_id for e in store.audit.trail() if e.event == "proposed"] == ["c0ffee"]
    assert store.locks.conflict("office", ["847900"]).plan_id == "c0ffee"


def test_a_plan_round_trips_with_its_json_and_aware_times(store):
    row = plan_row(summary={"logins": ["847900"], "destination": "Главное меню"})
    assert store.add_plan(row, ["847900"]) is None
    loaded = store.plans.get(row.id)
    assert len(row.id) == 6 and loaded.summary["destination"] == "Главное меню"
    assert loaded.steps[0]["after"]["username"] == "847900"
    assert loaded.expires_at.tzinfo is not None and loaded.expires_at > utcnow()


def test_two_open_plans_cannot_lock_one_login(store):
    first = plan_row()
    assert store.add_plan(first, ["847706", "847900"]) is None
    second = plan_row()
    conflict = store.add_plan(second, ["847900", "847901"])
    assert conflict is not None and conflict.plan_id == first.id
    assert conflict.logins == ["847900"]  # only the login both want, not 847706 nor 847901
    assert conflict.since <= utcnow()
    assert store.plans.get(second.id) is None  # nothing of it stored
    assert store.add_plan(plan_row(pbx="branch"), ["847900"]) is None  # another PBX: free
    store.locks.release(first.id)
    assert store.add_plan(plan_row(), ["847900"]) is None


def test_transition_is_compare_and_set(store):
    row = plan_row()
    store.add_plan(row)
    assert store.plans.transition(row.id, ["proposed"], "approved")
    assert not store.plans.transition(row.id, ["proposed"], "approved")  # someone else won
    assert store.plans.transition(row.id, ["approved"], "applying")
    assert store.plans.get(row.id).status == "applying"


def test_expiry_finds_open_plans_past_their_time(store):
    old = plan_row(expires_at=utcnow() - timedelta(minutes=1))
    new = plan_row()
    store.add_plan(old)
    store.add_plan(new)
    assert [r.id for r in store.plans.due(["proposed"], utcnow())] == [old.id]


def test_the_audit_trail_is_append_only_in_the_database(store, engine):
    store.audit.add(AuditRow(event="proposed", detail={"steps": 4}), AuditRow(event="approval"))
    assert [e.event for e in store.audit.trail()] == ["proposed", "approval"]
    for statement in ("UPDATE audit_events SET event = 'forged'", "DELETE FROM audit_events"):
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text(statement))
    assert store.audit.count() == 2


def test_secrets_are_sealed_at_rest_and_erased(store, engine, tmp_path):
    vault = Vault.from_file(tmp_path / "secret.key")
    row = plan_row()
    store.add_plan(row)
    store.secrets.put_all(row.id, vault.seal_all({"847900": "pa55-word"}))
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT token FROM secrets")).scalar_one()
    assert "pa55" not in raw
    assert vault.open_all(store.secrets.of(row.id)) == {"847900": "pa55-word"}
    assert store.secrets.erase_all(row.id) == 1 and store.secrets.of(row.id) == {}


def test_the_generated_key_file_is_private_and_stable(tmp_path):
    path = tmp_path / "data" / "secret.key"
    first = Vault.from_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = first.seal("x")
    assert Vault.from_file(path).open(token) == "x"
    with pytest.raises(VaultError):
        Vault.from_file(tmp_path / "other.key").open(token)
    assert "key" not in repr(first).replace("key hidden", "")


def test_default_database_is_sqlite_under_the_data_dir(tmp_path):
    url = database_url(None, tmp_path / "data")
    assert url == f"sqlite:///{(tmp_path / 'data' / 'pbxbot.db').resolve()}"
    assert database_url("postgresql+psycopg://x@h/db", tmp_path) == "postgresql+psycopg://x@h/db"


def test_several_repos_write_in_one_transaction_or_not_at_all(store):
    row = plan_row()
    assert store.add_plan(row, ["847900"]) is None
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.plans.update(row.id, status="cancelled")
        tx.locks.release(row.id)
        assert tx.locks.holder("office", ["847900"]) is None  # seen inside the transaction
        raise RuntimeError("the block fails")
    assert store.plans.get(row.id).status == "proposed"  # neither write landed
    assert store.locks.holder("office", ["847900"]) == row.id
    with store.transaction() as tx:
        tx.plans.update(row.id, status="cancelled")
        tx.locks.release(row.id)
    assert store.plans.get(row.id).status == "cancelled"
    assert store.locks.holder("office", ["847900"]) is None


async def test_the_repos_awaited_run_off_the_event_loop(store):
    db = AsyncRepos(store, threads=2)
    try:
        row = plan_row()
        assert await db.add_plan(row, ["847900"]) is None
        assert (await db.plans.get(row.id)).id == row.id
        assert await db.locks.holder("office", ["847900"]) == row.id
        assert await db.run(threading.current_thread) is not threading.current_thread()
        assert db.plans is db.plans  # each repo wrapped once
    finally:
        db.close()
