"""Drift: changes made on the PBX outside the bot, named (record, fields before -> after),
kept in the audit trail, in the digest and /drift; the chat told at once only when
where a number's calls end changes; "Put back" proposes a plan through approval.

The mirror's refresher will call `DriftWatch.observe(before, after)`; here the two
snapshots are read with the SnapshotReader around a hand edit of the simulated PBX."""

from __future__ import annotations

import json

import pytest

from bot.config import load_settings
from bot.entry.scheduler import Scheduler
from bot.errors import PlanError
from bot.plans.changes import PbxHandle
from bot.plans.commands import parse
from bot.plans.planner import StepKind
from bot.plans.service import Changes
from bot.plans.snapshot import SnapshotReader
from bot.plans.vault import Vault
from bot.routing.drift import MASK, diff, outcome_changes, put_back
from bot.routing.watch import DriftWatch, put_back_intent, recent, recent_text
from bot.services import Services
from bot.text.i18n import t
from bot.text.render import TELEGRAM_LIMIT, error_text, plan_text, utf16_len
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION
from sandbox.pbxstate import PROVIDER_DEFAULTS
from storage.tables import utcnow
from tests import personas
from tests.personas import actor
from tests.test_digest import Poster

CHAT = -1005550000042
ZADARMA = "sip.zadarma.com"
ANNA, BORIS = actor(personas.ANNA), actor(personas.BORIS)
SIP_PASSWORD = "demo-847706-secret"
EXTRA_PASSWORD = "Xtra-Pa55-hunter2"


async def read(client):
    return await SnapshotReader(client).read(every_host=True, fresh=True)


async def around(sim, client, edit):
    """The PBX before and after a hand edit (what the mirror held, what the PBX holds)."""
    before = await read(client)
    edit(sim.state)
    return before, await read(client)


def events_of(before, after):
    return diff(before, after, noticed_at=utcnow())


def add_account(state, pid, login, host=ZADARMA, **fields):
    state.providers[pid] = {
        **PROVIDER_DEFAULTS,
        "id": pid,
        "description": f"Hand-made {login}",
        "username": login,
        "secret": "hand-made-secret",
        "host": host,
        "transport": "udp",
        "additionalHosts": [],
        **fields,
    }


# ---------------------------------------------------------------------- the diff, named


async def test_a_routes_destination_changed_by_hand(sim, client):
    def edit(state):
        state.routes[2]["extension"] = DEMO_IVR_EXTENSION

    before, after = await around(sim, client, edit)
    (event,) = events_of(before, after)
    assert (event.kind, event.key, event.what) == ("route", "2", "changed")
    assert event.fields == [("extension", DEMO_QUEUE_EXTENSION, DEMO_IVR_EXTENSION)]
    (moved,) = outcome_changes(before, after, [event])
    assert (moved.number, moved.before, moved.after) == ("847706", "Sales", "Main menu")
    assert moved.events == [event]


async def test_a_routes_provider_changed_by_hand(sim, client):
    def edit(state):
        add_account(state, "SIP-TRUNK-0000BEEF", "555001", host="sip.novofon.ru")
        state.routes[2]["provider"] = None  # "any provider", no DID: the demo account's route is gone

    before, after = await around(sim, client, edit)
    route = next(e for e in events_of(before, after) if e.kind == "route")
    assert route.fields == [("providerid", DEMO_PROVIDER_ID, None)]
    changes = {c.number: c for c in outcome_changes(before, after, events_of(before, after))}
    assert (changes["847706"].before_outcome, changes["847706"].after_outcome) == ("dial", "default")


async def test_an_accounts_extra_parameters_compared_by_parsed_value(sim, client):
    def edit(state):
        state.providers[DEMO_PROVIDER_ID]["manualattributes"] = (
            "[endpoint]\ncontext = public-direct-dial\n\n; a comment\n[registration-auth]\n"
            f"password={EXTRA_PASSWORD}\n"
        )

    before, after = await around(sim, client, edit)
    (event,) = events_of(before, after)
    assert (event.kind, event.key, event.what) == ("account", DEMO_PROVIDER_ID, "changed")
    assert event.fields == [
        ("extra [endpoint] context", None, "public-direct-dial"),
        ("extra [registration-auth] password", None, MASK),
    ]
    (moved,) = outcome_changes(before, after, [event])
    assert (moved.number, moved.before_outcome, moved.after_outcome) == ("847706", "dial", "not_found")

    # the same parameters written another way (spaces, comments, order) are no drift
    def respell(state):
        state.providers[DEMO_PROVIDER_ID]["manualattributes"] = (
            f"[registration-auth]\npassword = {EXTRA_PASSWORD}\n# note\n"
            "[endpoint]\ncontext=public-direct-dial"
        )

    again, respelt = await around(sim, client, respell)
    assert events_of(again, respelt) == []


async def test_an_account_added_removed_and_disabled(sim, client):
    before, added = await around(sim, client, lambda s: add_account(s, "SIP-TRUNK-0000BEEF", "847801"))
    (event,) = events_of(before, added)
    assert (event.kind, event.key, event.what, event.label) == (
        "account",
        "SIP-TRUNK-0000BEEF",
        "added",
        f"847801 @ {ZADARMA}",
    )
    assert ("username", None, "847801") in event.fields and ("host", None, ZADARMA) in event.fields

    def disable(state):
        state.set_provider_disabled("SIP-TRUNK-0000BEEF", True)

    added, disabled = await around(sim, client, disable)
    (event,) = events_of(added, disabled)
    assert (event.what, event.fields) == ("disabled", [("disabled", False, True)])
    (moved,) = outcome_changes(added, disabled, [event])
    assert (moved.number, moved.after_outcome) == ("847801", "no_account")

    disabled, enabled = await around(
        sim, client, lambda s: s.set_provider_disabled("SIP-TRUNK-0000BEEF", False)
    )
    assert [e.what for e in events_of(disabled, enabled)] == ["enabled"]

    enabled, removed = await around(sim, client, lambda s: s.delete_provider(DEMO_PROVIDER_ID))
    found = {(e.kind, e.key): e for e in events_of(enabled, removed)}
    assert found[("account", DEMO_PROVIDER_ID)].what == "removed"
    assert ("username", "847706", None) in found[("account", DEMO_PROVIDER_ID)].fields
    assert found[("route", "2")].what == "removed"  # its bound route goes with it (MikoPBX cascades)
    assert ("extension", DEMO_QUEUE_EXTENSION, None) in found[("route", "2")].fields
    assert "847706" in {c.number for c in outcome_changes(enabled, removed, list(found.values()))}


async def test_a_cosmetic_change_is_drift_but_moves_no_call(sim, client):
    def edit(state):
        state.routes[2]["rulename"] = "Renamed by hand"
        state.providers[DEMO_PROVIDER_ID]["description"] = "Zadarma main line"

    before, after = await around(sim, client, edit)
    events = events_of(before, after)
    assert {(e.kind, e.what) for e in events} == {("account", "changed"), ("route", "changed")}
    assert outcome_changes(before, after, events) == []


async def test_the_sip_password_never_appears_and_is_no_drift(sim, client):
    before, after = await around(
        sim, client, lambda s: s.providers[DEMO_PROVIDER_ID].update(secret="Changed-by-hand-99")
    )
    assert events_of(before, after) == []


# ---------------------------------------------------------------------- the watch


class Notifier:
    def __init__(self):
        self.sent: list[tuple[int, str, int | None]] = []

    async def drift_alert(self, chat_id, text, alert_id, lang):
        self.sent.append((chat_id, str(text), alert_id))


def services_for(store, client, tmp_path, **policy) -> Services:
    roles = personas.policy(personas.ANNA, personas.BORIS)
    settings = load_settings(
        None,
        pbx={"demo": {"url": "http://127.0.0.1:9", "api_key": "k" * 64, "reload_wait": 0}},
        telegram={"groups": {CHAT: "demo"}},
        storage={"data_dir": str(tmp_path)},
        policy={**roles, **policy},
        default_language="en",
    )
    handle = PbxHandle.of(client, reload_wait=0, verify_timeout=5, verify_interval=0.05)
    changes = Changes(store, settings.policy, Vault.from_file(tmp_path / "k"), {"demo": handle})
    return Services(settings, changes, store)


async def test_the_watch_records_alerts_and_puts_back_through_approval(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    notifier = Notifier()
    watch = DriftWatch(services, notifier)

    def edit(state):
        state.routes[2]["extension"] = DEMO_IVR_EXTENSION
        state.providers[DEMO_PROVIDER_ID]["manualattributes"] = (
            f"[registration-auth]\npassword={EXTRA_PASSWORD}"
        )

    before, after = await around(sim, client, edit)
    events = await watch.observe(before, after)
    assert len(events) == 2
    rows = store.audit.trail()
    assert [r.event for r in rows] == ["drift", "drift", "drift_alert"]
    blob = json.dumps([r.detail for r in rows], ensure_ascii=False)
    assert EXTRA_PASSWORD not in blob and SIP_PASSWORD not in blob  # secrets never reach the audit trail

    (chat, text, alert_id) = notifier.sent[0]
    assert len(notifier.sent) == 1 and chat == CHAT and alert_id == rows[-1].id
    assert "847706: Sales → Main menu" in text
    assert "route «Zadarma 847706 → Sales» (#2) changed: destination: 2200 → 2000" in text
    assert EXTRA_PASSWORD not in text and SIP_PASSWORD not in text

    # /drift lists them, newest first
    listed = await recent(services, "demo")
    assert [(e.kind, e.key) for e in listed] == [("route", "2"), ("account", DEMO_PROVIDER_ID)]
    assert "extra parameter [registration-auth] password: (empty) → •••" in recent_text(
        "demo", listed, "en", services.tz
    )
    assert "изменён" in recent_text("demo", listed, "ru", services.tz)

    # Put back: a plan through the normal approval flow, restoring the route
    intent = await put_back_intent(services, "demo", alert_id)
    assert intent is not None and await put_back_intent(services, "other", alert_id) is None
    proposal = await services.changes.propose(ANNA, "demo", intent, command="/drift put back")
    row = proposal.row
    assert row is not None and row.kind == "restore" and row.status == "proposed"
    # the account's extra parameters now hold a password: a card would show it, so not put back
    assert [(s.kind, s.target) for s in proposal.plan.steps] == [(StepKind.UPDATE_ROUTE, "2")]
    assert "Cannot be put back by the bot" in text
    assert sim.state.routes[2]["extension"] == DEMO_IVR_EXTENSION  # nothing written before approval
    await services.changes.approve(BORIS, row.id)
    outcome = await services.changes.apply(BORIS, row.id)
    assert outcome.row.status == "applied", outcome.row.outcome
    assert sim.state.routes[2]["extension"] == DEMO_QUEUE_EXTENSION
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION
    trail = json.dumps([r.detail for r in store.audit.trail()], ensure_ascii=False)
    assert EXTRA_PASSWORD not in trail and SIP_PASSWORD not in trail


async def test_extra_parameters_put_back_unless_they_hold_a_password(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    before, after = await around(
        sim,
        client,
        lambda s: s.providers[DEMO_PROVIDER_ID].update(
            manualattributes="[endpoint]\ncontext=public-direct-dial"
        ),
    )
    events = diff(before, after, noticed_at=utcnow())
    intent, cannot = put_back(before, events)
    assert cannot == [] and intent is not None
    assert intent.accounts[0]["fields"] == {"manualattributes": ""}
    proposal = await services.changes.propose(ANNA, "demo", intent, command="/drift put back")
    assert [s.kind for s in proposal.plan.steps] == [StepKind.UPDATE_PROVIDER]
    await services.changes.approve(BORIS, proposal.row.id)
    outcome = await services.changes.apply(BORIS, proposal.row.id)
    assert outcome.row.status == "applied", outcome.row.outcome
    assert sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"] == ""
    assert sim.state.providers[DEMO_PROVIDER_ID]["secret"] == SIP_PASSWORD  # the password kept
    assert sim.simulate_call(ZADARMA, "847706")["destination"] == DEMO_QUEUE_EXTENSION

    # a removed account cannot be put back (its SIP password went with it), nor a text holding one
    again, removed = await around(sim, client, lambda s: s.delete_provider(DEMO_PROVIDER_ID))
    intent, cannot = put_back(again, diff(again, removed, noticed_at=utcnow()))
    assert [(e.kind, e.what) for e in cannot] == [("account", "removed")]
    assert intent is not None and intent.routes[0]["id"] == 2  # the route alone would come back: a conflict
    sim.state.providers.clear()
    add_account(
        sim.state, "SIP-TRUNK-0000BEEF", "847801", manualattributes=f"[aor]\npassword={EXTRA_PASSWORD}"
    )
    held, edited = await around(
        sim, client, lambda s: s.providers["SIP-TRUNK-0000BEEF"].update(manualattributes="")
    )
    intent, cannot = put_back(held, diff(held, edited, noticed_at=utcnow()))
    assert intent is None and [e.key for e in cannot] == ["SIP-TRUNK-0000BEEF"]


async def test_the_alert_fires_only_when_calls_end_elsewhere_and_is_rate_limited(
    sim, client, store, tmp_path
):
    services = services_for(store, client, tmp_path)
    notifier = Notifier()
    watch = DriftWatch(services, notifier, interval=3600)

    before, after = await around(sim, client, lambda s: s.routes[2].update(rulename="Renamed"))
    assert len(await watch.observe(before, after)) == 1
    assert notifier.sent == []  # recorded, but no call moved: no alert
    assert [r.event for r in store.audit.trail()] == ["drift"]

    before, after = await around(sim, client, lambda s: s.routes[2].update(extension=DEMO_IVR_EXTENSION))
    await watch.observe(before, after)
    assert len(notifier.sent) == 1  # at once
    before, after = await around(sim, client, lambda s: s.routes[2].update(extension="203"))
    await watch.observe(before, after)
    before, after = await around(sim, client, lambda s: s.set_provider_disabled(DEMO_PROVIDER_ID, True))
    await watch.observe(before, after)
    assert len(notifier.sent) == 1  # held: within the interval
    await watch.flush()
    assert len(notifier.sent) == 2  # the two held, grouped in one message
    text = notifier.sent[1][1]
    assert "847706: Main menu → Olga Petrova" in text and "847706: Olga Petrova → no enabled account" in text

    # the grouped put back restores the oldest "before" of each record
    intent = await put_back_intent(services, "demo", notifier.sent[1][2])
    assert intent.routes[0]["before"]["extension"] == DEMO_IVR_EXTENSION
    assert intent.accounts[0]["fields"] == {"disabled": False}


async def test_the_digest_has_a_section_for_changes_made_outside_the_bot(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    poster = Poster()
    await Scheduler(services, poster).run(CHAT, period="now")
    assert "Nothing changed outside the bot." in poster.all_text

    before, after = await around(sim, client, lambda s: s.routes[2].update(extension=DEMO_IVR_EXTENSION))
    await DriftWatch(services, None).observe(before, after)
    poster = Poster()
    await Scheduler(services, poster).run(CHAT, period="now", lang="ru")
    assert "Изменено в обход бота (1):" in poster.all_text
    assert "маршрут «Zadarma 847706 → Sales» (#2) изменён: назначение: 2200 → 2000" in poster.all_text


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_every_drift_word_exists(lang):
    from bot.routing.drift import DriftEvent, event_line

    for what in ("added", "removed", "disabled", "enabled", "changed"):
        for kind in ("account", "route"):
            line = event_line(DriftEvent(kind, "1", what, [("disabled", False, True)], utcnow(), "x"), lang)
            assert "x" in line


# ---------------------------------------------------------------------- put back, attacked


async def alerted(services, sim, client, edit):
    """One drift through the watch; the alert's Put back intent."""
    notifier = Notifier()
    before, after = await around(sim, client, edit)
    await DriftWatch(services, notifier).observe(before, after)
    return await put_back_intent(services, "demo", notifier.sent[0][2])


async def test_put_back_refuses_a_record_changed_again_since_the_alert(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    intent = await alerted(services, sim, client, lambda s: s.routes[2].update(extension=DEMO_IVR_EXTENSION))
    sim.state.routes[2]["extension"] = "203"  # someone else's change since: not the drift the alert named
    with pytest.raises(PlanError) as refused:
        await services.changes.propose(ANNA, "demo", intent, command="/drift put back")
    assert refused.value.code == "put_back_changed_again"
    assert "Zadarma 847706 → Sales" in error_text(refused.value, "en")
    assert "снова изменили" in error_text(refused.value, "ru")
    sim.state.routes[2]["extension"] = DEMO_IVR_EXTENSION  # as the drift left it: proposed again
    assert (await services.changes.propose(ANNA, "demo", intent, command="/drift put back")).row is not None

    # an account re-enabled by hand since its alert is not disabled again by an old button
    intent = await alerted(services, sim, client, lambda s: s.set_provider_disabled(DEMO_PROVIDER_ID, True))
    sim.state.providers[DEMO_PROVIDER_ID]["disabled"] = False
    sim.state.providers[DEMO_PROVIDER_ID]["description"] = "Re-enabled by hand"
    assert intent.accounts[0]["after"] == {"disabled": True}
    with pytest.raises(PlanError, match="put_back_changed_again"):
        await services.changes.propose(ANNA, "demo", intent, command="/drift put back")


async def test_put_back_changed_again_after_approval_is_stale_and_never_written(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    intent = await alerted(services, sim, client, lambda s: s.routes[2].update(extension=DEMO_IVR_EXTENSION))
    proposal = await services.changes.propose(ANNA, "demo", intent, command="/drift put back")
    await services.changes.approve(BORIS, proposal.row.id)
    sim.state.routes[2]["extension"] = "203"  # changed again between the approval and the apply
    outcome = await services.changes.apply(BORIS, proposal.row.id)
    assert outcome.row.status == "stale"
    assert outcome.replacement is None  # the new version would overwrite 203: not proposed
    assert outcome.row.outcome["replan_error"]["code"] == "put_back_changed_again"
    assert sim.state.routes[2]["extension"] == "203"


async def test_put_back_of_a_route_whose_destination_is_gone_is_refused_before_approval(
    sim, client, store, tmp_path
):
    services = services_for(store, client, tmp_path)
    intent = await alerted(services, sim, client, lambda s: s.routes[2].update(extension=DEMO_IVR_EXTENSION))
    sim.state.queues[:] = [q for q in sim.state.queues if str(q["extension"]) != DEMO_QUEUE_EXTENSION]
    with pytest.raises(PlanError) as refused:
        await services.changes.propose(ANNA, "demo", intent, command="/drift put back")
    assert refused.value.code == "put_back_destination_gone"
    assert DEMO_QUEUE_EXTENSION in error_text(refused.value, "ru")


async def test_an_alert_about_many_records_with_hostile_names_fits_one_message(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    notifier = Notifier()
    hostile = "</code><b>Evil</b>&amp;" + "x" * 700
    before = await read(client)
    for i in range(30):
        add_account(sim.state, f"SIP-TRUNK-{i:08X}", f"8479{i:02d}", description=hostile)
    await DriftWatch(services, notifier).observe(before, await read(client))
    (_chat, text, alert_id) = notifier.sent[0]
    assert utf16_len(text) <= TELEGRAM_LIMIT  # Telegram refuses a longer one: the alert would be lost
    assert "<b>Evil" not in text and "&lt;/code&gt;&lt;b&gt;Evil" in text
    assert text.endswith(t("drift.nothing_to_put_back", "en")) and "more: /drift" in text
    assert alert_id is None  # added accounts: nothing the bot puts back


async def test_credentials_in_extra_parameters_reach_no_event_card_or_audit_row(sim, client, store, tmp_path):
    services = services_for(store, client, tmp_path)
    token = "ya29.refresh-TOKEN-hunter2"
    sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"] = (
        f"[registration-auth]\npassword={EXTRA_PASSWORD}\n[endpoint-auth]\nrefresh_token={token}"
    )
    # an OAuth refresh token (pjsip auth) is a credential too: masked in the drift
    before, after = await around(
        sim,
        client,
        lambda s: s.providers[DEMO_PROVIDER_ID].update(manualattributes="[endpoint-auth]\nrefresh_token=x2"),
    )
    events = diff(before, after, noticed_at=utcnow())
    assert token not in json.dumps([e.to_detail() for e in events]) and "x2" not in str(events)

    # a Put back of a field beside them: the step's result in the audit trail is masked
    sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"] = (
        f"[registration-auth]\npassword={EXTRA_PASSWORD}"
    )
    intent = await alerted(services, sim, client, lambda s: s.set_provider_disabled(DEMO_PROVIDER_ID, True))
    proposal = await services.changes.propose(ANNA, "demo", intent, command="/drift put back")
    await services.changes.approve(BORIS, proposal.row.id)
    assert (await services.changes.apply(BORIS, proposal.row.id)).row.status == "applied"
    assert sim.state.providers[DEMO_PROVIDER_ID]["manualattributes"].endswith(EXTRA_PASSWORD)  # kept
    trail = json.dumps([r.detail for r in store.audit.trail()], ensure_ascii=False)
    assert EXTRA_PASSWORD not in trail and MASK in trail

    # the recipe merged into that account's extra parameters: the card shows the change, masked
    proposal = await services.changes.propose(ANNA, "demo", parse("/addnumber zadarma 847900 → Sales"))
    steps = [s for s in proposal.plan.steps if s.kind is StepKind.UPDATE_PROVIDER]
    assert steps and EXTRA_PASSWORD in steps[0].after["manualattributes"]  # written whole to the PBX
    for lang in ("en", "ru"):
        card = plan_text(proposal.plan, lang, html=True)
        assert EXTRA_PASSWORD not in card and f"password={MASK}" in card
