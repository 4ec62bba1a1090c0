"""The digest: content, splitting, the schedule grammar, one post per (chat,
period) even with two schedulers, quiet mode, the weekly chart, an unreachable PBX."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.config import load_settings
from bot.entry.scheduler import Scheduler
from bot.plans.changes import LOCAL_ADMIN, PbxHandle
from bot.plans.commands import parse
from bot.plans.service import Changes
from bot.plans.vault import Vault
from bot.routing.digest import DigestCommand, DigestUsage, parse_digest, period_bounds, schedule_row
from bot.services import Services
from bot.text.render import TELEGRAM_LIMIT, utf16_len
from pbx.models import Provider, Route
from storage.tables import utcnow
from tests.conftest import fast_client

CHAT = -1005550000001
MSK = ZoneInfo("Europe/Moscow")


class Poster:
    def __init__(self):
        self.texts: list[tuple[int, str]] = []
        self.pngs: list[tuple[int, bytes]] = []
        self.documents: list[tuple[int, str, bytes]] = []

    async def text(self, chat_id, text):
        self.texts.append((chat_id, text))

    async def png(self, chat_id, data, caption):
        self.pngs.append((chat_id, data))

    async def document(self, chat_id, data, filename, caption):
        self.documents.append((chat_id, filename, data))

    @property
    def all_text(self) -> str:
        return "\n".join(text for _, text in self.texts)


def services_for(store, client, tmp_path) -> Services:
    settings = load_settings(
        None,
        pbx={"office": {"url": "http://127.0.0.1:9", "api_key": "k" * 64, "reload_wait": 0}},
        telegram={"groups": {CHAT: "office"}},
        storage={"data_dir": str(tmp_path)},
        default_language="en",
    )
    handle = PbxHandle.of(client, reload_wait=0, verify_timeout=5, verify_interval=0.05)
    changes = Changes(store, settings.policy, Vault.from_file(tmp_path / "k"), {"office": handle})
    return Services(settings, changes, store)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("", DigestCommand("now")),
        ("daily 09:00", DigestCommand("daily", 9, 0)),
        ("weekly mon 18:30", DigestCommand("weekly", 18, 30, 0)),
        ("weekly ПТ 7:05", DigestCommand("weekly", 7, 5, 4)),
        ("off", DigestCommand("off")),
        ("quiet on", DigestCommand("quiet", quiet=True)),
        ("status", DigestCommand("show")),
        ("tz Asia/Yekaterinburg", DigestCommand("tz", timezone="Asia/Yekaterinburg")),
    ],
)
def test_the_schedule_grammar(args, expected):
    assert parse_digest(args) == expected


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ("daily 25:00", "bad_time"),
        ("daily 9", "bad_time"),
        ("weekly xyz 09:00", "bad_day"),
        ("hourly", "usage"),
        ("quiet maybe", "usage"),
        ("daily 09:00 extra", "usage"),
    ],
)
def test_schedule_grammar_errors(args, code):
    with pytest.raises(DigestUsage) as err:
        parse_digest(args)
    assert err.value.code == code


def test_period_keys():
    now = utcnow().replace(year=2026, month=11, day=26, hour=6, minute=0)
    assert period_bounds("daily", now, MSK)[2] == "daily:2026-11-26"
    assert period_bounds("weekly", now, MSK)[2] == "weekly:2026-W48"
    assert period_bounds("now", now, MSK)[2] != period_bounds("now", now + timedelta(microseconds=1), MSK)[2]


async def test_the_digest_shows_numbers_changes_findings_calls_and_waiting_plans(
    store, client, sim, tmp_path
):
    services = services_for(store, client, tmp_path)
    changes = services.changes
    proposal = await changes.propose(
        LOCAL_ADMIN,
        "office",
        parse("/addnumber zadarma 847900 → IVR"),
        secrets={"847900": "pw"},
        command="/addnumber zadarma 847900 → IVR",
    )
    await changes.apply(LOCAL_ADMIN, proposal.row.id, at_once=True)
    await changes.propose(LOCAL_ADMIN, "office", parse("/route 847706 → 201"), command="/route 847706 → 201")
    await client.create_route(Route(rulename="typo", number="84790", extension="2000"))
    for _ in range(3):
        sim.simulate_call("sip.zadarma.com", "847900")
    poster = Poster()
    outcome = await Scheduler(services, poster).run(CHAT, period="now")
    assert outcome.posted
    text = poster.all_text
    assert "847900 @ sip.zadarma.com · registered" in text and "→ Main menu · calls: 3" in text
    assert "847706 @ sip.zadarma.com · registered" in text and "→ Sales · calls: 0" in text
    assert f"plan {proposal.row.id} applied · /addnumber zadarma 847900 → IVR · local admin" in text
    assert "84790 matches no login" in text  # the doctor's finding
    assert "Waiting for approval (1)" in text and "/route 847706 → 201" in text


async def test_a_long_digest_is_split_for_telegram(store, client, sim, tmp_path):
    for i in range(150):
        login = str(700000 + i)
        sim.state.providers[f"SIP-TRUNK-{i:08X}"] = {
            **sim.state.providers["SIP-TRUNK-5A1D8E20"],
            "id": f"SIP-TRUNK-{i:08X}",
            "username": login,
            "description": f"A rather long description of number {login}",
            "host": f"sip{i}.example.net",
        }
    poster = Poster()
    await Scheduler(services_for(store, client, tmp_path), poster).run(CHAT, period="now")
    assert all(utf16_len(text) <= TELEGRAM_LIMIT for _, text in poster.texts)
    # 151 numbers: the ones in trouble are listed (these hosts have no routes: calls go to the default
    # route), the full list is attached as a file
    assert "needing a look: 150" in poster.all_text
    ((_, filename, table),) = poster.documents
    assert filename == "numbers-office.txt" and table.count(b"\n") == 150 and b"700149" in table


async def test_one_digest_per_chat_and_period_even_from_two_schedulers(store, client, sim, tmp_path):
    services = services_for(store, client, tmp_path)
    first, second = Poster(), Poster()
    a, b = Scheduler(services, first), Scheduler(services, second)
    now = utcnow()
    results = [await a.run(CHAT, period="daily", now=now), await b.run(CHAT, period="daily", now=now)]
    assert [r.reason for r in results] == ["posted", "taken"]
    assert len(first.texts) >= 1 and second.texts == []
    assert (await a.run(CHAT, period="daily", now=now + timedelta(days=1))).posted  # the next day


async def test_quiet_mode_posts_only_when_something_changed(store, client, sim, tmp_path):
    services = services_for(store, client, tmp_path)
    poster = Poster()
    scheduler = Scheduler(services, poster)
    row = await schedule_row(services, CHAT, "office", parse_digest("daily 09:00"), 1)
    row.quiet = True
    services.store.schedules.set(row)
    now = utcnow()
    assert (await scheduler.run(CHAT, period="daily", now=now)).posted  # the first one always
    assert (await scheduler.run(CHAT, period="daily", now=now + timedelta(days=1))).reason == "quiet"
    await client.create_provider(
        Provider(description="x", username="5550001", host="sip.example.net"), secret="p"
    )
    assert (await scheduler.run(CHAT, period="daily", now=now + timedelta(days=2))).posted


async def test_a_weekly_digest_attaches_a_chart(store, client, sim, tmp_path):
    for login in ("847706", "847706", "847706"):
        sim.simulate_call("sip.zadarma.com", login)
    poster = Poster()
    assert (await Scheduler(services_for(store, client, tmp_path), poster).run(CHAT, period="weekly")).posted
    ((chat, png),) = poster.pngs
    assert chat == CHAT and png.startswith(b"\x89PNG")


async def test_an_unreachable_pbx_gets_a_line_and_the_rest_still_goes_out(store, tmp_path):
    async with fast_client("http://127.0.0.1:9", name="office", timeout=1.0, retries=0) as dead:
        services = services_for(store, dead, tmp_path)
        poster = Poster()
        outcome = await Scheduler(services, poster).run(CHAT, period="now")
    assert outcome.posted
    assert "did not answer" in poster.all_text and "No changes since the last digest" in poster.all_text


def test_the_chart_has_every_day_of_the_week_with_one_day_of_data():
    from datetime import date, datetime

    from bot.routing.digest import Digest, chart_days, chart_png

    tz = ZoneInfo("Europe/Moscow")
    since = datetime(2026, 1, 4, 21, 0, tzinfo=ZoneInfo("UTC"))  # 5 Jan 00:00 in Moscow
    digest = Digest("office", since=since, until=since + timedelta(days=7))
    digest.calls_by_day = {"847706": {date(2026, 1, 7): 3}}
    days = chart_days(digest, tz)
    assert days == [date(2026, 1, 5) + timedelta(days=n) for n in range(7)]  # a week, not years
    png = chart_png(digest, "en", tz=tz)
    assert png is not None and png.startswith(b"\x89PNG")
