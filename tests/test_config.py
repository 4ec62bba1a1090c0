from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import DEFAULT_RATE_LIMIT_PER_MIN, MIKOPBX_RATE_LIMIT_PER_MIN, ConfigError, load_settings


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_profiles_from_file_and_environment(tmp_path, monkeypatch):
    key_file = write(tmp_path, "a" * 64 + "\n", "key")
    ca = write(tmp_path, "-----BEGIN CERTIFICATE-----", "ca.pem")
    config = write(
        tmp_path,
        f"""
[pbx.office]
url = "https://pbx.office.local/"
api_key_file = "{key_file}"
verify_tls = "{ca}"

[pbx.branch]
url = "http://10.0.0.2"
login = "admin"
password = "secret"
timeout = 5
""",
    )
    monkeypatch.setenv("PBXBOT_PBX__BRANCH__TIMEOUT", "7.5")
    monkeypatch.setenv("PBXBOT_CONFIG", str(config))
    settings = load_settings()
    office, branch = settings.pbx["office"], settings.pbx["branch"]
    assert office.url == "https://pbx.office.local"
    assert office.api_key.get_secret_value() == "a" * 64
    assert office.verify_tls == ca
    assert office.rate_limit_per_min == DEFAULT_RATE_LIMIT_PER_MIN < MIKOPBX_RATE_LIMIT_PER_MIN
    assert branch.timeout == 7.5 and branch.password.get_secret_value() == "secret"
    assert settings.profile("office")[0] == "office"
    with pytest.raises(ConfigError):
        settings.profile()  # two profiles: the name is needed


def test_a_profile_from_the_environment_alone(monkeypatch):
    monkeypatch.delenv("PBXBOT_CONFIG", raising=False)
    monkeypatch.setenv("PBXBOT_PBX__MAIN__URL", "https://pbx")
    monkeypatch.setenv("PBXBOT_PBX__MAIN__API_KEY", "k")
    name, profile = load_settings().profile()
    assert name == "main" and profile.api_key.get_secret_value() == "k"
    assert "k" not in repr(profile).replace("api_key", "")


def test_every_problem_gets_one_clear_line(tmp_path):
    config = write(
        tmp_path,
        """
[pbx.a]
url = "ftp://pbx"
api_key = "k"

[pbx.b]
url = "https://pbx"

[pbx.c]
url = "https://pbx"
api_key = "k"
login = "admin"
password = "x"

[pbx.d]
url = "https://pbx"
api_key = "k"
rate_limit_per_min = 0
verfy_tls = false

[pbx.e]
url = "https://pbx"
api_key_file = "/nonexistent/key"
""",
    )
    with pytest.raises(ConfigError) as err:
        load_settings(config)
    assert sorted(err.value.problems) == [
        "pbx.a.url: must start with http:// or https://",
        "pbx.b: needs api_key (or api_key_file), or login + password",
        "pbx.c: give an API key or login + password, not both",
        "pbx.d.rate_limit_per_min: Input should be greater than or equal to 1",
        "pbx.d.verfy_tls: unknown key",
        "pbx.e: cannot read api_key file /nonexistent/key: No such file or directory",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[pbx.a\nurl=1", "not valid TOML"), (None, "no such config file")],
)
def test_unreadable_files(tmp_path, text, problem):
    path = write(tmp_path, text) if text is not None else tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert problem in err.value.problems[0]


def test_cli_prints_problems_without_a_traceback(tmp_path):
    config = write(tmp_path, '[pbx.a]\nurl = "https://pbx"\napi_key = "sekret-key"\ntypo = 1\n')
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.entry.cli",
            "--lang",
            "en",
            "--config",
            str(config),
            "numbers",
            "--pbx",
            "a",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip() == "config: pbx.a.typo: unknown key"
    assert "sekret-key" not in run.stderr + run.stdout


def test_the_example_config_documents_only_real_keys(tmp_path):
    example = (Path(__file__).parents[1] / "deploy" / "config.example.toml").read_text(encoding="utf-8")
    for name in ("bot-token", "office.key"):
        (tmp_path / name).write_text("value\n")
        example = example.replace(f"/etc/pbxbot/{name}", str(tmp_path / name))
    settings = load_settings(write(tmp_path, example))
    assert settings.pbx["office"].api_key.get_secret_value() == "value"
    assert settings.telegram.token.get_secret_value() == "value"


def test_policy_section_defaults_and_partial_approvals(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[policy]\nadmins = [1]\napprovals = { remove = 3 }\nself_approve = true\n")
    policy = load_settings(path).policy
    assert policy.approvals == {
        "add": 1,
        "route": 1,
        "remove": 3,
        "undo": 1,
        "fix": 1,
        "restore": 1,
        "password": 1,
    }
    assert policy.admins == [1] and policy.self_approve and policy.expiry_hours == 24
    path.write_text("[policy]\napprovals = { delete = 1 }\n")
    with pytest.raises(ConfigError):
        load_settings(path)
