"""`pbxbot plan` as an admin runs it: against the in-process sandbox, and against
a simulator over HTTP named in a config file, with a SQLite database."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bot.entry.cli import main
from sandbox.demo import demo_state
from sandbox.mikopbx import MikoPbxSimulator
from tests.conftest import API_KEY


def test_plan_prints_the_steps_and_writes_nothing(capsys):
    assert main(["--lang", "en", "plan", "--sandbox", "/addnumber zadarma 847900 → IVR"]) == 0
    out = capsys.readouterr().out
    assert "4 steps" in out and "create account 847900 @ sip.zadarma.com:5060" in out
    assert "Not applied" in out


def test_usage_and_conflicts_exit_2_in_russian(capsys):
    assert main(["--lang", "ru", "plan", "--sandbox", "/addnumber zadarma 847900"]) == 2
    assert "Поставьте →" in capsys.readouterr().err
    assert main(["--lang", "ru", "plan", "--sandbox", "/addnumber zadarma 847706 → IVR"]) == 2
    assert "уже есть аккаунт" in capsys.readouterr().err


@pytest.fixture
def served_pbx():
    """The demo PBX served over HTTP from a thread of its own, as `pbxbot simulator` would."""
    state = demo_state()
    state.registrar.delay = 0.05
    sim = MikoPbxSimulator(state, api_keys=[API_KEY])
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(sim.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    yield sim
    asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)


def test_apply_against_a_configured_pbx_is_audited_and_keeps_the_password_out(served_pbx, tmp_path, capsys):
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[pbx.office]\nurl = "{served_pbx.url}"\napi_key = "{API_KEY}"\nreload_wait = 0\n',
        encoding="utf-8",
    )
    password = tmp_path / "pw"
    password.write_text("Very-Secret-1\n", encoding="utf-8")
    argv = ["--config", str(config), "--lang", "en", "plan", "--pbx", "office"]
    code = main([*argv, "/addnumber zadarma 847900 → IVR", "--apply", "--password-file", str(password)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Status: applied" in out and "847900: registered" in out
    assert "Very-Secret-1" not in out
    new = [p for p in served_pbx.state.providers.values() if p["username"] == "847900"]
    assert new and new[0]["secret"] == "Very-Secret-1"
    db = b"".join(f.read_bytes() for f in (tmp_path / "data").glob("pbxbot.db*"))  # with the WAL
    assert b"Very-Secret-1" not in db and b"local admin" in db

    csv = tmp_path / "numbers.csv"
    csv.write_text("login;password;destination\n847901;p-1;201\n847902;p-2;Sales\n", encoding="utf-8")
    code = main([*argv, "--csv", str(csv), "--provider", "zadarma", "--apply"])
    assert code == 0, capsys.readouterr()
    for login, destination in (("847901", "201"), ("847902", "2200"), ("847900", "2000")):
        assert served_pbx.simulate_call("sip.zadarma.com", login)["destination"] == destination


def test_doctor_trace_and_digest_from_the_command_line(capsys):
    assert main(["--lang", "en", "doctor", "--sandbox"]) == 0
    assert "nothing wrong found" in capsys.readouterr().out
    assert main(["--lang", "en", "trace", "--sandbox", "847706"]) == 0
    assert "Route 2" in capsys.readouterr().out
    assert main(["--lang", "en", "trace", "--sandbox", "999"]) == 1
    assert main(["--lang", "ru", "digest", "--sandbox"]) == 0  # prints by default
    assert "Сводка маршрутизации" in capsys.readouterr().out


def test_doctor_exits_1_on_an_error(served_pbx, tmp_path, capsys):
    served_pbx.state.routes[2]["extension"] = "2999"  # a destination that does not exist
    config = tmp_path / "config.toml"
    config.write_text(f'[pbx.office]\nurl = "{served_pbx.url}"\napi_key = "{API_KEY}"\n', encoding="utf-8")
    assert main(["--config", str(config), "--lang", "en", "doctor", "--pbx", "office"]) == 1
    assert "[E] Route 2 goes to 2999" in capsys.readouterr().out


def test_doctor_exits_1_when_a_login_lands_on_another_accounts_route(served_pbx, tmp_path, capsys):
    """Two accounts of one host on different ports: separate contexts, no recipe."""
    providers = served_pbx.state.providers
    second = {
        **next(iter(providers.values())),
        "id": "SIP-TRUNK-FFFFFFFF",
        "username": "847900",
        "port": 5080,
    }
    providers[second["id"]] = second
    config = tmp_path / "config.toml"
    config.write_text(f'[pbx.office]\nurl = "{served_pbx.url}"\napi_key = "{API_KEY}"\n', encoding="utf-8")
    assert main(["--config", str(config), "--lang", "en", "doctor", "--pbx", "office"]) == 1
    assert "[E] Calls to 847900 land on route 2 of 847706" in capsys.readouterr().out


def test_password_from_a_file_turns_a_rejected_account_registered(served_pbx, tmp_path, capsys):
    """847706's provider issued a password the PBX does not hold: rejected. `/password`
    with the issued one, from a file: written, judged by the registration, never printed."""
    served_pbx.issue_password("sip.zadarma.com", "847706", "Issued-847706!")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[pbx.office]\nurl = "{served_pbx.url}"\napi_key = "{API_KEY}"\nreload_wait = 0\n',
        encoding="utf-8",
    )
    argv = ["--config", str(config), "--lang", "en", "plan", "--pbx", "office"]
    assert main([*argv, "/password 847706"]) == 0  # a plan only: nothing written, no password asked
    out = capsys.readouterr().out
    assert "new SIP password for account 847706 @ sip.zadarma.com" in out and "•••• → ••••" in out
    assert "never shows a SIP password" in out and "Not applied" in out
    wrong = tmp_path / "wrong"
    wrong.write_text("Not-the-issued-1\n", encoding="utf-8")
    code = main([*argv, "/password 847706", "--apply", "--password-file", str(wrong)])
    out = capsys.readouterr().out
    assert code == 0, out  # written; the registration says it is not the one the provider expects
    assert "Status: applied" in out and "847706: rejected" in out
    right = tmp_path / "right"
    right.write_text("Issued-847706!\n", encoding="utf-8")
    code = main([*argv, "/password 847706", "--apply", "--password-file", str(right)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Status: applied" in out and "847706: registered" in out
    account = next(p for p in served_pbx.state.providers.values() if p["username"] == "847706")
    assert account["secret"] == "Issued-847706!"
    db = b"".join(f.read_bytes() for f in (tmp_path / "data").glob("pbxbot.db*"))
    for secret in (b"Issued-847706!", b"Not-the-issued-1"):
        assert secret not in db and secret.decode() not in out


def test_a_password_typed_in_the_command_is_refused(capsys):
    assert main(["--lang", "en", "plan", "--sandbox", "/password 847706 Secret-typed-1"]) == 2
    err = capsys.readouterr().err
    assert "Never type a password in a command" in err and "Secret-typed-1" not in err


def test_drift_a_command_line_read_finds_is_kept_for_the_bot(served_pbx, tmp_path, capsys):
    """`pbxbot doctor` from cron reads the bot's mirror: a hand edit it is the first to see
    is kept in the audit trail (the bot's /drift and digest list it), not lost."""
    from datetime import UTC, datetime

    from bot.config import load_settings
    from bot.entry.wiring import open_store

    config = tmp_path / "config.toml"
    config.write_text(
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[pbx.office]\nurl = "{served_pbx.url}"\napi_key = "{API_KEY}"\n',
        encoding="utf-8",
    )
    argv = ["--config", str(config), "--lang", "en", "doctor", "--pbx", "office"]
    main(argv)  # the mirror filled
    served_pbx.state.routes[2]["extension"] = "2000"  # the web interface: Sales -> Main menu
    main(argv)
    capsys.readouterr()
    store = open_store(load_settings(config))
    events = store.audit.since("office", datetime(2000, 1, 1, tzinfo=UTC), ("drift",))
    store.engine.dispose()
    assert [(e.detail["kind"], e.detail["what"]) for e in events] == [("route", "changed")]
