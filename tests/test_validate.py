"""bot/plans/validate.py: every rule refuses what breaks it and accepts what keeps it,
for any text (hypothesis), and a refusal never carries the password."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bot.plans import validate
from bot.plans.changes import ChangeError
from bot.plans.commands import UsageError, decode_csv, parse, parse_csv
from bot.plans.validate import InputError
from bot.text.render import error_text

SAFE_PUNCT = "".join(c for c in string.punctuation if c != ";")
GOOD_PASSWORD = st.text(
    alphabet=string.ascii_letters + string.digits + SAFE_PUNCT + " ", min_size=1, max_size=100
)


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch).startswith("C") or unicodedata.category(ch) in ("Zl", "Zp")


# --- SIP passwords


@pytest.mark.parametrize(
    ("password", "code"),
    [
        ("pw1\n[SIP-TRUNK-1](+)\ncontext=internal", "password_control"),
        ("pw1\r\ncontext=internal", "password_control"),
        ("pw\x00x", "password_control"),
        ("pw\tx", "password_control"),
        ("pw\u202ex", "password_control"),  # right-to-left override (category Cf)
        ("pw\u00a0x", "password_control"),  # a non-breaking space: invisible, not U+0020
        ("", "password_empty"),
        ("пароль1", "password_not_ascii"),
        (" s3cret", "password_spaces"),
        ("s3cret ", "password_spaces"),
        ("s3c;ret", "password_semicolon"),
        (";--", "password_semicolon"),
        ("x" * 101, "password_too_long"),
        ("XXXXXXXX", "password_mask"),
    ],
)
def test_a_bad_password_is_refused_naming_the_rule_and_never_echoed(password, code):
    with pytest.raises(InputError) as err:
        validate.sip_password(password)
    assert err.value.code == code
    for lang in ("ru", "en"):
        text = error_text(err.value, lang)
        assert text and (not password or code == "password_mask" or password not in text)
    assert not password or code == "password_mask" or password not in str(err.value.params.values())


@pytest.mark.parametrize(
    "password", ["s3cret", "Zx-847900-secret!", "#include", "[SIP-TRUNK]", "a b c", "x" * 100, "=>a\\b"]
)
def test_passwords_asterisk_reads_verbatim_are_kept_verbatim(password):
    assert validate.sip_password(password) == password


@settings(max_examples=300)
@given(GOOD_PASSWORD)
def test_printable_ascii_without_semicolons_or_outer_spaces_is_accepted(password):
    assume(password == password.strip() and password != validate.PASSWORD_MASK)
    assert validate.sip_password(password) == password


@settings(max_examples=300)
@given(
    st.text(max_size=20),
    st.sampled_from("\n\r\x00\t\x0b\x0c\x1b\x7f\x85\u2028\u2029\u200b\ufeff"),
    st.text(max_size=20),
)
def test_any_password_with_a_control_or_invisible_character_is_refused(before, bad, after):
    with pytest.raises(InputError):
        validate.sip_password(before + bad + after)


@settings(max_examples=500)
@given(st.text(max_size=120))
def test_any_text_is_a_password_or_an_input_error(text):
    try:
        result = validate.sip_password(text)
    except InputError as exc:
        assert isinstance(exc, UsageError)
        return
    assert result == text and text.isascii() and ";" not in text and text == text.strip()
    assert not any(_is_control(ch) for ch in text) and 1 <= len(text) <= 100


def test_the_core_edge_raises_an_error_the_lifecycle_callers_catch():
    with pytest.raises(ChangeError) as err:
        validate.sip_passwords({"847900": "a\nb"}, also=ChangeError)
    assert isinstance(err.value, InputError) and err.value.code == "password_control"
    assert "перевод строки" in error_text(err.value, "ru", html=True)
    assert validate.sip_passwords(None, also=ChangeError) is None


def test_a_password_file_loses_one_line_end_and_nothing_else():
    assert validate.password_file_text("pw\n") == "pw"
    assert validate.password_file_text("pw\r\n") == "pw"
    assert validate.password_file_text("pw\n\n") == "pw\n"  # then refused: a line break
    assert validate.password_file_text(" pw ") == " pw "  # then refused: outer spaces
    assert validate.password_file_text("") == ""


# --- logins


@pytest.mark.parametrize(
    "login", ["847900", "74951234567", "+74951234567", "user.1", "office_2", "a-b", "Nina"]
)
def test_literal_logins_are_accepted(login):
    assert validate.sip_login(login) == login


@pytest.mark.parametrize(
    ("login", "code"),
    [
        ("X.", "login_pattern"),
        ("_84790X", "login_pattern"),
        ("_847900", "login_pattern"),
        ("NXXXXXX", "login_pattern"),
        ("847-900", "login_pattern"),  # Asterisk ignores '-' in a pattern: it would match 847900
        ("8479.", "login_pattern"),
        ("ZZZ", "login_pattern"),
        ("8479;00", "bad_login"),
        ("a=b", "bad_login"),
        ("[abc]", "bad_login"),
        ("84 79", "bad_login"),
        ("user@host", "bad_login"),
        ("логин", "bad_login"),
        ("847\n900", "bad_login"),
        ("", "bad_login"),
        ("1" * 101, "login_too_long"),
    ],
)
def test_patterns_and_odd_characters_are_no_logins(login, code):
    with pytest.raises(InputError) as err:
        validate.sip_login(login, "addnumber")
    assert err.value.code == code
    assert error_text(err.value, "en")


def _mikopbx_pattern(number: str) -> bool:
    """IncomingContexts::generateRouteDialplan's test, as PHP runs it."""
    import re

    return number.startswith("_") or re.fullmatch(r"[.|!NXZ0-9\[\]\-]+", number) is not None


@settings(max_examples=500)
@given(st.text(max_size=110) | st.from_regex(r"[A-Za-z0-9_.+\-NXZ]{1,12}", fullmatch=True))
def test_any_text_is_a_literal_login_or_an_input_error(text):
    try:
        login = validate.sip_login(text)
    except InputError:
        return
    assert login == text and 1 <= len(login) <= 100
    assert not _mikopbx_pattern(login) or login.isdigit()  # digits are literal even in a pattern
    assert not set(login) & set(" \t\n;=[]@:")


@settings(max_examples=200)
@given(st.from_regex(r"[a-z][a-z0-9]{0,20}", fullmatch=True), st.from_regex(r"[0-9]{1,15}", fullmatch=True))
def test_generated_literal_logins_are_accepted(word, digits):
    assert validate.sip_login(word) == word
    assert validate.sip_login(digits) == digits


# --- hosts


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip.zadarma.com", ("sip.zadarma.com", None)),
        ("SIP.Example.RU:5080", ("sip.example.ru", 5080)),
        ("sip.example.ru.", ("sip.example.ru", None)),
        ("192.0.2.10:5060", ("192.0.2.10", 5060)),
        ("[2001:db8::1]:5070", ("[2001:db8::1]", 5070)),
        ("2001:db8::1", ("[2001:db8::1]", None)),
        ("сип.рф", ("xn--h1aoe.xn--p1ai", None)),
        ("a" * 63 + ".ru", ("a" * 63 + ".ru", None)),
    ],
)
def test_hosts_and_addresses(text, expected):
    assert validate.host(text) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("evil..com", "bad_host"),
        ("-a.com", "bad_host"),
        ("a-.com", "bad_host"),
        ("a" * 64 + ".com", "bad_host"),
        (".".join(["abcdefghi"] * 26), "host_too_long"),  # 259 characters
        ("a_b.com", "bad_host"),
        ("256.1.1.1", "bad_host"),
        ("1.2.3", "bad_host"),
        ("sip.example.ru:0", "bad_port"),
        ("sip.example.ru:65536", "bad_port"),
        ("sip.example.ru:+80", "bad_port"),
        ("sip.example.ru:٥٠٦٠", "bad_port"),  # Arabic-Indic digits: int() takes them, we do not
        ("[2001:db8::1", "bad_host"),
        ("[2001:db8::1]x", "bad_host"),
        ("[192.0.2.1]", "bad_host"),
        ("fe80::1%eth0", "bad_host"),
        ("sip.example.ru\n", "bad_host"),
        ("evil.com;transport=tcp", "bad_host"),
    ],
)
def test_bad_hosts_are_refused_naming_the_rule(text, code):
    with pytest.raises(InputError) as err:
        validate.host(text, "addnumber")
    assert err.value.code == code
    assert error_text(err.value, "ru") and error_text(err.value, "en")


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300)
@given(
    st.lists(_LABEL, min_size=1, max_size=5),
    st.from_regex(r"[a-z]{2,6}", fullmatch=True),
    st.integers(1, 65535),
)
def test_generated_dns_names_with_ports_are_accepted(labels, tld, port):
    name = ".".join([*labels, tld])
    assert validate.host(f"{name}:{port}") == (name, port)


@settings(max_examples=200)
@given(st.ip_addresses())
def test_generated_ip_addresses_are_accepted(address):
    text = f"[{address}]" if address.version == 6 else str(address)
    assert validate.host(text) == (text, None)


@settings(max_examples=500)
@given(st.text(max_size=80))
def test_any_text_is_a_host_or_an_input_error(text):
    try:
        name, port = validate.host(text)
    except InputError:
        return
    assert name.isascii() and name == name.lower() and len(name) <= 253
    assert port is None or 1 <= port <= 65535
    assert not any(_is_control(ch) or ch.isspace() for ch in name)
    assert ".." not in name and not name.startswith(("-", "."))


# --- destinations and the grammar's edge


@settings(max_examples=300)
@given(st.text(max_size=250))
def test_any_text_is_a_destination_or_an_input_error(text):
    try:
        result = validate.destination(text)
    except InputError:
        return
    assert result == text and not any(_is_control(ch) for ch in text) and len(text) <= 200


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("/addnumber zadarma X. → IVR", "login_pattern"),
        ("/addnumber zadarma _84790X → IVR", "login_pattern"),
        ("/addnumber zadarma NXXXXXX → IVR", "login_pattern"),
        ("/addnumber evil..com 847900 → IVR", "bad_host"),
        ("/addnumber -a.com 847900 → IVR", "bad_host"),
        ("/addnumber zadarma 847900 → IVR\u202e", "destination_control"),
        ("/route N11 → IVR", "login_pattern"),
        ("/removenumber _X.", "login_pattern"),
    ],
)
def test_the_grammar_refuses_at_its_edge(text, code):
    with pytest.raises(UsageError) as err:
        parse(text)
    assert err.value.code == code and err.value.command is not None


def test_a_destination_with_a_line_break_is_refused():
    with pytest.raises(UsageError) as err:
        parse("/addnumber zadarma 847900 → IVR\ncontext=internal")
    assert err.value.code == "destination_control"


def test_phone_number_logins_and_ipv6_hosts_pass_the_grammar():
    intent = parse("/addnumber [2001:db8::5]:5062 74951234567 → IVR")
    assert intent.login == "74951234567" and intent.provider.host == "[2001:db8::5]"
    assert intent.provider.port == 5062


# --- CSV


def test_a_csv_row_with_a_bad_password_names_the_line_and_the_rule_never_the_password():
    text = (
        'login,password,destination\n847900,ok-1,IVR\n847901,"pw1\n[SIP-TRUNK-1](+)\ncontext=internal",IVR\n'
    )
    with pytest.raises(UsageError) as err:
        parse_csv(text, "zadarma")
    assert err.value.code == "password_control"
    for lang, words in (("en", "CSV line 5"), ("ru", "CSV, строка 5")):
        shown = error_text(err.value, lang, html=True)
        assert shown.startswith(words) and "pw1" not in shown and "context=internal" not in shown


@pytest.mark.parametrize(
    ("row", "code"),
    [
        ("847900,s3c;ret,IVR", "password_semicolon"),
        ("847900,пароль,IVR", "password_not_ascii"),
        ("847900,XXXXXXXX,IVR", "password_mask"),
        ("X.,pw,IVR", "login_pattern"),
        ("847 900,pw,IVR", "bad_login"),
        ("847900,pw,IVR,12345", "bad_phone"),
    ],
)
def test_every_rule_applies_to_csv_rows(row, code):
    with pytest.raises(UsageError) as err:
        parse_csv(f"847899,fine,IVR\n{row}\n", "zadarma")
    assert err.value.code == code and "CSV line 2:" in error_text(err.value, "en")


def test_spaces_around_csv_fields_are_dropped_tabs_are_not():
    intent, passwords = parse_csv("847900, s3cret , IVR\n", "zadarma")
    assert passwords == {"847900": "s3cret"} and intent.rows[0].destination == "IVR"
    with pytest.raises(UsageError) as err:
        parse_csv("847900,\ts3cret,IVR\n", "zadarma")
    assert err.value.code == "password_control"


@settings(max_examples=300)
@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12)), max_size=5))
def test_no_csv_yields_a_password_or_login_the_validators_refuse(rows):
    import csv
    import io

    out = io.StringIO()
    csv.writer(out).writerows(rows)
    try:
        _intent, passwords = parse_csv(out.getvalue(), "zadarma")
    except UsageError:
        return
    for login, password in passwords.items():
        assert validate.sip_login(login) == login and validate.sip_password(password) == password


def test_csv_bytes_in_utf8_with_a_bom_or_cp1251_are_read():
    text = "логин;пароль;назначение\n847900;pw;Отдел продаж\n"
    assert decode_csv(b"\xef\xbb\xbf" + text.encode()) == text
    assert decode_csv(text.encode("cp1251")) == text
    for data in (b"\x89PNG\r\n\x1a\n\x00\x00", b"847900,pw,IVR\x01\n"):
        with pytest.raises(UsageError) as err:
            decode_csv(data)
        assert err.value.code == "csv_not_text"
