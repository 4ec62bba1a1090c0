"""The MikoPBX client against the simulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from aiohttp import web

from pbx.errors import (
    PbxAuthError,
    PbxConflict,
    PbxNotFound,
    PbxRateLimited,
    PbxTimeout,
    PbxUnavailable,
    PbxUnsupported,
    PbxValidationError,
)
from pbx.models import SECRET_MASK, Provider, RegistrationState, Route
from sandbox.demo import DEMO_IVR_EXTENSION, DEMO_PROVIDER_ID, DEMO_QUEUE_EXTENSION

from .conftest import API_KEY, fast_client

NEW_SECRET = "n3w-Zadarma-pass"


def zadarma(login: str, **extra) -> Provider:
    return Provider(
        description=f"Zadarma {login}", username=login, host="sip.zadarma.com", transport="udp", **extra
    )


# ---------------------------------------------------------------- auth


async def test_api_key_is_accepted(client):
    await client.check_auth()
    assert await client.ping()


async def test_wrong_api_key_is_an_auth_error(sim):
    async with fast_client(sim.url, api_key="0" * 64) as bad:
        with pytest.raises(PbxAuthError) as err:
            await bad.list_providers()
    assert err.value.status == 401
    assert "The user isn't authenticated." in str(err.value)


async def test_login_and_password_get_a_jwt_and_refresh_it_when_it_expires(sim):
    async with fast_client(sim.url, login="admin", password="admin") as c:
        assert [p.username for p in await c.list_providers()] == ["847706"]
        sim.expire_tokens()
        assert len(await c.list_routes()) == 1  # refreshed behind the scenes
        assert sim.stats["POST auth:login"] == 1 and sim.stats["POST auth:refresh"] == 1

        sim._refresh.clear()  # the refresh token is gone too: log in again
        sim.expire_tokens()
        assert len(await c.list_routes()) == 1
        assert sim.stats["POST auth:login"] == 2


async def test_wrong_password_is_an_auth_error(sim):
    async with fast_client(sim.url, login="admin", password="nope") as c:
        with pytest.raises(PbxAuthError) as err:
            await c.list_providers()
    assert "Invalid login or password" in str(err.value)
    assert "nope" not in str(err.value)


async def test_pbx_without_v3_is_told_apart_from_a_wrong_key():
    # An older MikoPBX: nginx answers 404 with an HTML page for /pbxcore/api/v3/...
    app = web.Application()

    async def old_nginx(request: web.Request) -> web.Response:
        return web.Response(status=404, text="<html>404</html>")

    app.router.add_route("*", "/{tail:.*}", old_nginx)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with fast_client(f"http://127.0.0.1:{port}") as old:
            with pytest.raises(PbxUnsupported):
                await old.check_auth()
            with pytest.raises(PbxUnsupported):
                await old.ping()
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- providers


async def test_list_hides_disabled_accounts_unless_asked_and_keeps_sip_only(sim, client):
    sim.state.providers["IAX-1"] = {**sim.state.providers[DEMO_PROVIDER_ID], "id": "IAX-1", "type": "IAX"}
    created = await client.create_provider(zadarma("847900"), secret=NEW_SECRET)
    sim.state.set_provider_disabled(created.id, True)

    everything = await client.list_providers()
    assert {p.username for p in everything} == {"847706", "847900"}
    assert all(p.type == "SIP" for p in everything)
    assert next(p for p in everything if p.id == created.id).disabled
    assert [p.username for p in await client.list_providers(include_disabled=False)] == ["847706"]
    # list items carry no description; it is read from the HTML `represent`
    assert next(p for p in everything if p.id == DEMO_PROVIDER_ID).description == "Zadarma 847706"


async def test_create_returns_201_masks_the_secret_and_the_pbx_keeps_it(sim, client):
    created = await client.create_provider(zadarma("847900"), secret=NEW_SECRET)
    assert created.id.startswith("SIP-TRUNK-") and len(created.id) == len("SIP-TRUNK-") + 8
    assert created.secret == SECRET_MASK
    assert sim.state.providers[created.id]["secret"] == NEW_SECRET
    assert sim.stats["POST sip-providers"] == 1

    again = await client.get_provider(created.id)
    assert again.secret == SECRET_MASK and again.host == "sip.zadarma.com" and again.port == 5060


async def test_update_sends_the_mask_and_keeps_the_stored_password(sim, client):
    provider = await client.get_provider(DEMO_PROVIDER_ID)
    provider.manualattributes = "[endpoint]\ncontext=public-direct-dial"
    updated = await client.update_provider(provider)
    assert updated.manualattributes == "[endpoint]\ncontext=public-direct-dial"
    assert sim.state.providers[DEMO_PROVIDER_ID]["secret"] == "demo-847706-secret"

    await client.update_provider(updated, secret=NEW_SECRET)
    assert sim.state.providers[DEMO_PROVIDER_ID]["secret"] == NEW_SECRET


async def test_patch_changes_only_the_given_fields(sim, client):
    patched = await client.patch_provider(DEMO_PROVIDER_ID, {"note": "main line", "transport": "TCP"})
    assert patched.note == "main line" and patched.transport == "tcp"
    assert patched.description == "Zadarma 847706"
    with pytest.raises(ValueError):
        await client.patch_provider(DEMO_PROVIDER_ID, {"secret": "x"})


async def test_template_says_UDP_but_writes_need_lower_case(sim, client):
    raw = await client._call("GET", "/sip-providers:getDefault")
    assert raw["transport"] == "UDP"
    template = Provider.model_validate(raw)
    assert template.transport == "udp"  # the model lower-cases MikoPBX's "UDP"
    body = {**raw, "description": "raw", "username": "1", "secret": "s", "host": "h"}
    with pytest.raises(PbxValidationError) as err:
        await client._call("POST", "/sip-providers", json=body)
    assert "Field 'transport' must be one of: udp,tcp, udp, tcp, tls" in str(err.value)

    template.description, template.username, template.host = "From template", "847901", "sip.zadarma.com"
    assert (await client.create_provider(template, secret="s")).transport == "udp"


async def test_required_fields_come_back_as_field_errors(client):
    with pytest.raises(PbxValidationError) as err:
        await client._call("POST", "/sip-providers", json={"username": "1"})
    assert err.value.status == 422
    assert err.value.field_errors == {
        "description": "Provider description is required",
        "registration_type": "Registration type is required",
    }


async def test_outbound_account_without_password_is_refused(client):
    with pytest.raises(PbxValidationError) as err:
        await client.create_provider(zadarma("847900"), secret="")
    assert "Enter password for authorization" in err.value.messages


async def test_delete_takes_the_accounts_routes_along(sim, client):
    await client.delete_provider(DEMO_PROVIDER_ID)
    assert await client.list_providers() == []
    assert await client.list_routes() == []
    with pytest.raises(PbxNotFound):  # MikoPBX says 422 api_ProviderNotFound
        await client.delete_provider(DEMO_PROVIDER_ID)
    with pytest.raises(PbxNotFound):
        await client.get_provider(DEMO_PROVIDER_ID)


async def test_an_id_of_the_wrong_form_is_a_plain_404(client):
    with pytest.raises(PbxNotFound) as err:
        await client.get_provider("IVR-1")
    assert "Endpoint not found" in str(err.value)


async def test_registration_states_are_normalised(sim, client):
    sim.state.registrar.delay = 60.0  # the registrar answers after a minute: no race with a slow machine
    sim.reject_credentials("sip.zadarma.com", "847999")
    good = await client.create_provider(zadarma("847900"), secret="ok")
    bad = await client.create_provider(zadarma("847999"), secret="wrong")
    inbound = await client.create_provider(
        Provider(description="Office", registration_type="inbound", username="office1"), secret="pw"
    )
    first = await client.registration_statuses()
    assert first[good.id].state is RegistrationState.UNREGISTERED

    for pid in (good.id, bad.id, inbound.id):  # two minutes pass
        sim.state.saved_at[pid] -= 2 * sim.state.registrar.delay
    states = await client.registration_statuses(force=True)
    assert states[DEMO_PROVIDER_ID].state is RegistrationState.REGISTERED
    assert states[good.id].state is RegistrationState.REGISTERED and states[good.id].raw_state == "registered"
    assert states[bad.id].state is RegistrationState.REJECTED
    assert states[inbound.id].state is RegistrationState.UNREGISTERED
    assert states[inbound.id].raw_state == "UNREGISTERED"

    sim.state.set_provider_disabled(good.id, True)
    assert (await client.registration_statuses(force=True))[good.id].state is RegistrationState.OFF


# ---------------------------------------------------------------- routes


async def test_default_route_is_not_listed_and_cannot_be_deleted(client):
    routes = await client.list_routes()
    assert [r.id for r in routes] == [2]
    default = await client.default_route()
    assert default.id == 1 and default.extension == "busy" and default.priority == 9999
    with pytest.raises(PbxValidationError) as err:
        await client.delete_route(1)
    assert "Cannot delete default incoming route" in str(err.value)


async def test_create_appends_the_route_last_and_any_provider_reads_as_none(client):
    route = await client.create_route(Route(rulename="847900", number="847900", extension=DEMO_IVR_EXTENSION))
    assert route.id == 3 and route.priority == 2 and route.any_provider
    assert (await client.get_route(route.id)).number == "847900"


async def test_patch_without_providerid_resets_a_route_to_any_provider(client):
    # The quirk itself, on the wire:
    await client._call("PATCH", "/incoming-routes/2", json={"timeout": 60})
    assert (await client.get_route(2)).any_provider


async def test_client_patch_always_sends_providerid(client):
    route = await client.patch_route(2, {"timeout": 45}, providerid=DEMO_PROVIDER_ID)
    assert route.providerid == DEMO_PROVIDER_ID and route.timeout == 45
    route.extension = DEMO_IVR_EXTENSION
    assert (await client.update_route(route)).providerid == DEMO_PROVIDER_ID


async def test_route_to_a_missing_destination_or_provider_is_refused(client):
    with pytest.raises(PbxValidationError) as err:
        await client.create_route(Route(rulename="x", number="1", extension="999"))
    assert 'Value of field "extension" does not exist' in str(err.value)
    with pytest.raises(PbxValidationError):
        await client.create_route(
            Route(rulename="x", number="1", extension="201", providerid="SIP-TRUNK-00000000")
        )


async def test_delete_and_missing_routes(client):
    await client.delete_route(2)
    with pytest.raises(PbxNotFound):
        await client.delete_route(2)
    with pytest.raises(PbxNotFound):
        await client.get_route(2)
    with pytest.raises(PbxNotFound):
        await client.patch_route(2, {"timeout": 1}, providerid=None)


async def test_schema_limits_of_a_route(client):
    with pytest.raises(PbxValidationError) as err:
        await client.create_route(Route(rulename="x", number="1", extension="201", timeout=9000))
    assert "Field 'timeout' must be at most 7400 (got 9000)" in str(err.value)


# ---------------------------------------------------------------- destinations and calls


async def test_destinations_name_queues_and_ivr_menus(client):
    destinations = {d.value: d for d in await client.destinations()}
    assert destinations[DEMO_QUEUE_EXTENSION].name == "Sales <2200>"
    assert destinations[DEMO_QUEUE_EXTENSION].type == "QUEUE"
    assert destinations[DEMO_IVR_EXTENSION].type == "IVR_MENU"
    assert {"201", "202", "203", "busy", "hangup"} <= set(destinations)
    assert "did2user" not in destinations


async def test_cdr_pages(sim, client):
    for i in range(7):
        sim.simulate_call("sip.zadarma.com", "847706" if i % 2 else "74951112233", f"+7495000000{i}")
    page = await client.cdr(limit=3)
    assert page.total == 7 and len(page.records) == 3 and page.has_more
    everything = [r async for r in client.iter_cdr(page_size=3)]
    assert len(everything) == 7 and len({r.id for r in everything}) == 7
    assert {r.from_account for r in everything} == {DEMO_PROVIDER_ID}
    assert len((await client.cdr(did="847706")).records) == 3


# ---------------------------------------------------------------- failures


async def test_503_is_retried_on_reads(sim, client):
    sim.inject("/sip-providers", method="GET", status=503, count=2)
    assert len(await client.list_providers()) == 1
    assert sim.stats["GET sip-providers"] == 1  # the two refused attempts never reached the action


async def test_503_on_a_write_is_not_retried(sim, client):
    sim.inject("/incoming-routes", method="POST", status=503)
    with pytest.raises(PbxUnavailable) as err:
        await client.create_route(Route(rulename="x", number="1", extension="201"))
    assert err.value.status == 503
    assert len(await client.list_routes()) == 1


async def test_429_is_retried_even_for_writes_since_nginx_refused_it_at_the_door(sim, client):
    sim.inject("/incoming-routes", method="POST", status=429)
    route = await client.create_route(Route(rulename="x", number="1", extension="201"))
    assert [r.id for r in await client.list_routes()] == [2, route.id]


async def test_timeout_after_a_write_that_did_succeed_is_an_unknown_outcome(sim):
    async with fast_client(sim.url, timeout=0.3) as c:
        sim.inject("/sip-providers", method="POST", delay=2.0, when="after")
        with pytest.raises(PbxTimeout):
            await c.create_provider(zadarma("847900"), secret="s")
        assert sim.stats["POST sip-providers"] == 1  # never retried blind
        # ...and reading back shows the account was created
        assert {p.username for p in await c.list_providers()} == {"847706", "847900"}


async def test_dropped_connection_on_a_read_is_retried(sim, client):
    sim.inject("/incoming-routes", method="GET", drop=True)
    assert len(await client.list_routes()) == 1


async def test_dropped_connection_on_a_write_is_not_retried(sim, client):
    sim.inject("/incoming-routes/2", method="DELETE", drop=True, when="after")
    with pytest.raises(PbxUnavailable):
        await client.delete_route(2)
    assert sim.stats["DELETE incoming-routes/{id}"] == 1


async def test_409_is_a_conflict(sim, client):
    sim.inject("/incoming-routes/2", method="PUT", status=409, message="Route was changed")
    with pytest.raises(PbxConflict) as err:
        await client.update_route(await client.get_route(2))
    assert "Route was changed" in str(err.value)


async def test_unreachable_pbx():
    async with fast_client("http://127.0.0.1:9", retries=1) as c:
        with pytest.raises(PbxUnavailable):
            await c.list_routes()


async def test_nginx_rate_limit_blocks_and_the_client_limiter_stays_under_it(sim):
    sim.state.settings["PBXRateLimitEnabled"] = "1"
    sim.rate_limit, sim.rate_burst, sim.rate_window = 6, 2, 2.0

    async with fast_client(sim.url, retries=0) as greedy:
        # nine different reads (the same read at once would be one call)
        reads = (greedy._call("GET", "/incoming-routes", params={"n": n}) for n in range(9))
        results = await asyncio.gather(*reads, return_exceptions=True)
        assert sum(isinstance(r, PbxRateLimited) for r in results) == 1
        with pytest.raises(PbxRateLimited):  # blocked now
            await greedy.ping()

    sim._windows.clear()
    # 3/s with a burst of 2 never exceeds 8 requests in a 2 s window.
    async with fast_client(sim.url, retries=0, rate_limit_per_min=180, burst=2) as polite:
        for _ in range(12):
            await polite.list_routes()


async def test_rate_limit_is_switched_off_by_general_settings(sim, client):
    sim.state.settings["PBXRateLimitEnabled"] = "1"
    sim.rate_limit, sim.rate_burst = 2, 0
    await client._call("PATCH", "/general-settings", json={"PBXRateLimitEnabled": "0"})
    for _ in range(6):
        await client.list_routes()
    assert (await client.general_settings())["PBXRateLimitEnabled"] == "0"


# ---------------------------------------------------------------- secrets


async def test_no_secret_reaches_logs_errors_or_reprs(sim, caplog):
    caplog.set_level(logging.DEBUG)
    async with fast_client(sim.url, login="admin", password="admin") as c:
        created = await c.create_provider(zadarma("847900"), secret=NEW_SECRET)
        await c.update_provider(created, secret=NEW_SECRET + "2")
        with pytest.raises(PbxValidationError) as err:
            await c.create_provider(zadarma("847901", port=70000), secret=NEW_SECRET)
        texts = [caplog.text, str(err.value), repr(c), repr(created), str(created)]
    async with fast_client(sim.url) as k:
        await k.list_providers()
        texts += [caplog.text, repr(k)]
    for text in texts:
        for secret in (NEW_SECRET, API_KEY, "admin\n", "Bearer "):
            assert secret not in text
    assert "POST /sip-providers -> 201" in caplog.text  # the calls are logged, the bodies are not


async def test_call_records_are_emitted_for_the_audit_trail(client):
    seen = []
    client.listeners.append(seen.append)
    await client.list_routes()
    with pytest.raises(PbxNotFound):
        await client.get_route(99)
    assert [(r.method, r.path, r.status) for r in seen] == [
        ("GET", "/incoming-routes", 200),
        ("GET", "/incoming-routes/99", 404),
    ]


async def test_query_parameters_override_the_body(sim, client):
    # MikoPBX's Request::getData: query keys win over body keys.
    data = await client._call(
        "POST",
        "/incoming-routes",
        params={"number": "from-query"},
        json={"rulename": "q", "number": "from-body", "extension": "201"},
    )
    assert data["number"] == "from-query"


async def test_http_transport_injection_for_unit_tests():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer k"
        return httpx.Response(200, json={"result": True, "data": [], "messages": []})

    async with fast_client("http://pbx", api_key="k", transport=httpx.MockTransport(handler)) as c:
        assert await c.list_routes() == []


async def test_the_same_read_at_once_is_one_call_but_never_hides_a_write(sim, client):
    """Ten /numbers at once read the accounts once; a read begun after a write
    began does not join a read begun before it (it would miss the write)."""
    sim.latency = 0.2
    sim.stats.clear()
    lists = await asyncio.gather(*(client.list_providers() for _ in range(10)))
    assert sim.stats["GET sip-providers"] == 1, sim.stats
    assert all(len(found) == len(lists[0]) for found in lists)
    assert lists[0] is not lists[1]  # each caller gets its own records to keep

    sim.stats.clear()
    before = asyncio.ensure_future(client.list_providers())
    await asyncio.sleep(0)  # the first read is under way
    created = await client.create_provider(zadarma("847900"), secret="pw")
    after = await client.list_providers()
    assert created.id in {p.id for p in after}
    assert sim.stats["GET sip-providers"] == 2, sim.stats
    await before


async def test_a_ca_bundle_path_becomes_an_ssl_context_without_a_warning(recwarn):
    import ssl

    import certifi

    from pbx.mikopbx import MikoPbxClient, tls_context

    assert tls_context(True) is True and tls_context(False) is False
    context = tls_context(certifi.where())
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    async with MikoPbxClient("https://pbx.invalid", api_key="k", verify=certifi.where()):
        pass
    assert not [w for w in recwarn if issubclass(w.category, DeprecationWarning)]


async def test_a_list_the_same_to_the_byte_is_not_validated_again(sim, client):
    """Every command lists accounts and routes: an answer equal to the last one gives the
    records parsed then (a new list each time); any change in the body parses anew."""
    for rid in range(100, 200):  # a list long enough to be kept
        sim.state.routes[rid] = {
            "id": rid, "rulename": f"in {rid}", "number": str(900000 + rid), "provider": None,
            "priority": rid, "timeout": 120, "extension": "2000", "audio_message_id": None, "note": "",
        }  # fmt: skip
    first = await client.list_routes()
    second = await client.list_routes()
    assert second == first and second is not first and all(a is b for a, b in zip(first, second, strict=True))
    second.pop()  # the caller's own list: the kept one is whole
    assert len(await client.list_routes()) == len(first)
    sim.state.routes[150]["extension"] = "2200"
    third = await client.list_routes()
    assert {r.id: r.extension for r in third}[150] == "2200" and third[0] is not first[0]


# ---------------------------------------------------------------- lists kept parsed


async def test_a_list_answered_again_by_another_worker_a_second_later_is_not_parsed_again(
    sim, client, monkeypatch
):
    """MikoPBX's answers of an unchanged list differ in the worker's pid and in `meta`
    (its time to the second and a hash over it): the records parsed last time are given
    again, and a change inside `data` is parsed."""
    import sandbox.mikopbx as simulator
    from tests.test_mirror import grow

    grow(sim, 60)  # a list long enough to be kept parsed
    monkeypatch.setattr(simulator, "_WORKER_PIDS", (4101,))
    first = await client.list_providers()
    monkeypatch.setattr(simulator, "_WORKER_PIDS", (4102,))
    again = await client.list_providers()
    assert len(again) == len(first) and all(a is b for a, b in zip(again, first, strict=True))

    changed = next(p for p in sim.state.providers.values() if p["username"] == "900007")
    changed["port"] = 5080
    after = await client.list_providers()
    assert {p.username: p.port for p in after}["900007"] == 5080
    assert after[0] is not first[0]


def test_only_the_envelopes_own_pid_and_meta_are_left_out_of_the_comparison():
    from pbx.mikopbx import _lasting_end

    meta = b'"meta":{"timestamp":"2026-11-27T00:24:44+00:00","hash":"a8ea56"}'
    envelope = b'{"result":true,"data":[{"id":1}],"messages":[],"function":"f","processor":"p"'
    body = envelope + b',"pid":6825,' + meta + b"}"
    assert _lasting_end(body) == len(envelope)
    assert _lasting_end(envelope + b', "pid": 12 , ' + meta + b" }\n") == len(envelope)
    # a pid and meta inside `data`, with no envelope tail after them: everything counts
    inner = b'{"result":true,"data":{"x":1,"pid":5,' + meta + b"}}"
    assert _lasting_end(inner) == len(inner)
    # anything else in the tail (httpCode, pagination, a key MikoPBX may add): everything counts
    for tail in (b',"pid":1,"httpCode":200,', b',"pid":1,"pagination":{"total":3},', b',"pid":"1",'):
        assert _lasting_end(envelope + tail + meta + b"}") == len(envelope + tail + meta) + 1
    assert _lasting_end(b"") == 0 and _lasting_end(b'{"pid":1}') == 9


# ---------------------------------------------------------------- reads begun ahead


def begun_ahead(client, call):
    """`call` begun as a read ahead (SnapshotReader.read_ahead), not awaited."""
    from pbx.base import reading_ahead

    token = reading_ahead.set(True)
    try:
        return asyncio.ensure_future(call())
    finally:
        reading_ahead.reset(token)


def begun_planned(call):
    """`call` begun as a command's read to plan on (SnapshotReader.read_then), not awaited."""
    from pbx.base import planning

    token = planning.set(True)
    try:
        return asyncio.ensure_future(call())
    finally:
        planning.reset(token)


async def ahead(client, call):
    """`call` begun as a read ahead, awaited to its answer."""
    return await begun_ahead(client, call)


async def planned(call):
    """`call` as a command's read to plan on, awaited."""
    return await begun_planned(call)


async def test_an_answer_read_ahead_is_taken_once_by_the_read_it_was_begun_for(sim, client):
    records: list = []
    client.listeners.append(records.append)
    await ahead(client, client.list_routes)
    assert sim.stats["GET incoming-routes"] == 1
    await planned(client.list_routes)  # the command, after the answer came: takes it
    assert sim.stats["GET incoming-routes"] == 1
    assert [r.joined for r in records] == [False, True]  # told as joined, not as a call
    await planned(client.list_routes)  # taken already: read anew
    assert sim.stats["GET incoming-routes"] == 2


async def test_an_answer_read_ahead_for_two_commands_is_taken_by_each(sim, client):
    """Two commands at once: the second joins the first's read ahead. Answered before
    either asks, it is kept for both, not taken by the first and read again by the other."""
    await ahead(client, client.list_routes)
    await ahead(client, client.list_routes)  # the second command's: joins it (answered already)
    await planned(client.list_routes)
    await planned(client.list_routes)
    assert sim.stats["GET incoming-routes"] == 1
    await planned(client.list_routes)  # both came: a third reads anew
    assert sim.stats["GET incoming-routes"] == 2


async def test_a_command_that_joined_its_read_in_flight_leaves_the_answer_to_the_other(sim, client):
    begun = [begun_ahead(client, client.list_routes) for _ in range(2)]  # two commands': one request
    first = begun_planned(client.list_routes)  # one command asks while it is on the wire
    await asyncio.gather(*begun, first)
    await planned(client.list_routes)  # the other, after the answer: takes it
    assert sim.stats["GET incoming-routes"] == 1
    await planned(client.list_routes)
    assert sim.stats["GET incoming-routes"] == 2


async def test_a_read_ahead_late_for_its_command_is_not_kept_for_another(sim, client):
    """The reads ahead leave one after another and the command waits for them 20 ms at
    most: its planning read may leave first, and its read ahead join it late. That is the
    same command, not one still to come: the answer is not kept, and the next command reads
    what the PBX holds (found by a review of 48bbfda)."""
    sim.latency = 0.1
    mine = begun_planned(client.list_routes)
    await asyncio.sleep(0.01)
    late = begun_ahead(client, client.list_routes)
    await asyncio.gather(mine, late)
    assert sim.stats["GET incoming-routes"] == 1
    sim.state.routes[2]["note"] = "by hand"
    routes = await planned(client.list_routes)  # another command, nothing read ahead for it
    assert sim.stats["GET incoming-routes"] == 2
    assert {r.id: r.note for r in routes}[2] == "by hand"


async def test_a_write_between_two_commands_taking_a_read_ahead_makes_the_second_read_anew(sim, client):
    await ahead(client, client.list_routes)
    await ahead(client, client.list_routes)
    await planned(client.list_routes)  # the first takes it
    await client.patch_route(2, {"note": "edited"}, providerid=None)
    routes = await planned(client.list_routes)  # the second, after the bot's write: reads anew
    assert {r.id: r.note for r in routes}[2] == "edited"
    assert sim.stats["GET incoming-routes"] == 2


async def test_an_answer_kept_for_two_commands_is_let_go_after_the_keep(sim, client, monkeypatch):
    import pbx.mikopbx as module

    monkeypatch.setattr(module, "AHEAD_KEEP", 0.2)
    await ahead(client, client.list_routes)
    await ahead(client, client.list_routes)
    await planned(client.list_routes)  # one of the two; the other never comes
    sim.state.routes[2]["note"] = "by hand"
    await until_let_go(client)
    routes = await planned(client.list_routes)
    assert {r.id: r.note for r in routes}[2] == "by hand"


async def test_a_failed_read_ahead_for_two_commands_is_let_go(sim, client):
    sim.inject("/incoming-routes", method="GET", status=500)
    results = await asyncio.gather(
        begun_ahead(client, client.list_routes),
        begun_ahead(client, client.list_routes),
        return_exceptions=True,
    )
    assert all(isinstance(r, Exception) for r in results)
    assert client._reads == {}
    await planned(client.list_routes)
    await planned(client.list_routes)  # each reads (and the fault is gone)
    assert sim.stats["GET incoming-routes"] == 2


async def test_a_read_ahead_that_logs_in_first_is_joined_by_its_command(sim):
    """With a login and password, the first call after a start logs in first. Logging in
    changes nothing of the PBX's: a read under way may still be joined (found by a review)."""
    async with fast_client(sim.url, name="demo", login="admin", password="admin") as c:
        begun = begun_ahead(c, c.list_routes)
        # the login answered (the client tells no one): the list's request next
        while c._jwt is None and not begun.done():  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        await planned(c.list_routes)
        await begun
        assert sim.stats["GET incoming-routes"] == 1


async def until_let_go(client, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Until the client keeps no answer read ahead (its keep timer fired)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while client._reads:  # its timer tells no one
        assert asyncio.get_running_loop().time() < deadline, client._reads
        await asyncio.sleep(0.01)


async def test_an_answer_read_ahead_is_taken_by_a_command_planning_only(sim, client):
    """Any other read (the stale check before a write) reads what the PBX holds now."""
    await ahead(client, client.list_routes)
    sim.state.routes[2]["note"] = "by hand"
    routes = await client.list_routes()
    assert sim.stats["GET incoming-routes"] == 2 and {r.id: r.note for r in routes}[2] == "by hand"
    await planned(client.list_routes)  # and the answer read ahead is gone: read anew
    assert sim.stats["GET incoming-routes"] == 3


async def test_an_answer_read_ahead_is_not_taken_late_or_after_a_write(sim, client, monkeypatch):
    import pbx.mikopbx as module

    monkeypatch.setattr(module, "AHEAD_KEEP", 0.0)  # nobody came in time
    await ahead(client, client.list_routes)
    await planned(client.list_routes)
    assert sim.stats["GET incoming-routes"] == 2

    monkeypatch.setattr(module, "AHEAD_KEEP", 60.0)
    await ahead(client, client.list_routes)
    await client.patch_route(2, {"note": "edited"}, providerid=None)  # what was read ahead may not show it
    routes = await planned(client.list_routes)
    assert sim.stats["GET incoming-routes"] == 4
    assert {r.id: r.note for r in routes}[2] == "edited"


async def test_an_answer_read_ahead_the_same_as_the_kept_list_gives_that_list_not_one_parsed_since(sim):
    """An answer read ahead that was the kept list, to the byte, is that list when its
    command takes it seconds later: not whatever list was parsed meanwhile (here, a read
    begun before the bot's write, answered late, with what the PBX held then)."""
    import httpx

    from tests.conftest import fast_client

    class Held(httpx.AsyncBaseTransport):
        """The next route list's answer, once read from the PBX, is held until released."""

        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()
            self.hold: asyncio.Event | None = None
            self.served = asyncio.Event()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.inner.handle_async_request(request)
            routes = request.method == "GET" and request.url.path.endswith("/incoming-routes")
            if self.hold is not None and routes:
                hold, self.hold = self.hold, None
                await response.aread()
                self.served.set()
                await hold.wait()
            return response

        async def aclose(self) -> None:
            await self.inner.aclose()

    for rid in range(100, 200):  # a list long enough to be kept parsed
        sim.state.routes[rid] = {
            "id": rid, "rulename": f"in {rid}", "number": str(900000 + rid), "provider": None,
            "priority": rid, "timeout": 120, "extension": "2000", "audio_message_id": None, "note": "",
        }  # fmt: skip
    transport = Held()
    async with fast_client(sim.url, name="demo", transport=transport) as client:
        await client.list_routes()  # kept parsed: route 150's note ""
        sim.state.routes[150]["note"] = "by hand"  # an admin, in the web interface
        transport.hold = release = asyncio.Event()
        late = asyncio.ensure_future(client.list_routes())  # e.g. the refresher's: answered late
        await transport.served.wait()  # ... with "by hand"
        await client.patch_route(150, {"note": ""}, providerid=None)  # the bot puts it back
        await ahead(client, client.list_routes)  # a command's read ahead: the kept list again
        release.set()
        assert {r.id: r.note for r in await late}[150] == "by hand"  # what the PBX said then
        reads = sim.stats["GET incoming-routes"]
        routes = await planned(client.list_routes)  # the command: takes its answer read ahead
        assert sim.stats["GET incoming-routes"] == reads  # (taken, not read again)
        assert {r.id: r.note for r in routes}[150] == ""  # what the PBX says since the write
