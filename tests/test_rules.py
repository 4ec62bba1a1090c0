"""The shared routing rules: one spelling of a host for every reader of the PBX
(snapshot, planner, executor, doctor, trace), whatever spaces, case or trailing
dot the record was written with."""

from __future__ import annotations

from bot.plans import executor
from bot.plans.commands import FixHost
from bot.plans.snapshot import Snapshot, SnapshotReader
from bot.routing.doctor import Finding, Severity, groups_by_host
from bot.routing.rules import accounts_of_number, has_recipe, host_key, merge_recipe, same_host
from bot.routing.trace import Tracer
from pbx.models import Provider, ProviderSummary

WRITTEN = " SIP.Zadarma.com "
PLAIN = "sip.zadarma.com"


def _snapshot() -> Snapshot:
    accounts = [
        Provider(id="SIP-1", username="847706", host=WRITTEN),
        Provider(id="SIP-2", username="847900", host=PLAIN + "."),
    ]
    summaries = [ProviderSummary(id=p.id, username=p.username, host=p.host) for p in accounts]
    return Snapshot("pbx", summaries, [], [], {p.id: p for p in accounts})


def test_the_rule_itself():
    assert host_key(WRITTEN) == host_key(PLAIN) == host_key("sip.zadarma.com.") == PLAIN
    assert same_host(WRITTEN, PLAIN) and not same_host(WRITTEN, "sip2.zadarma.com")


def test_every_reader_takes_both_spellings_for_one_host():
    snapshot = _snapshot()
    assert [p.id for p in snapshot.accounts_on(PLAIN)] == ["SIP-1", "SIP-2"]  # the snapshot
    assert [p.id for p in snapshot.accounts_on(WRITTEN)] == ["SIP-1", "SIP-2"]
    groups = groups_by_host(list(snapshot.details.values()))  # the doctor
    assert list(groups) == [PLAIN] and len(groups[PLAIN]) == 2
    # the trace: identify matches both accounts by one host, so the first takes the other's calls
    assert Tracer(snapshot).trace("847900").collision
    # the executor's read-back key for an account
    assert executor._key({"host": WRITTEN, "username": "1"}) == executor._key(
        {"host": PLAIN, "username": "1"}
    )
    # a doctor's fix button: one callback key for one host
    keys = {Finding("x", Severity.WARNING, h, fix=FixHost(h)).fix_key for h in (WRITTEN, PLAIN)}
    assert len(keys) == 1


async def test_the_snapshot_reader_settles_a_number_on_one_host_in_two_spellings():
    class Pbx:
        name = "pbx"

        def __init__(self):
            self.accounts = dict(_snapshot().details)

        async def list_providers(self):
            return [ProviderSummary(id=p.id, username="847706", host=p.host) for p in self.accounts.values()]

        async def list_routes(self):
            return []

        async def destinations(self):
            return []

        async def get_provider(self, pid):
            return self.accounts[pid]

    snapshot = await SnapshotReader(Pbx()).read(number="847706")
    assert snapshot.host is not None and host_key(snapshot.host) == PLAIN
    assert len(accounts_of_number(snapshot.providers, "847706")) == 2


def test_the_recipe_as_the_bot_writes_it():
    assert has_recipe(merge_recipe("[endpoint]\ncontext=other"))
    assert not has_recipe("")
