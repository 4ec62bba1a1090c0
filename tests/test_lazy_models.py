"""bot/entry/lazy_models.py patches a private pydantic hook to keep aiogram's ~300 types unbuilt
until used (~100 MB of resident memory). These tests fail when an aiogram or pydantic
release changes what it relies on: then either drop the patch or adapt it, and move the
version bounds in pyproject.toml."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import aiogram.types
from pydantic import BaseModel

from bot.entry import lazy_models

ROOT = Path(__file__).resolve().parents[1]

# A fresh process (this one's types are built by other tests): import the app, then use it.
PROBE = """
import json, sys, types
if sys.argv[1] == "without":
    sys.modules["bot.entry.lazy_models"] = types.ModuleType("bot.entry.lazy_models")
import bot.entry.app
import aiogram.types as at
from aiogram.methods import SendMessage
from pydantic import BaseModel, ValidationError
models = [m for m in vars(at).values() if isinstance(m, type) and issubclass(m, BaseModel)]
built_at_import = sum(m.__pydantic_complete__ for m in models)
update = at.Update.model_validate({"update_id": 5, "message": {
    "message_id": 9, "date": 1700000000, "text": "/numbers x",
    "entities": [{"type": "bot_command", "offset": 0, "length": 8}],
    "chat": {"id": -100, "type": "supergroup", "title": "PBX"},
    "from": {"id": 7, "is_bot": False, "first_name": "Olga", "language_code": "ru"},
    "reply_markup": {"inline_keyboard": [[{"text": "ok", "callback_data": "a:1"}]]}}})
m = update.message
try:
    at.Update.model_validate({"update_id": "five", "message": {"message_id": "x"}})
    refused = False
except ValidationError:
    refused = True
method = SendMessage(chat_id=-100, text="hi", reply_markup=at.InlineKeyboardMarkup(
    inline_keyboard=[[at.InlineKeyboardButton(text="b", callback_data="c")]]))
print(json.dumps({
    "models": len(models), "built_at_import": built_at_import,
    "message": [type(m).__name__, m.chat.id, m.from_user.first_name, m.entities[0].type,
                type(m.reply_markup).__name__, m.reply_markup.inline_keyboard[0][0].callback_data,
                m.date.year],
    "refused": refused,
    "method": method.model_dump(exclude_none=True)["reply_markup"]["inline_keyboard"][0][0],
}))
"""


def probe(mode: str) -> dict:
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_pydantics_rebuild_hook_is_the_one_patched():
    """The private hook takes what the patch passes on, and the patch is in place."""
    parameters = inspect.signature(lazy_models._original).parameters
    assert tuple(parameters) == lazy_models.EXPECTED_PARAMETERS
    assert all(p.kind is p.KEYWORD_ONLY for name, p in parameters.items() if name != "cls")
    assert lazy_models.hook_matches()
    assert lazy_models.patched()
    assert vars(BaseModel)["model_rebuild"].__func__ is lazy_models._lazy_rebuild


def test_aiogram_still_rebuilds_its_types_at_import():
    """What the patch defers: aiogram's eager rebuild with its types namespace."""
    assert "model_rebuild(_types_namespace=" in inspect.getsource(aiogram.types)


def test_types_are_built_on_first_use_and_validate_as_ever():
    lazy, eager = probe("with"), probe("without")
    assert eager["built_at_import"] == eager["models"] > 250  # the control: aiogram builds all at import
    assert lazy["built_at_import"] == 0  # with the patch: none until used
    expected = ["Message", -100, "Olga", "bot_command", "InlineKeyboardMarkup", "a:1", 2023]
    assert lazy["message"] == eager["message"] == expected
    assert lazy["refused"] and eager["refused"]
    assert lazy["method"] == eager["method"] == {"text": "b", "callback_data": "c"}
