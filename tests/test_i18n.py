from __future__ import annotations

import re

from bot.text.i18n import CATALOGUES, pick_language, t


def test_every_text_exists_in_russian_and_english_with_the_same_placeholders():
    en, ru = CATALOGUES["en"], CATALOGUES["ru"]
    assert set(en) == set(ru)
    for key in en:
        assert set(re.findall(r"{(\w+)[:}]", en[key])) == set(re.findall(r"{(\w+)[:}]", ru[key])), key
        assert ru[key].strip(), key


def test_language_choice():
    assert pick_language("ru_RU.UTF-8") == "ru"
    assert pick_language("en-GB") == "en"
    assert pick_language("de", default="en") == "en"
    assert pick_language(None) == "ru"
    assert t("numbers.default", "en", destination="Sales") == "  default route -> Sales"
    assert t("numbers.default", "xx", destination="Sales") == "  маршрут по умолчанию -> Sales"


def test_plural_forms_follow_each_languages_rules():
    from babel import Locale

    for lang, catalogue in CATALOGUES.items():
        categories = set(Locale.parse(lang).plural_form.tags) | {"other"}
        for key, text in catalogue.items():
            for spec in re.findall(r"{\w+:plural:([^}]*)}", text):
                assert {item.split("=")[0] for item in spec.split("|")} == categories, (lang, key)
    header = "plan.header"
    ru = [
        t(header, "ru", id="a", pbx="p", kind="k", steps=n).rsplit("· ", 1)[1] for n in (1, 2, 5, 11, 21, 22)
    ]
    assert ru == ["1 шаг", "2 шага", "5 шагов", "11 шагов", "21 шаг", "22 шага"]
    en = [t(header, "en", id="a", pbx="p", kind="k", steps=n).rsplit("· ", 1)[1] for n in (0, 1, 2)]
    assert en == ["0 steps", "1 step", "2 steps"]
    from bot.text.render import tr

    assert str(tr("tg.card.progress", "ru", done=1, total=21)) == "Применяется: 1 из 21 шага…"
    for lang, catalogue in CATALOGUES.items():
        assert not [
            k for k, v in catalogue.items() if re.search(r"\(s\)|\(ов\)|\(а\)|\(и\)", v) and "{" in v
        ], lang


def test_the_command_menu_offers_every_command_help_lists():
    """Telegram's command menu (set_commands) and /help name the same commands, each
    with its menu line in both languages: doctor, trace, digest had menu texts and no place in it."""
    from bot.entry.app import GROUP_COMMANDS, PRIVATE_COMMANDS
    from handlers.common import COMMANDS

    assert set(PRIVATE_COMMANDS) == set(COMMANDS)
    assert set(PRIVATE_COMMANDS) - set(GROUP_COMMANDS) == {"pbx", "whoami"}
    for catalogue in CATALOGUES.values():
        menu = {key.removeprefix("tg.menu.") for key in catalogue if key.startswith("tg.menu.")}
        assert menu == set(PRIVATE_COMMANDS)
