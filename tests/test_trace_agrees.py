"""Property: the bot's trace and the simulator's `calls:simulate` (sandbox/dialplan.py,
MikoPBX's generator as its source reads) end every call in the same place, on random
PBXes: separate and shared host:port contexts, the recipe on some accounts, disabled
accounts, DID patterns, phone DIDs, "any provider" routes, and where the default route goes.

Both sides are built from one generated state, with no HTTP: the simulator's records
as the sandbox stores them, and the Snapshot the bot would read from them."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.plans.snapshot import Snapshot
from bot.routing.trace import Tracer
from pbx.models import Provider, Route
from sandbox.dialplan import Dialplan

RECIPE = "[endpoint]\ncontext=public-direct-dial"
HOSTS = ["sip.zadarma.com", "sip.example.net"]
LOGINS = ["847706", "847900", "848001", "zadarma-a"]
PHONES = ["+74952293042", "+74957777777"]
DESTINATIONS = ["2200", "2000", "202", "busy"]


@st.composite
def pbxes(draw):
    n = draw(st.integers(1, 4))
    providers = {}
    for i in range(n):
        pid = f"SIP-TRUNK-{i:08X}"
        providers[pid] = {
            "id": pid,
            "type": "SIP",
            "disabled": draw(st.booleans()) and draw(st.booleans()),  # a quarter disabled
            "host": draw(st.sampled_from(HOSTS[:1] * 3 + HOSTS[1:])),
            "port": draw(st.sampled_from([5060, 5060, 5080])),
            "username": draw(st.sampled_from(LOGINS)),
            "registration_type": draw(st.sampled_from(["outbound", "outbound", "none"])),
            "manualattributes": RECIPE if draw(st.booleans()) else "",
            "note": draw(st.sampled_from(["", *PHONES])),
        }
    numbers = st.sampled_from(["", "", *LOGINS, *PHONES, "_8479XX", "_X.", "_84[7-8]XXX"])
    owners = st.sampled_from([None, *providers])
    routes = {}
    for rid in range(2, 2 + draw(st.integers(0, 6))):
        routes[rid] = {
            "id": rid,
            "rulename": f"r{rid}",
            "number": draw(numbers),
            "provider": draw(owners),
            "priority": draw(st.integers(1, 5)),
            "extension": draw(st.sampled_from(DESTINATIONS)),
        }
    default = draw(st.sampled_from(DESTINATIONS))  # MikoPBX always has one (id 1): where it goes varies
    routes[1] = {"id": 1, "rulename": "default", "number": "", "provider": None, "priority": 9999}
    routes[1]["extension"] = default
    return providers, routes


def snapshot_of(providers, routes) -> Snapshot:
    details = {
        pid: Provider(
            id=pid,
            username=p["username"],
            host=p["host"],
            port=p["port"],
            disabled=p["disabled"],
            registration_type=p["registration_type"],
            manualattributes=p["manualattributes"],
            note=p["note"],
        )
        for pid, p in providers.items()
    }
    listed = [
        Route(
            id=r["id"],
            rulename=r["rulename"],
            number=r["number"],
            providerid=r["provider"],
            priority=r["priority"],
            extension=r["extension"],
        )
        for r in routes.values()
        if r["id"] != 1
    ]
    return Snapshot("pbx", [], listed, [], details)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pbxes())
def test_the_trace_ends_where_the_simulator_does(pbx):
    providers, routes = pbx
    dialplan = Dialplan(providers, routes, {})
    tracer = Tracer(snapshot_of(providers, routes), Route(**routes[1]))
    extens = {*LOGINS, *PHONES} | {r["number"] for r in routes.values() if r["number"]}
    for account in tracer.enabled:
        for exten in sorted(extens):
            call = dialplan.simulate(account.host, exten)
            traced = tracer.follow(account, exten)
            where = (call, [line.key for line in traced.lines])
            assert traced.outcome == call["outcome"], where
            assert traced.context == call["context"], where
            assert traced.endpoint is not None and traced.endpoint.id == call["endpoint"], where
            if call["outcome"] == "dial":
                assert traced.route is not None and traced.route.id == call["route_id"], where
            if call["outcome"] == "default":
                assert traced.destination == call["destination"], where
