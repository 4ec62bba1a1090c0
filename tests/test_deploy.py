"""The deployment files say what the code does: every config key documented in
the example, the example valid, the unit and compose pointing at real commands."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from bot.config import ConfigError, Settings, load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def keys_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found |= keys_of(annotation, f"{prefix}{name}.")
        else:
            found.add(f"{prefix}{name}")
    return found


def test_the_example_documents_every_key():
    text = (DEPLOY / "config.example.toml").read_text(encoding="utf-8")
    documented = set(re.findall(r"([a-z_]+) =", text))
    documented |= set(re.findall(r"^\[([a-z_]+)\]", text, re.M))  # a table of its own: [phone_dids]
    missing = []
    for key in keys_of(Settings):
        if key == "pbx":  # [pbx.<name>], below; pbx_budget's keys are checked here
            continue
        if key.rsplit(".", 1)[-1] not in documented:
            missing.append(key)
    from bot.config import PbxProfile

    missing += [f"pbx.<name>.{k}" for k in keys_of(PbxProfile) if k not in documented]
    assert missing == []


def test_the_example_and_the_readme_name_every_kind_of_approval():
    from bot.config import DEFAULT_APPROVALS

    example = tomllib.loads((DEPLOY / "config.example.toml").read_text(encoding="utf-8"))
    assert example["policy"]["approvals"] == DEFAULT_APPROVALS
    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"^approvals = (\{.*?\})", readme, re.M)
    assert shown is not None
    assert tomllib.loads(f"a = {shown.group(1)}")["a"] == DEFAULT_APPROVALS


def test_the_example_is_valid_but_for_its_secret_files():
    data = tomllib.loads((DEPLOY / "config.example.toml").read_text(encoding="utf-8"))
    with pytest.raises(ConfigError) as err:
        load_settings(DEPLOY / "config.example.toml")
    assert all("cannot read" in p for p in err.value.problems), err.value.problems
    assert data["telegram"]["groups"] == {"-1001234567890": "office"}


def test_the_unit_and_compose_run_real_commands():
    unit = (DEPLOY / "pbxbot.service").read_text()
    assert "ExecStart=/opt/pbxbot/bin/pbxbot run" in unit and "User=pbxbot" in unit
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "pbxbot migrate && exec pbxbot run" in compose and "POSTGRES_PASSWORD_FILE" in compose
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "USER pbxbot" in dockerfile and 'CMD ["pbxbot", "health"]' in dockerfile


def test_compose_runs_webhook_mode_on_a_documented_port_and_secrets_are_ignored():
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "PBXBOT_TELEGRAM__MODE: webhook" in compose  # replicas cannot poll
    assert "127.0.0.1:${PBXBOT_PORT:-8080}:8080" in compose and "--scale bot=2" in compose
    ignored = (DEPLOY.parent / ".gitignore").read_text().split()
    assert "/deploy/secrets/" in ignored and "/deploy/config.toml" in ignored


def _key_paths(text: str, marker: str) -> set[str]:
    """The /api/v3 paths after `marker`, on its line and the continuation lines below it."""
    rows = text[text.index(marker) :].split("\n")
    found = set(re.findall(r"/api/v3/([a-z-]+)", rows[0]))
    for row in rows[1:]:
        if re.search(r"(write|read):", row) or "/api/v3/" not in row:
            break
        found |= set(re.findall(r"/api/v3/([a-z-]+)", row))
    return found


def test_one_least_privilege_key_list():
    from bot.entry.check import READS, WRITES

    readme = (DEPLOY.parent / "README.md").read_text(encoding="utf-8")
    example = (DEPLOY / "config.example.toml").read_text(encoding="utf-8")
    for text, write, read in ((readme, "- write:", "- read:"), (example, "#   write:", "#   read:")):
        assert _key_paths(text, write) == set(WRITES)
        assert _key_paths(text, read) == set(READS)


def test_the_image_builds_from_what_the_wheel_needs():
    """setuptools refuses to build without the license file `license-files` names."""
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = " ".join(line for line in dockerfile.splitlines() if line.startswith("COPY"))
    for name in (*project["license-files"], project["readme"], "pyproject.toml"):
        assert name in copied and (DEPLOY.parent / name).is_file()
    assert project["license"] == "MIT" and "MIT License" in (DEPLOY.parent / "LICENSE").read_text()
