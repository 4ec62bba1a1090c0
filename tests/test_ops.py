"""Operations: `pbxbot check`, JSON logs, secrets masked in logs, /healthz and
/metrics of a webhook-mode bot."""

from __future__ import annotations

import json
import logging

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from bot.config import load_settings
from bot.entry import logs
from bot.entry.check import run_checks
from bot.entry.cli import main
from sandbox.telegram import TelegramSandbox
from storage.db import MIGRATIONS
from tests.conftest import API_KEY
from tests.personas import ANNA, meet

TOKEN = "555666777:AAE-check-token-secret-part"
GROUP = -1003000000001


@pytest.fixture
async def tg():
    async with TelegramSandbox(TOKEN) as server:
        meet(server, ANNA, profiles=False)
        yield server


def settings_for(sim_url: str, tg_url: str, tmp_path, **overrides):
    values = {
        "pbx": {"office": {"url": sim_url, "api_key": API_KEY}},
        "telegram": {"token": TOKEN, "api_base": tg_url, "groups": {GROUP: "office"}},
        "storage": {"data_dir": str(tmp_path)},
    }
    values.update(overrides)
    return load_settings(None, **values)


async def test_check_reports_each_item_and_fails_on_any(sim, tg, tmp_path):
    tg.add_group(GROUP, "PBX admins", [ANNA], admins=[ANNA], bot_is_admin=False)
    items = {i.name: i for i in await run_checks(settings_for(sim.url, tg.url, tmp_path))}
    assert items["config"].ok and items["database"].ok
    assert not items["database.migrations"].ok and "pbxbot migrate" in items["database.migrations"].detail
    assert items["pbx.office"].ok and items["pbx.office.permissions"].ok
    assert items["telegram"].ok and items["telegram"].detail == "@pbxbot_sandbox_bot"
    group = items[f"telegram.group {GROUP}"]
    assert not group.ok and "may not delete messages" in group.detail  # passwords typed there would stay
    tg.chats[GROUP].bot_is_admin = True
    items = {i.name: i for i in await run_checks(settings_for(sim.url, tg.url, tmp_path))}
    assert items[f"telegram.group {GROUP}"].ok

    # a key the PBX refuses, a PBX that is not there
    bad = settings_for(sim.url, tg.url, tmp_path, pbx={"office": {"url": sim.url, "api_key": "0" * 64}})
    items = {i.name: i for i in await run_checks(bad)}
    assert not items["pbx.office"].ok and "refused" in items["pbx.office"].detail
    gone = settings_for("http://127.0.0.1:9", tg.url, tmp_path)
    items = {i.name: i for i in await run_checks(gone)}
    assert not items["pbx.office"].ok


def test_check_from_the_command_line_exits_1_on_a_failure(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\ndata_dir = "{tmp_path}"\n', encoding="utf-8")
    assert main(["--config", str(config), "migrate"]) == 0
    assert main(["--config", str(config), "--lang", "en", "check"]) == 1  # no bot token
    out = capsys.readouterr().out
    scripts = Config()
    scripts.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(scripts).get_current_head()  # the newest migration, whichever it is
    assert f"✓ database.migrations: at {head}\n" in out and "✗ telegram: no token" in out


def test_json_logs_mask_every_secret(tmp_path, capsys):
    settings = load_settings(
        None,
        pbx={"office": {"url": "http://127.0.0.1:9", "api_key": API_KEY}},
        telegram={"token": TOKEN},
    )
    logs.setup(settings, level=logging.INFO, fmt="json")
    try:
        log = logging.getLogger("pbxbot.test")
        log.warning("calling https://api.telegram.org/bot%s/getMe with key %s", TOKEN, API_KEY)
        try:
            raise RuntimeError(f"boom {TOKEN.split(':')[1]}")
        except RuntimeError:
            log.exception("failed")
    finally:
        logs.setup(None)
    lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()]
    assert [line["level"] for line in lines] == ["warning", "error"]
    text = json.dumps(lines)
    assert TOKEN.split(":")[1] not in text and API_KEY not in text and "***" in text
    assert "boom" in lines[1]["exception"]


def test_policy_traps_name_the_counts_the_approvers_cannot_meet():
    from bot.config import PolicySettings
    from bot.plans.policy import trap_warnings, traps

    one = PolicySettings(admins=[1], operators=[3], approvals={"remove": 2})
    assert [(t.kind, t.need, t.never) for t in traps(one)] == [
        ("add", 1, False),  # Anna's own /addnumber: nobody else may approve it
        ("fix", 1, False),
        ("password", 1, False),
        ("remove", 2, True),  # one approver can never give two approvals
        ("restore", 1, False),
        ("route", 1, False),
        ("undo", 1, False),
    ]
    # self_approve: the proposer's own counts; only what exceeds the approvers is a trap
    alone = PolicySettings(admins=[1], approvals={"remove": 2}, self_approve=True)
    assert trap_warnings(alone) == [("policy.trap_never", {"kinds": "remove = 2", "approvers": 1})]
    # two approvers: remove = 2 is met for an operator's plan, never for an approver's own
    two = PolicySettings(admins=[1], approvers=[2], operators=[3])
    assert trap_warnings(two) == [("policy.trap_proposer", {"kinds": "remove = 2", "approvers": 2})]
    assert trap_warnings(PolicySettings(admins=[1], approvers=[2, 5], operators=[3])) == []
    # a stranger listed nowhere is no approver; an approver listed twice counts once
    assert traps(PolicySettings(admins=[1], approvers=[1], approvals={"add": 2}))[0].approvers == 1


def test_check_warns_of_a_policy_trap_in_russian_and_english(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path}"\n[policy]\nadmins = [1]\napprovers = [2, 5]\n'
        "approvals = { remove = 4 }\n",
        encoding="utf-8",
    )
    main(["--config", str(config), "--lang", "en", "check"])
    out = capsys.readouterr().out
    assert "! policy: [policy] approvals that can never be met with 3 approvers" in out
    assert "remove = 4" in out and "add = 1" not in out
    main(["--config", str(config), "--lang", "ru", "check"])
    out = capsys.readouterr().out
    assert "! policy: Одобрения [policy], которые никогда не набрать при 3 утверждающих" in out


async def test_the_start_warns_of_a_policy_trap(sim, tg, tmp_path, caplog):
    from bot.entry.app import running

    caplog.set_level(logging.WARNING)
    lone = settings_for(sim.url, tg.url, tmp_path, policy={"admins": [ANNA], "approvals": {"remove": 2}})
    async with running(lone, polling_timeout=1):
        pass
    warned = [r.getMessage() for r in caplog.records if r.name == "pbxbot.app"]
    warned = [line for line in warned if "[policy]" in line]
    assert len(warned) == 2, warned
    assert "can never be met with 1 approver (admins included): remove = 2" in warned[0]
    assert "add = 1" in warned[1] and "self_approve" in warned[1]
    caplog.clear()
    fine = settings_for(
        sim.url, tg.url, tmp_path, policy={"admins": [ANNA], "approvals": {"remove": 1}, "self_approve": True}
    )
    async with running(fine, polling_timeout=1):
        pass
    assert not [r for r in caplog.records if "[policy]" in r.getMessage()]
