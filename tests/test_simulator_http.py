"""The simulator speaks MikoPBX's wire format; its controls and its command line."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from pbx.models import Route
from sandbox.demo import DEMO_PROVIDER_ID, demo_state
from sandbox.mikopbx import MikoPbxSimulator

from .conftest import API_KEY, fast_client

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_envelope_of_a_success_and_of_an_error(sim):
    async with httpx.AsyncClient(base_url=sim.url + "/pbxcore/api/v3", headers=AUTH) as http:
        ok = await http.get("/incoming-routes")
        body = ok.json()
        assert ok.status_code == 200
        assert {"result", "data", "messages", "function", "processor", "pid", "meta"} <= set(body)
        assert body["result"] is True and body["messages"] == []

        bad = await http.post("/sip-providers", json={"username": "x"})
        assert bad.status_code == 422
        assert bad.json()["result"] is False
        assert bad.json()["messages"]["error"]["description"] == "Provider description is required"


async def test_two_answers_of_an_unchanged_list_differ_where_mikopbx_s_differ(sim):
    """Http/Response.php: PHP's json_encode, the answering worker's pid, meta.timestamp to
    the second, meta.hash = sha1(timestamp . content), E-Tag = sha1(content)."""
    async with httpx.AsyncClient(base_url=sim.url + "/pbxcore/api/v3", headers=AUTH) as http:
        answers = [await http.get("/sip-providers") for _ in range(12)]
    first = answers[0]
    assert b", " not in first.content[:200] and b"<\\/i>" in first.content  # compact, "/" escaped
    bodies = [a.json() for a in answers]
    assert len({b["pid"] for b in bodies}) > 1  # three workers answer, twelve times
    assert all(b["data"] == bodies[0]["data"] for b in bodies)
    for answer, body in zip(answers, bodies, strict=True):
        meta = body["meta"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", meta["timestamp"])
        content = answer.content[: answer.content.rindex(b',"meta":')] + b"}"
        assert meta["hash"] == hashlib.sha1(meta["timestamp"].encode() + content).hexdigest()
        assert answer.headers["E-Tag"] == hashlib.sha1(content).hexdigest()


async def test_json_is_gzipped_as_mikopbx_s_nginx_does_for_a_client_that_accepts_it(sim):
    """nginx.conf: gzip on for application/json (level 1); httpx asks for it by default."""
    async with httpx.AsyncClient(base_url=sim.url + "/pbxcore/api/v3", headers=AUTH) as http:
        packed = await http.get("/incoming-routes")
        plain = await http.get("/incoming-routes", headers={"Accept-Encoding": "identity"})
    assert packed.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
    assert int(packed.headers["Content-Length"]) < int(plain.headers["Content-Length"])
    assert packed.json()["data"] == plain.json()["data"]


async def test_unknown_endpoint_is_phalcons_404_with_success_not_result(sim):
    async with httpx.AsyncClient(base_url=sim.url, headers=AUTH) as http:
        response = await http.get("/pbxcore/api/v3/no-such-resource")
    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "messages": {"error": ["Endpoint not found: /pbxcore/api/v3/no-such-resource"]},
        "data": None,
    }


async def test_no_header_is_401_even_from_loopback_unless_trusted(sim):
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.get("/pbxcore/api/v3/incoming-routes")
        assert response.status_code == 401
        assert response.json()["messages"]["error"] == ["The user isn't authenticated."]
        assert (await http.get("/pbxcore/api/v3/system:ping")).status_code == 200
    sim.trust_localhost = True  # what a real MikoPBX does for 127.0.0.1
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.get("/pbxcore/api/v3/incoming-routes")).status_code == 200


async def test_login_is_form_encoded_and_rate_limited(sim):
    async with httpx.AsyncClient(base_url=sim.url + "/pbxcore/api/v3") as http:
        ok = await http.post("/auth:login", data={"login": "admin", "password": "admin"})
        assert ok.json()["data"]["tokenType"] == "Bearer" and "refreshToken" in ok.cookies
        refreshed = await http.post("/auth:refresh")
        assert refreshed.status_code == 200 and refreshed.json()["data"]["accessToken"]
        for _ in range(10):
            assert (
                await http.post("/auth:login", data={"login": "admin", "password": "x"})
            ).status_code == 401
        blocked = await http.post("/auth:login", data={"login": "admin", "password": "admin"})
        assert blocked.status_code == 429


async def test_faults_and_stats_over_http(sim):
    async with httpx.AsyncClient(base_url=sim.url) as http:
        added = await http.post(
            "/sandbox/faults", json={"path": "/incoming-routes", "status": 503, "count": 1}
        )
        assert added.status_code == 201
        api = await http.get("/pbxcore/api/v3/incoming-routes", headers=AUTH)
        assert api.status_code == 503 and api.json()["result"] is False
        assert (await http.get("/pbxcore/api/v3/incoming-routes", headers=AUTH)).status_code == 200
        stats = (await http.get("/sandbox/stats")).json()["data"]
        assert stats == {"calls": {"GET incoming-routes": 1}, "reads": 1, "writes": 0}
        await http.post("/sandbox/registrar:reject", json={"host": "sip.zadarma.com", "username": "847706"})
        assert ("sip.zadarma.com", "847706") in sim.state.registrar.rejected
        await http.post(
            "/sandbox/registrar:password",
            json={"host": "SIP.zadarma.com", "username": "847707", "password": "issued"},
        )
        registrar = sim.state.registrar  # the issued password registers, any other is refused
        assert registrar.accepts("sip.zadarma.com", "847707", "issued")
        assert not registrar.accepts("sip.zadarma.com", "847707", "typo")
        assert not registrar.accepts("sip.zadarma.com", "847706", "anything")  # rejected whatever
        assert registrar.accepts("sip.zadarma.com", "847708", "anything")  # nothing issued: any
        bad = await http.post("/sandbox/faults", json={"nonsense": 1})
        assert bad.status_code == 422


async def test_state_file_survives_a_restart(tmp_path):
    path = tmp_path / "pbx.json"
    async with MikoPbxSimulator(demo_state(), api_keys=[API_KEY], state_file=path) as first:
        async with fast_client(first.url) as c:
            await c.create_route(Route(rulename="kept", number="847900", extension="201"))
    restored = demo_state().load(json.loads(path.read_text()))
    async with MikoPbxSimulator(restored, api_keys=[API_KEY]) as second:
        async with fast_client(second.url) as c:
            assert [r.rulename for r in await c.list_routes()] == ["Zadarma 847706 → Sales", "kept"]
            assert (await c.get_provider(DEMO_PROVIDER_ID)).username == "847706"


async def test_pbxbot_simulator_command_serves_the_demo_pbx(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot.entry.cli", "simulator", "--port", "0", "--api-key", API_KEY,
        "--state", str(tmp_path / "s.json"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=60)).decode()
        url = re.search(r"(http://[0-9.:]+)/pbxcore", line).group(1)
        async with fast_client(url) as c:
            assert [p.username for p in await c.list_providers()] == ["847706"]
            await c.create_route(Route(rulename="x", number="1", extension="201"))
        assert (tmp_path / "s.json").is_file()
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lang", "en", "tour"], ["[registered]", "any number -> Sales <2200>", "→ Sales (2200): account"]),
        (["numbers", "--sandbox", "--lang", "en"], ["[registered]", "any number -> Sales <2200>"]),
        (["--lang", "ru", "numbers", "--sandbox"], ["[зарегистрирован]", "любой номер -> Sales <2200>"]),
    ],
)
async def test_cli_commands_against_the_sandbox(argv, expected):
    """Global options before or after the subcommand."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.entry.cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "847706 @ sip.zadarma.com:5060" in text
    for line in expected:
        assert line in text


async def test_call_names_the_destination_and_json_on_request():
    argv = ["call", "--sandbox", "--host", "sip.zadarma.com", "--to", "847706", "--lang", "en"]
    for extra, check in (
        ([], "→ Sales (2200): account SIP-TRUNK-"),
        (["--json"], '"destination_name": "Sales"'),
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.entry.cli", *argv, *extra, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0 and check in out.decode()


async def test_a_closed_pipe_is_quiet():
    """`pbxbot tour | head -1`: no BrokenPipe traceback."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot.entry.cli",
        "--lang",
        "en",
        "tour",
        stdout=write,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 141 and b"Traceback" not in err and err == b""


def test_version():
    proc = subprocess.run(
        [sys.executable, "-m", "bot.entry.cli", "--version"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.startswith("pbxbot ")


@pytest.mark.parametrize("resource", ["sip-providers", "providers"])
async def test_get_history_answers_as_mikopbx_does(sim, resource):
    """Providers\\GetHistoryAction: provider, events (newest first), count, limit within
    1..1000 (default 100, PHP's (int) of the parameter), statistics, totalAvailable."""
    path = f"/{resource}/{DEMO_PROVIDER_ID}:getHistory"
    async with httpx.AsyncClient(base_url=sim.url + "/pbxcore/api/v3", headers=AUTH) as http:

        async def history(**params):
            response = await http.get(path, params=params)
            assert response.status_code == 200
            return response.json()["data"]

        data = await history()
        assert {"provider", "events", "count", "limit", "statistics", "totalAvailable"} <= set(data)
        assert data["limit"] == 100 and data["count"] == len(data["events"]) == data["totalAvailable"] == 2
        assert data["provider"] == {
            "uniqid": DEMO_PROVIDER_ID,
            "type": "sip",
            "description": sim.state.providers[DEMO_PROVIDER_ID]["description"],
            "host": "sip.zadarma.com",
            "username": "847706",
            "disabled": False,
        }
        newest, oldest = data["events"]
        assert (newest["state"], newest["previousState"]) == ("registered", "unregistered")
        assert (oldest["state"], oldest["previousState"]) == ("unregistered", "UNKNOWN")
        assert {"timestamp", "datetime", "timeAgo", "event", "details", "type"} <= set(newest)
        assert newest["timestamp"] >= oldest["timestamp"] and newest["timeAgo"].endswith("ago")
        stats = data["statistics"]
        assert (stats["totalEvents"], stats["stateChanges"], stats["recoveries"]) == (2, 2, 1)
        assert stats["states"] == {"registered": 1, "unregistered": 1} and "timeRange" in stats

        one = await history(limit=1)
        assert (one["limit"], one["count"], one["totalAvailable"]) == (1, 1, 2)
        assert one["events"][0]["state"] == "registered"  # the newest
        assert (await history(limit=0))["limit"] == 1
        assert (await history(limit=-7))["limit"] == 1
        assert (await history(limit="abc"))["limit"] == 1  # (int)"abc" is 0, then at least 1
        assert (await history(limit="3xyz"))["limit"] == 3
        huge = await history(limit=5000)
        assert huge["limit"] == 1000 and huge["count"] == 2
