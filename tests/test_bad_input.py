"""Bad local input: the real CLI (`bot.entry.cli.main`) answers with one line, exit 2,
no traceback — files, passwords, config values, the data directory and the key;
plus the private chat's refusal of a password that breaks a rule."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from bot.config import ConfigError, exposed_secret_files, load_settings
from bot.entry.cli import main
from bot.entry.wiring import open_store, open_vault
from bot.plans.vault import VaultError
from tests.personas import OLGA
from tests.test_bot_e2e import (
    GROUP,
    World,
    world,  # noqa: F401 (the fixture)
)

ADD = "/addnumber zadarma 847900 → IVR"


def _one_line(capsys, *words: str) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- pbxbot plan --csv / --password-file


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_a_csv_file_that_is_missing_a_directory_or_binary_is_one_line_and_exit_2(tmp_path, capsys, lang):
    argv = ["--lang", lang, "plan", "--sandbox", "--provider", "zadarma", "--csv"]
    assert main([*argv, str(tmp_path / "nope.csv")]) == 2
    _one_line(capsys, "nope.csv", "no such file" if lang == "en" else "нет такого файла")
    assert main([*argv, str(tmp_path)]) == 2
    _one_line(capsys, "directory" if lang == "en" else "каталог")
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    assert main([*argv, str(binary)]) == 2
    _one_line(capsys, "CSV")


def test_csv_files_in_cp1251_and_utf8_with_a_bom_are_read(tmp_path, capsys):
    text = "логин;пароль;назначение\n847900;pw-1;IVR\n847901;pw-2;Sales\n"
    for name, data in (("bom.csv", b"\xef\xbb\xbf" + text.encode()), ("win.csv", text.encode("cp1251"))):
        path = tmp_path / name
        path.write_bytes(data)
        code = main(["--lang", "en", "plan", "--sandbox", "--csv", str(path), "--provider", "zadarma"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert "847900" in captured.out and "847901" in captured.out and "pw-" not in captured.out


def test_a_csv_row_with_a_bad_password_is_refused_before_the_pbx_naming_line_and_rule(tmp_path, capsys):
    path = tmp_path / "n.csv"
    path.write_text('847900,ok,IVR\n847901,"pw1\n[SIP-TRUNK-1](+)\ncontext=internal",IVR\n', encoding="utf-8")
    argv = ["--lang", "en", "plan", "--sandbox", "--csv", str(path), "--provider", "zadarma", "--apply"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("CSV line 4: The SIP password holds a line break") and "pw1" not in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, ("no such file",)),
        ("", ("password is empty",)),
        ("\n", ("password is empty",)),
        ("pw1\n[SIP-TRUNK-1](+)\ncontext=internal\n", ("line break",)),
        ("s3cret\n\n", ("line break",)),
        (" s3cret\n", ("space",)),
        ("s3c;ret", ("';'",)),
    ],
)
def test_a_password_file_that_is_missing_empty_or_breaks_a_rule_is_one_line_and_exit_2(
    tmp_path, capsys, content, words
):
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    argv = ["--lang", "en", "plan", "--sandbox", ADD, "--apply", "--password-file", str(path)]
    assert main(argv) == 2
    line = _one_line(capsys, *words)
    assert "s3c" not in line and "pw1" not in line


def test_a_password_file_that_is_a_directory_or_not_utf8(tmp_path, capsys):
    argv = ["--lang", "ru", "plan", "--sandbox", ADD, "--apply", "--password-file"]
    assert main([*argv, str(tmp_path)]) == 2
    _one_line(capsys, "каталог")
    path = tmp_path / "pw"
    path.write_bytes(b"\xff\xfe\x00")
    assert main([*argv, str(path)]) == 2
    _one_line(capsys, "UTF-8")


def test_one_trailing_line_end_of_a_password_file_is_dropped(tmp_path, capsys):
    path = tmp_path / "pw"
    path.write_bytes(b"Very-Secret-1\r\n")
    argv = ["--lang", "en", "plan", "--sandbox", ADD, "--apply", "--password-file", str(path)]
    assert main(argv) == 0, capsys.readouterr()
    assert "Very-Secret-1" not in capsys.readouterr().out


# --- the config


def _config(tmp_path: Path, text: str, top: str = "") -> Path:
    path = tmp_path / "c.toml"
    path.write_text(top + f'[storage]\ndata_dir = "{tmp_path / "data"}"\n' + text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('timezone = "Mars/Olympus_Mons"\n', ("timezone", "unknown time zone")),
        ('timezone = "../../etc/passwd"\n', ("timezone", "unknown time zone")),
        ("[storage.x]\n", ("unknown key",)),
    ],
)
def test_bad_config_values_are_refused_by_run_and_by_check(tmp_path, capsys, text, words):
    config = _config(tmp_path, "", top=text) if "[" not in text else _config(tmp_path, text)
    assert main(["--config", str(config), "--lang", "en", "migrate"]) == 2
    _one_line(capsys, "config", *words)
    assert main(["--config", str(config), "--lang", "en", "check"]) == 2
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("✗ config:") and words[0] in out


def test_a_bad_fernet_key_and_an_unsupported_database_are_config_problems(tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("not-a-key\n", encoding="utf-8")
    for extra in (
        '\nsecret_key = "abc"\n',
        f'\nsecret_key_file = "{key_file}"\n',
        '\nurl = "mysql://u:p@localhost/pbxbot"\n',
        '\nurl = "::not a url::"\n',
    ):
        path = tmp_path / "c.toml"
        path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"' + extra, encoding="utf-8")
        assert main(["--config", str(path), "--lang", "ru", "migrate"]) == 2
        line = _one_line(capsys, "конфигурация: storage")
        assert "abc" not in line and "not-a-key" not in line
        assert main(["--config", str(path), "--lang", "en", "check"]) == 2
        assert capsys.readouterr().out.startswith("✗ config: storage")
    with pytest.raises(ConfigError):
        load_settings(None, storage={"url": "sqlite+aiosqlite:///x.db"})
    settings = load_settings(None, storage={"url": "postgresql://u@h/db"})
    assert settings.storage.url == "postgresql+psycopg://u@h/db"  # the driver pbxbot installs
    good = Fernet.generate_key().decode()
    assert load_settings(None, storage={"secret_key": good}).storage.secret_key is not None


def test_a_binary_config_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    assert main(["--config", str(path), "--lang", "en", "check"]) == 2
    assert "not a text file" in capsys.readouterr().out
    assert main(["--config", str(path), "--lang", "en", "migrate"]) == 2
    _one_line(capsys, "not a text file")
    token = tmp_path / "token"
    token.write_bytes(b"\xff\xfe\x00")
    path.write_text(f'[telegram]\ntoken_file = "{token}"\n', encoding="utf-8")
    assert main(["--config", str(path), "--lang", "en", "migrate"]) == 2
    _one_line(capsys, "not UTF-8")


# --- the data directory, the database file, the key file


def test_the_data_dir_is_made_0700_and_the_sqlite_file_0600(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        config = _config(tmp_path, "")
        assert main(["--config", str(config), "migrate"]) == 0
    finally:
        os.umask(old)
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "pbxbot.db").stat().st_mode) == 0o600
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "pbxbot.db").touch(mode=0o644)
    (loose / "pbxbot.db").chmod(0o644)
    store = open_store(load_settings(None, storage={"data_dir": str(loose)}))
    store.engine.dispose()
    assert stat.S_IMODE((loose / "pbxbot.db").stat().st_mode) == 0o600  # an own file is tightened


def test_an_unusable_data_dir_is_one_line_and_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    for data_dir, lang, words in (
        (blocker / "data", "en", ("data directory",)),
        (blocker, "ru", ("каталог данных",)),
    ):
        path = tmp_path / "c.toml"
        path.write_text(f'[storage]\ndata_dir = "{data_dir}"\n', encoding="utf-8")
        assert main(["--config", str(path), "--lang", lang, "migrate"]) == 2
        _one_line(capsys, str(data_dir), *words)
        assert main(["--config", str(path), "--lang", lang, "plan", "--sandbox", ADD]) == 0  # a temp dir
        capsys.readouterr()
        assert main(["--config", str(path), "--lang", "en", "check"]) == 1
        out = capsys.readouterr().out
        assert "✗ database: data directory" in out and "Traceback" not in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0500 directory")
def test_a_read_only_data_dir_is_one_line(tmp_path, capsys):
    data = tmp_path / "ro"
    data.mkdir(mode=0o500)
    path = tmp_path / "c.toml"
    path.write_text(f'[storage]\ndata_dir = "{data}"\n', encoding="utf-8")
    assert main(["--config", str(path), "--lang", "en", "migrate"]) == 2
    _one_line(capsys, "data directory")


def test_a_bad_generated_key_file_is_one_line_and_a_check_failure(tmp_path, capsys):
    config = _config(tmp_path, "", top="")
    config.write_text(
        config.read_text(encoding="utf-8") + '[pbx.office]\nurl = "http://127.0.0.1:9"\napi_key = "k"\n',
        encoding="utf-8",
    )
    assert main(["--config", str(config), "migrate"]) == 0
    key = tmp_path / "data" / "secret.key"
    key.write_text("garbage", encoding="utf-8")
    with pytest.raises(VaultError) as err:
        open_vault(load_settings(config))
    assert err.value.code == "vault_bad_key" and "garbage" not in str(err.value)
    argv = ["--config", str(config), "--lang", "en", "plan", "--pbx", "office", "/route 847900 → IVR"]
    assert main(argv) == 2  # the key is opened before any PBX call
    line = _one_line(capsys, str(key), "not a Fernet key")
    assert "garbage" not in line
    assert main(["--config", str(config), "--lang", "en", "check"]) == 1
    out = capsys.readouterr().out
    assert "✗ vault: " in out and "not a Fernet key" in out and "garbage" not in out
    key.unlink()
    assert main(["--config", str(config), "--lang", "en", "check"]) == 1
    assert "✓ vault: no key yet" in capsys.readouterr().out and not key.exists()  # check makes nothing


# --- secret files other users may read


def test_secret_files_readable_by_others_are_a_warning_in_check_and_at_start(tmp_path, capsys):
    token = tmp_path / "token"
    token.write_text("123:abc\n", encoding="utf-8")
    token.chmod(0o644)
    key = tmp_path / "office.key"
    key.write_text("k" * 32, encoding="utf-8")
    key.chmod(0o600)
    config = _config(
        tmp_path,
        f'[telegram]\ntoken_file = "{token}"\n'
        f'[pbx.office]\nurl = "http://127.0.0.1:9"\napi_key_file = "{key}"\n',
    )
    settings = load_settings(config)
    assert [(k, m) for k, _, m in exposed_secret_files(settings)] == [("telegram.token_file", "0644")]
    token.chmod(0o640)
    foreign_group = os.stat(token).st_gid not in {os.getegid(), *os.getgroups()}
    assert bool(exposed_secret_files(settings)) == foreign_group  # 0640 with the bot's own group is fine
    token.chmod(0o604)
    assert main(["--config", str(config), "migrate"]) == 0
    code = main(["--config", str(config), "--lang", "en", "check"])
    out = capsys.readouterr().out
    assert code == 1  # the PBX and Telegram are not there; the warning itself fails nothing
    warning = [line for line in out.splitlines() if line.startswith("! telegram.token_file")]
    assert warning and "0604" in warning[0] and "chmod 600" in warning[0]


def test_run_logs_the_warning_at_start(tmp_path, capsys, monkeypatch):
    import contextlib

    import bot.entry.app

    @contextlib.asynccontextmanager
    async def stopped(settings, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C right after the start
        yield

    monkeypatch.setattr(bot.entry.app, "running", stopped)
    token = tmp_path / "token"
    token.write_text("123:abc\n", encoding="utf-8")
    token.chmod(0o644)
    config = _config(tmp_path, f'[telegram]\ntoken_file = "{token}"\n')
    assert main(["--config", str(config), "--lang", "en", "run"]) == 130
    err = capsys.readouterr().err
    assert re.search(r"WARNING .*telegram\.token_file .*token \(mode 0644\) can be read by other users", err)
    assert "123:abc" not in err


# --- the private chat: a password that breaks a rule is refused with the rule, never echoed


async def test_a_password_with_a_line_break_in_private_is_refused_with_the_rule(world: World):  # noqa: F811
    w = world
    w.tg.started.add(OLGA)
    start = w.mark()
    w.tg.send(OLGA, GROUP, ADD)
    await w.said(OLGA, "SIP-пароль", after=start)
    bad = "pw1\n[SIP-TRUNK-1](+)\ncontext=internal"
    sent = w.tg.send(OLGA, OLGA, bad)
    await w.tg.wait_for(
        lambda e: e["kind"] == "delete" and e["message_id"] == sent["message_id"], after=start
    )
    refusal = await w.said(OLGA, "перевод строки", after=start)
    assert "pw1" not in refusal["text"] and "context=internal" not in refusal["text"]
    assert await w.app.services.changes.awaiting_secret(OLGA)  # nothing sealed: the password is still owed
    mark = w.mark()
    w.tg.send(OLGA, OLGA, "Zx-847900-secret!")
    await w.said(OLGA, "получен", after=mark)
    assert not await w.app.services.changes.awaiting_secret(OLGA)


async def test_a_csv_in_private_with_a_bad_password_names_the_line_and_the_rule(world: World):  # noqa: F811
    w = world
    start = w.mark()
    data = b'login;password;destination\n900100;ok-1;IVR\n900101;"pw1\n[SIP-TRUNK-1](+)";IVR\n'
    w.tg.send_document(OLGA, OLGA, "numbers.csv", data, "zadarma")
    refusal = await w.said(OLGA, r"CSV, строка 4: .*перевод строки", after=start)
    assert "pw1" not in refusal["text"] and "SIP-TRUNK" not in refusal["text"]
    assert not w.store.plans.find(limit=10)
