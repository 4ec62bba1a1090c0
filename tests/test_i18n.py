from __future__ import annotations

import re

from bot.text.i18n import CATALOGUES, pick_language, t


def test_every_text_exists_in_russian_and_english_with_the_same_placeholders():
    en, ru = CATALOGUES["en"], CATALOGUES["ru"]
    assert set(en) == set(ru)
    for key in en:
        assert set(re.findall(r"{(\w+)}", en[key])) == set(re.findall(r"{(\w+)}", ru[key])), key
        assert ru[key].strip(), key


def test_language_choice():
    assert pick_language("ru_RU.UTF-8") == "ru"
    assert pick_language("en-GB") == "en"
    assert pick_language("de", default="en") == "en"
    assert pick_language(None) == "ru"
    assert t("numbers.default", "en", destination="Sales") == "  default route -> Sales"
    assert t("numbers.default", "xx", destination="Sales") == "  маршрут по умолчанию -> Sales"
