"""Message catalogues: every user-facing text exists in Russian and English.

`t("key", "ru", name=...)` formats the text; an unknown language falls back to
the default, an unknown key is a bug (KeyError), caught by the catalogue test.
"""

from __future__ import annotations

import os

from . import en, ru

CATALOGUES: dict[str, dict[str, str]] = {"en": en.MESSAGES, "ru": ru.MESSAGES}
DEFAULT_LANGUAGE = "ru"


def pick_language(code: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """A Telegram `language_code` or a POSIX locale ("ru_RU.UTF-8") -> "ru" / "en"."""
    short = (code or "").split("_")[0].split("-")[0].lower()
    return short if short in CATALOGUES else default


def system_language(default: str = DEFAULT_LANGUAGE) -> str:
    """The terminal's language: $PBXBOT_LANG, else the locale of messages as POSIX
    orders it ($LC_ALL, $LC_MESSAGES, $LANG); `default` when none names ru or en."""
    for name in ("PBXBOT_LANG", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(name)
        if value:
            return pick_language(value, default)
    return default


def template(key: str, lang: str) -> str:
    """The catalogue text itself, unformatted (bot.render.tr formats it as Telegram HTML)."""
    return CATALOGUES.get(lang, CATALOGUES[DEFAULT_LANGUAGE])[key]


def t(key: str, lang: str, /, **params: object) -> str:
    """Plain text (the CLI, button labels, pop-ups); Telegram messages use bot.render.tr."""
    return template(key, lang).format(**params)
