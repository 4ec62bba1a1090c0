"""The core's error tree (bot/errors.py), how it is worded, and the handlers'
side of it: no try-ladders over the core's errors, button data as enums."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bot.errors as tree
from bot.entry.metrics import Metrics
from bot.errors import (
    BotError,
    ChangeError,
    ConfigError,
    DigestUsage,
    InputError,
    PlanError,
    UsageError,
    VaultError,
    expected,
)
from bot.text.i18n import CATALOGUES
from bot.text.render import Html, error_text
from handlers.access import Observe
from handlers.buttons import Button, FixButton, PlanAction, PlanButton, SecretPick, outdated
from pbx import errors as pbx_errors
from pbx.errors import PbxError, PbxMalformed

ROOT = Path(__file__).resolve().parents[1]
KINDS = {
    UsageError: "usage",
    InputError: "usage",
    DigestUsage: "digest",
    PlanError: "plan_error",
    ChangeError: "change",
    VaultError: "cli",
    ConfigError: "cli",
}


def test_every_error_of_the_core_is_in_the_tree_and_keeps_its_old_home():
    from bot.config import ConfigError as config_error
    from bot.plans.changes import ChangeError as change_error
    from bot.plans.commands import UsageError as usage_error
    from bot.plans.planner import PlanError as plan_error
    from bot.plans.validate import InputError as input_error
    from bot.plans.vault import VaultError as vault_error
    from bot.routing.digest import DigestUsage as digest_usage

    assert [config_error, change_error, usage_error, plan_error, input_error, vault_error, digest_usage] == [
        ConfigError,
        ChangeError,
        UsageError,
        PlanError,
        InputError,
        VaultError,
        DigestUsage,
    ]
    defined = {cls for cls in vars(tree).values() if isinstance(cls, type) and cls.__module__ == "bot.errors"}
    assert defined == {BotError, *KINDS}
    for cls, catalogue in KINDS.items():
        assert issubclass(cls, BotError) and cls.catalogue == catalogue


@pytest.mark.parametrize(
    "error",
    [
        UsageError("missing_arrow", "route"),
        InputError("bad_host", "addnumber", host="<b>"),
        DigestUsage("bad_time", value="<b>"),
        PlanError("number_unknown", number="<b>"),
        ChangeError("no_plan", plan="<b>"),
        VaultError("vault_unreadable", path="<b>", error="denied"),
        ConfigError(["<b>: no such config file", "pbx: name a profile"]),
    ],
    ids=lambda e: type(e).__name__,
)
@pytest.mark.parametrize("lang", ["ru", "en"])
def test_each_kind_is_worded_from_its_key_with_values_escaped(error: BotError, lang: str):
    assert error.key in CATALOGUES[lang]
    plain = error_text(error, lang)
    html = error_text(error, lang, html=True)
    assert isinstance(html, Html) and "<b>" not in html
    assert plain and plain != error.key and "{" not in plain
    if "<b>" in str(error.params):
        assert "<b>" in plain and "&lt;b&gt;" in html
    assert expected(error)


def test_str_is_the_log_s_wording_and_a_usage_error_names_its_usage():
    assert str(ChangeError("no_plan", plan="x")) == "no_plan: {'plan': 'x'}"
    assert str(UsageError("missing_arrow", "route")).endswith("Usage: /route <login|phone> → <destination>")
    assert str(ConfigError(["a", "b"])) == "a\nb"
    assert str(VaultError("vault_wrong_key")) == "a stored secret does not open with this key"


def test_a_pbx_failure_is_expected_and_worded_a_bug_is_neither():
    malformed = PbxMalformed("office: GET /sip-providers: the PBX answered something unexpected")
    assert expected(malformed) and "GET /sip-providers" in error_text(malformed, "en")
    assert not expected(RuntimeError("a bug")) and not expected(KeyError("x"))


# ---------------------------------------------------------------------- no try-ladders in handlers

CORE_ERRORS = {cls.__name__ for cls in (BotError, *KINDS)} | {
    name
    for name, value in vars(pbx_errors).items()
    if isinstance(value, type) and issubclass(value, PbxError)
}


def _names(node: ast.expr | None) -> list[str]:
    if node is None:
        return []
    if isinstance(node, ast.Tuple):
        return [name for element in node.elts for name in _names(element)]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    return [node.id] if isinstance(node, ast.Name) else []


def ladders(source: str) -> list[int]:
    """Lines of the `try:`s that catch more than one of the core's (or the PBX's)
    errors: two `except`s, or one `except` naming several."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Try):
            caught = [n for handler in node.handlers for n in _names(handler.type) if n in CORE_ERRORS]
            if len(caught) > 1:
                found.append(node.lineno)
    return found


def test_no_handler_holds_a_try_ladder_over_the_core_s_errors():
    found = {
        path.name: lines
        for path in sorted((ROOT / "handlers").glob("*.py"))
        if (lines := ladders(path.read_text(encoding="utf-8")))
    }
    assert not found, f"answer these in handlers/errors.py instead: {found}"


def test_the_ladder_finder_finds_a_planted_ladder_and_only_a_ladder():
    ladder = (
        "async def f():\n"
        "    try:\n        await g()\n"
        "    except (UsageError, PlanError) as exc:\n        pass\n"
        "    try:\n        await g()\n"
        "    except ChangeError:\n        pass\n"
        "    except errors.PbxError:\n        pass\n"
    )
    assert ladders(ladder) == [2, 6]
    narrow = (
        "try:\n    g()\nexcept ChangeError:\n    pass\n"
        "try:\n    g()\nexcept TelegramBadRequest:\n    pass\nexcept TimeoutError:\n    pass\n"
    )
    assert ladders(narrow) == []


# ---------------------------------------------------------------------- buttons


def test_button_data_keep_the_wire_format_cards_already_carry():
    assert PlanButton(action=PlanAction.APPROVE, plan="7f3a2c", version=2).pack() == "pl:a:7f3a2c:2"
    assert [a.value for a in PlanAction] == ["a", "r", "c"]
    for letter, action in (("a", PlanAction.APPROVE), ("r", PlanAction.REJECT), ("c", PlanAction.CANCEL)):
        unpacked = PlanButton.unpack(f"pl:{letter}:7f3a2c:3")
        assert unpacked.action is action and unpacked.plan == "7f3a2c" and unpacked.version == 3
    assert FixButton(key="0123456789").pack() == "fx:0123456789"
    assert SecretPick(hold=5, choice=-1).pack() == "pw:5:-1"
    with pytest.raises(ValueError):
        PlanButton.unpack("pl:approve:7f3a2c:3")


def test_outdated_is_a_prefix_of_ours_only():
    assert {kind.value for kind in Button} == {"pl", "fx", "pw", "dr", "np"}
    assert outdated("pl:approve:7f3a2c:3") and outdated("fx") and outdated("pw:1:x")
    assert not outdated("zz:1") and not outdated("") and not outdated(None) and not outdated("plx:a")


# ---------------------------------------------------------------------- metrics


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [(ChangeError("no_plan", plan="x"), "handled"), (PbxError("down"), "handled"), (RuntimeError(), "error")],
)
async def test_a_refusal_counts_as_handled_a_bug_as_an_error(exc: Exception, outcome: str):
    metrics = Metrics()

    async def handler(event, data):
        raise exc

    with pytest.raises(type(exc)):
        await Observe(metrics)(handler, object(), {})
    assert metrics.updates.labels("update", outcome)._value.get() == 1
