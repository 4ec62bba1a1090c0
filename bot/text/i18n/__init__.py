"""Message catalogues: every user-facing text exists in Russian and English.

`t("key", "ru", name=...)` formats the text; an unknown language falls back to
the default, an unknown key is a bug (KeyError), caught by the catalogue test.
"""

from __future__ import annotations

import functools
import os
import string
from collections.abc import Callable
from typing import Any

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
    """The catalogue text itself, unformatted (bot.text.render.tr formats it as Telegram HTML)."""
    return CATALOGUES.get(lang, CATALOGUES[DEFAULT_LANGUAGE])[key]


def t(key: str, lang: str, /, **params: object) -> str:
    """Plain text (the CLI, button labels, pop-ups); Telegram messages use bot.text.render.tr."""
    text = template(key, lang)
    if PLURAL not in text:  # str.format is what _Formatter does without plurals, ten times faster
        return text.format(**params)
    return _Formatter(lang).vformat(text, (), params)


PLURAL = "plural:"


def format_value(value: object, spec: str, lang: str) -> str:
    """`format(value, spec)`, and plural forms: `{n:plural:one=шаг|few=шага|many=шагов|other=шага}`
    picks the word for n by the language's CLDR plural rules (Babel), as gettext's ngettext
    would: 1 шаг, 2 шага, 5 шагов, 21 шаг; 1 step, 2 steps."""
    if not spec.startswith(PLURAL):
        return format(value, spec)
    forms = dict(item.split("=", 1) for item in spec[len(PLURAL) :].split("|"))
    category = plural_category(value, lang)
    return forms.get(category, forms["other"])


@functools.cache
def _plural_rule(lang: str) -> Callable[[Any], str]:
    from babel import Locale

    return Locale.parse(lang if lang in CATALOGUES else DEFAULT_LANGUAGE).plural_form


def plural_category(value: object, lang: str) -> str:
    """ "one", "few", "many" or "other" for `value` in `lang`."""
    return _plural_rule(lang)(abs(value) if isinstance(value, int | float) else 0)


class _Formatter(string.Formatter):
    def __init__(self, lang: str):
        self.lang = lang

    def format_field(self, value: Any, format_spec: str) -> str:
        return format_value(value, format_spec, self.lang)
