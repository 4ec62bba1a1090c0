"""A stateful MikoPBX REST API v3 simulator (aiohttp), quirks included.

    pbxbot simulator --host 127.0.0.1 --port 8088 --seed demo --api-key KEY

What it imitates (mikopbx/Core 2026.1):
- routing `/pbxcore/api/v3/<resource>[/<id>][:<method>]`, ids checked per
  resource (a wrong id is a plain 404 "Endpoint not found", with `success`
  instead of `result`, as Phalcon's notFound handler writes it);
- Bearer auth (API keys or JWTs from `auth:login`), 401 "The user isn't authenticated.";
- the envelope (`result`, `data`, `messages`, `function`, `processor`, `pid`, `meta`), as
  `Http/Response.php` sends it: PHP's `json_encode` (compact, slashes and non-ASCII escaped),
  `pid` of whichever of the three API workers answered, `meta.timestamp` to the second
  and `meta.hash` = sha1(timestamp + content), an `E-Tag` header = sha1(content): two
  answers of the same unchanged list are rarely the same to the byte;
- nginx's gzip (level 1) of JSON, text and HTML for a client that accepts it;
- nginx's rate limit: 180 requests per 60 s window + 20 burst per client, then
  "Too many requests" (429, plain text) and a 300 s block doubling per offence,
  off when general setting `PBXRateLimitEnabled` is "0";
- query parameters override body keys.

Test controls live under `/sandbox/` (no auth, not counted, not rate limited):
`calls:simulate`, `faults`, `registrar:reject`, `registrar:password`, `stats`, `state`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import inspect
import json
import os
import random
import re
import secrets
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from .dialplan import Dialplan
from .pbxstate import ApiFailure, PbxState
from .server import LoopbackServer

API_PREFIX = "/pbxcore/api/v3/"
PUBLIC_ACTIONS = {("system", "ping"), ("auth", "login"), ("auth", "refresh")}
# Controller idPattern / prefix lists: an id outside them is a plain 404.
ID_RULES: dict[str, Callable[[str], bool]] = {
    "sip-providers": lambda i: i.startswith(("SIP-TRUNK-", "SIP-PROVIDER-", "SIP-")),
    "providers": lambda i: i.startswith(("SIP-", "IAX-")),
    "incoming-routes": lambda i: i.isdigit(),
    "extensions": lambda i: bool(re.fullmatch(r"[0-9A-Za-z_-]+", i)),
    "general-settings": lambda i: bool(re.fullmatch(r"[a-zA-Z_]+", i)),
}


NO_BODY: Any = object()


@dataclass
class Fault:
    """Break the next `count` calls matching `path` (a glob on the API path, e.g.
    `/sip-providers*`) and `method` (None: any).

    `body` answers with something that is not MikoPBX's shape (with `status`, 200
    when unset): a str is sent as an HTML page (a proxy's error page, a PHP
    warning); anything else as the `data` of a successful envelope (`[]`, `"x"`,
    a record whose id has the wrong type)."""

    path: str
    method: str | None = None
    status: int | None = None  # answer with this status and a MikoPBX error envelope
    delay: float = 0.0  # seconds before answering (a timeout when over the client's)
    drop: bool = False  # close the connection without an answer
    when: str = "before"  # "after": carry out the request first, then fail the answer
    count: int = 1
    skip: int = 0  # let this many matching calls through first
    message: str = "Simulated failure"
    body: Any = NO_BODY
    answer: Any = NO_BODY  # the whole JSON answer as it is (a success envelope whose data is "x")

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and fnmatch.fnmatchcase(path, self.path)


@dataclass
class _Window:
    started: float = 0.0
    count: int = 0
    blocked_until: float = 0.0
    offences: int = 0


@dataclass
class _Request:
    method: str
    resource: str
    record_id: str | None
    action: str | None
    data: dict[str, Any]
    raw: web.Request
    api_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[_Request], Awaitable[tuple[int, Any]] | tuple[int, Any]]


class MikoPbxSimulator(LoopbackServer):
    def __init__(
        self,
        state: PbxState | None = None,
        *,
        api_keys: tuple[str, ...] | list[str] = (),
        admin_login: str = "admin",
        admin_password: str = "admin",
        rate_limit: int = 180,
        rate_burst: int = 20,
        rate_window: float = 60.0,
        block_seconds: float = 300.0,
        jwt_ttl: int = 900,
        state_file: Path | None = None,
        trust_localhost: bool = False,
    ):
        self.state = state or PbxState()
        self.api_keys = set(api_keys)
        self.admin_login = admin_login
        self.admin_password = admin_password
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.rate_window = rate_window
        self.block_seconds = block_seconds
        self.latency = 0.0  # seconds every API call takes before it is handled: a slow PBX
        self.timeline: list[tuple[float, float]] | None = None  # (start, end) per API call, when recording
        self.jwt_ttl = jwt_ttl
        self.state_file = state_file
        # Real MikoPBX lets 127.0.0.1 in without auth; off by default, so the
        # simulator on loopback behaves like a PBX across the network.
        self.trust_localhost = trust_localhost
        self.faults: list[Fault] = []
        self.stats: Counter[str] = Counter()
        self._jwts: dict[str, float] = {}
        self._refresh: dict[str, float] = {}
        self._windows: dict[str, _Window] = {}
        self._login_failures: dict[str, list[float]] = {}
        self._table = self._handlers()
        self.app = self._build_app()

    # ------------------------------------------------------------------ lifecycle

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/sandbox/{tail:.*}", self._sandbox)
        app.router.add_route("*", "/{tail:.*}", self._api)
        return app

    # ------------------------------------------------------------------ test controls

    def inject(self, path: str, **kwargs: Any) -> Fault:
        fault = Fault(path=path, **kwargs)
        self.faults.append(fault)
        return fault

    def reject_credentials(self, host: str, username: str) -> None:
        self.state.registrar.rejected.add((host.lower(), username))

    def issue_password(self, host: str, username: str, password: str) -> None:
        """The provider's side knows this password for the login: an account registers
        with it and is rejected (403) with any other, as a real registrar answers."""
        self.state.registrar.passwords[(host.lower(), username)] = password

    def simulate_call(self, host: str, to: str, from_: str = "") -> dict[str, Any]:
        result = Dialplan(self.state.providers, self.state.routes, self.state.settings).simulate(
            host, to, from_
        )
        named = self.state.extension_numbers().get(result["destination"] or "")
        result["destination_name"] = named[1] if named else None  # "Main menu" for 2000
        self._record_cdr(host, to, from_, result)
        return result

    def reads(self) -> int:
        return sum(n for key, n in self.stats.items() if key.startswith("GET "))

    def writes(self) -> int:
        return sum(n for key, n in self.stats.items() if not key.startswith("GET "))

    def _record_cdr(self, host: str, to: str, from_: str, result: dict[str, Any]) -> None:
        now = time.strftime("%Y-%m-%d %H:%M:%S")
        linkedid = f"sim-{len(self.state.cdr) + 1}"
        self.state.cdr.append(
            {
                "id": str(len(self.state.cdr) + 1),
                "start": now,
                "answer": now if result["outcome"] == "dial" else "",
                "endtime": now,
                "src_num": from_,
                "dst_num": result["destination"] or to,
                "did": to,
                "disposition": "ANSWERED" if result["outcome"] == "dial" else "NO ANSWER",
                "duration": 30,
                "billsec": 25 if result["outcome"] == "dial" else 0,
                "linkedid": linkedid,
                "from_account": result["endpoint"] or "",
                "to_account": "",
                "source_host": host,
            }
        )

    async def _sandbox(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        body = await _json_body(request)
        if tail == "calls:simulate" and request.method == "POST":
            missing = [k for k in ("host", "to") if not body.get(k)]
            if missing:
                return _envelope(422, None, {"error": [f"{k} is required" for k in missing]}, "simulate")
            data = self.simulate_call(str(body["host"]), str(body["to"]), str(body.get("from", "")))
            return _envelope(200, data, [], "simulate")
        if tail == "faults" and request.method == "POST":
            try:
                self.inject(**body)
            except TypeError as exc:
                return _envelope(422, None, {"error": [str(exc)]}, "faults")
            return _envelope(201, {"faults": len(self.faults)}, [], "faults")
        if tail == "faults" and request.method == "DELETE":
            self.faults.clear()
            return _envelope(200, {"faults": 0}, [], "faults")
        if tail == "registrar:reject" and request.method == "POST":
            self.reject_credentials(str(body.get("host", "")), str(body.get("username", "")))
            return _envelope(200, {}, [], "registrar")
        if tail == "registrar:password" and request.method == "POST":
            fields = [str(body.get(k, "")) for k in ("host", "username", "password")]
            self.issue_password(*fields)
            return _envelope(200, {}, [], "registrar")
        if tail == "stats" and request.method == "GET":
            return _envelope(
                200, {"calls": dict(self.stats), "reads": self.reads(), "writes": self.writes()}, [], ""
            )
        if tail == "stats" and request.method == "DELETE":
            self.stats.clear()
            return _envelope(200, {}, [], "stats")
        if tail == "state" and request.method == "GET":
            return _envelope(200, self.state.dump(), [], "state")
        return _envelope(404, None, {"error": [f"unknown sandbox control {tail}"]}, "sandbox")

    # ------------------------------------------------------------------ API

    def _client_ip(self, request: web.Request) -> str:
        return request.remote or "unknown"

    def _rate_limited(self, ip: str) -> bool:
        """nginx unified-security.lua: a counter per client and window, limit + burst."""
        if str(self.state.settings.get("PBXRateLimitEnabled", "1")) != "1":
            return False
        now = time.monotonic()
        window = self._windows.setdefault(ip, _Window(started=now))
        if window.blocked_until > now:
            return True
        if now - window.started >= self.rate_window:
            window.started, window.count = now, 0
        window.count += 1
        if window.count > self.rate_limit + self.rate_burst:
            block = min(self.block_seconds * (2**window.offences), 3600.0)
            window.offences += 1
            window.blocked_until = now + block
            return True
        return False

    def _authenticated(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header[7:].strip()
            if token in self.api_keys:
                return True
            expires = self._jwts.get(token)
            return expires is not None and expires > time.monotonic()
        return self.trust_localhost and request.remote in ("127.0.0.1", "::1")

    async def _api(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            return _nginx_gzip(request, await self._api_call(request))
        finally:
            if self.timeline is not None:
                self.timeline.append((started, time.monotonic()))

    async def _api_call(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if not path.startswith(API_PREFIX):
            return _not_found(request)
        if self._rate_limited(self._client_ip(request)):
            return web.Response(status=429, text="Too many requests\n", content_type="text/html")
        parsed = _parse_path(path[len(API_PREFIX) :])
        if parsed is None:
            return _not_found(request)
        resource, record_id, action = parsed
        if record_id is not None and resource in ID_RULES and not ID_RULES[resource](record_id):
            return _not_found(request)
        if (resource, action) not in PUBLIC_ACTIONS and not self._authenticated(request):
            return _envelope(401, None, {"error": ["The user isn't authenticated."]}, "")

        data = await _request_data(request)
        req = _Request(
            request.method, resource, record_id, action, data, request, api_path="/" + path[len(API_PREFIX) :]
        )
        handler = self._route(req)
        if handler is None:
            return _not_found(request)

        fault = next((f for f in self.faults if f.matches(request.method, req.api_path)), None)
        if fault is not None and fault.skip > 0:
            fault.skip -= 1
            fault = None
        if fault is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            if fault.when == "before":
                return await self._fail(request, fault)

        self.stats[f"{request.method} {_stat_key(req)}"] += 1
        try:
            result = handler(req)
            status, payload = await result if inspect.isawaitable(result) else result
            response = _envelope(status, payload, [], f"{resource}:{action or request.method}")
            if "cookie" in req.extra:  # the refresh token travels as an httpOnly cookie
                response.set_cookie("refreshToken", req.extra["cookie"], httponly=True, max_age=30 * 86400)
        except ApiFailure as failure:
            response = _envelope(failure.status, [], {"error": failure.errors}, f"{resource}:{action}")
        if request.method != "GET" and self.state_file is not None:
            self.state.save(self.state_file)
        if fault is not None:  # when == "after": the change is made, the answer is lost
            return await self._fail(request, fault)
        return response

    async def _fail(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.answer is not NO_BODY:
            return web.json_response(fault.answer, status=fault.status or 200)
        if fault.drop:
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        if fault.body is not NO_BODY:
            status = fault.status or 200
            if isinstance(fault.body, str):
                return web.Response(status=status, text=fault.body, content_type="text/html")
            return _envelope(status, fault.body, [], "fault")
        if fault.status is not None:
            if fault.status == 429:
                return web.Response(status=429, text="Too many requests\n", content_type="text/html")
            return _envelope(fault.status, [], {"error": [fault.message]}, "fault")
        raise web.HTTPInternalServerError  # a delay-only fault after the action: unreachable in practice

    # ------------------------------------------------------------------ dispatch

    def _route(self, req: _Request) -> Handler | None:
        key = (req.resource, req.method, req.record_id is not None, req.action)
        return self._table.get(key)

    def _handlers(self) -> dict[tuple[str, str, bool, str | None], Handler]:
        sim = self

        class _S:  # late binding: tests may swap `self.state`
            def __getattr__(self, name: str) -> Any:
                return getattr(sim.state, name)

        s = _S()
        return {
            ("system", "GET", False, "ping"): lambda r: (200, []),
            ("system", "GET", False, "checkAuth"): lambda r: (200, []),
            ("auth", "POST", False, "login"): self._login,
            ("auth", "POST", False, "refresh"): self._refresh_token,
            ("auth", "POST", False, "logout"): lambda r: (200, []),
            ("general-settings", "GET", False, None): lambda r: (200, dict(s.settings)),
            ("general-settings", "GET", True, None): self._setting,
            ("general-settings", "PATCH", False, None): self._update_settings,
            ("general-settings", "PUT", False, None): self._update_settings,
            # SIP providers
            ("sip-providers", "GET", False, None): self._list_providers,
            ("sip-providers", "GET", True, None): lambda r: (
                200,
                s.provider_view(s.find_provider(r.record_id)),
            ),
            ("sip-providers", "GET", False, "getDefault"): lambda r: (200, s.provider_template()),
            ("sip-providers", "GET", True, "copy"): lambda r: (200, s.provider_copy(r.record_id)),
            ("sip-providers", "POST", False, None): lambda r: s.save_provider(
                r.data, method="POST", provider_id=None
            ),
            ("sip-providers", "PUT", True, None): self._save_provider,
            ("sip-providers", "PATCH", True, None): self._save_provider,
            ("sip-providers", "DELETE", True, None): self._delete_provider,
            ("sip-providers", "POST", True, "updateStatus"): self._update_status,
            ("sip-providers", "GET", False, "getStatuses"): self._statuses,
            ("sip-providers", "GET", True, "getStatus"): self._status,
            ("sip-providers", "POST", True, "forceCheck"): self._status,
            ("sip-providers", "GET", True, "getHistory"): self._history,
            ("providers", "GET", False, "getStatuses"): self._statuses,
            ("providers", "GET", True, "getStatus"): self._status,
            ("providers", "GET", True, "getHistory"): self._history,
            ("providers", "POST", True, "updateStatus"): self._update_status,
            # incoming routes
            ("incoming-routes", "GET", False, None): lambda r: (200, s.list_routes()),
            ("incoming-routes", "GET", True, None): lambda r: (
                200,
                s.route_view(s.find_route(int(r.record_id))),
            ),
            ("incoming-routes", "GET", False, "getDefault"): lambda r: (200, s.route_template()),
            ("incoming-routes", "GET", False, "getDefaultRoute"): lambda r: (
                200,
                s.route_view(s.find_route(1)),
            ),
            ("incoming-routes", "POST", False, None): self._create_route,
            ("incoming-routes", "PUT", True, None): self._save_route,
            ("incoming-routes", "PATCH", True, None): self._save_route,
            ("incoming-routes", "DELETE", True, None): self._delete_route,
            ("incoming-routes", "POST", False, "changePriority"): self._change_priority,
            ("incoming-routes", "POST", True, "copy"): lambda r: (200, s.route_copy(int(r.record_id))),
            ("incoming-routes", "GET", False, "getUniqueDIDs"): lambda r: (
                200,
                s.unique_dids(str(r.data.get("providerid", ""))),
            ),
            # destinations
            ("extensions", "GET", False, "getForSelect"): self._for_select,
            ("call-queues", "GET", False, None): lambda r: (200, s.queues),
            ("ivr-menu", "GET", False, None): lambda r: (200, s.ivr_menus),
            ("employees", "GET", False, None): lambda r: (200, s.employees),
            # calls
            ("cdr", "GET", False, None): self._cdr,
            ("cdr", "GET", False, "getStatsByProvider"): self._cdr_stats,
            ("pbx-status", "GET", False, "getActiveCalls"): lambda r: (200, s.active_calls),
        }

    # ------------------------------------------------------------------ handlers

    def _login(self, req: _Request) -> tuple[int, Any]:
        ip = self._client_ip(req.raw)
        now = time.monotonic()
        failures = [t for t in self._login_failures.get(ip, []) if now - t < 300]
        self._login_failures[ip] = failures
        if len(failures) >= 10:
            raise ApiFailure(429, ["Too many login attempts. Please try again in 300 seconds."])
        login, password = req.data.get("login"), req.data.get("password")
        if not isinstance(login, str) or not isinstance(password, str):
            raise ApiFailure(400, ["Either login+password or sessionToken must be provided"])
        if not (
            secrets.compare_digest(login, self.admin_login)
            and secrets.compare_digest(password, self.admin_password)
        ):
            failures.append(now)
            raise ApiFailure(401, ["Invalid login or password"])
        return self._issue_jwt(req)

    def _issue_jwt(self, req: _Request) -> tuple[int, Any]:
        token = "sim." + secrets.token_urlsafe(24)
        self._jwts[token] = time.monotonic() + self.jwt_ttl
        refresh = secrets.token_hex(32)
        self._refresh[refresh] = time.monotonic() + 30 * 86400
        req.extra["cookie"] = refresh
        return 200, {"accessToken": token, "tokenType": "Bearer", "expiresIn": self.jwt_ttl}

    def _refresh_token(self, req: _Request) -> tuple[int, Any]:
        cookie = req.raw.cookies.get("refreshToken", "")
        if self._refresh.get(cookie, 0) <= time.monotonic():
            raise ApiFailure(401, ["Invalid or expired refresh token"])
        return self._issue_jwt(req)

    def expire_tokens(self) -> None:
        """Make every issued JWT expire now (tests of the client's re-login)."""
        self._jwts.clear()

    def _setting(self, req: _Request) -> tuple[int, Any]:
        if req.record_id not in self.state.settings:
            raise ApiFailure(404, ["Setting not found"])
        return 200, {req.record_id: self.state.settings[req.record_id]}

    def _update_settings(self, req: _Request) -> tuple[int, Any]:
        for key, value in req.data.items():
            self.state.settings[str(key)] = "1" if value is True else "0" if value is False else str(value)
        return 200, dict(self.state.settings)

    def _list_providers(self, req: _Request) -> tuple[int, Any]:
        # includeDisabled must be the string "true" exactly.
        include_disabled = req.raw.query.get("includeDisabled") == "true"
        rows = sorted(self.state.providers.values(), key=lambda p: p["description"])
        return 200, [self.state.provider_list_item(p) for p in rows if include_disabled or not p["disabled"]]

    def _save_provider(self, req: _Request) -> tuple[int, Any]:
        return self.state.save_provider(req.data, method=req.method, provider_id=req.record_id)

    def _delete_provider(self, req: _Request) -> tuple[int, Any]:
        self.state.delete_provider(str(req.record_id))
        return 200, {"id": req.record_id}

    def _update_status(self, req: _Request) -> tuple[int, Any]:
        disabled = req.data.get("disabled")
        value = disabled if isinstance(disabled, bool) else str(disabled).lower() in ("1", "true")
        return 200, self.state.set_provider_disabled(str(req.record_id), value)

    def _statuses(self, req: _Request) -> tuple[int, Any]:
        sip = {pid: self.state.registration(p) for pid, p in self.state.providers.items()}
        return 200, {"sip": sip, "iax": {}}

    def _status(self, req: _Request) -> tuple[int, Any]:
        return 200, self.state.registration(self.state.find_provider(str(req.record_id)))

    def _history(self, req: _Request) -> tuple[int, Any]:
        """Providers\\GetHistoryAction::main (sip-providers and providers both reach it through
        ProvidersManagementProcessor): `limit` as PHP's (int) reads it, within 1..1000,
        default 100; the Redis list newest first, each event with datetime and timeAgo."""
        record = self.state.find_provider(str(req.record_id))
        limit = max(min(_php_int(req.raw.query.get("limit"), 100), 1000), 1)
        stored = self.state.registration_history(record)
        provider = {
            "uniqid": record["id"],
            "type": "sip",
            "description": record["description"],
            "host": record["host"],
            "username": record["username"],
            "disabled": bool(record["disabled"]),
        }
        if not stored:
            data = {"provider": provider, "events": [], "count": 0, "limit": limit}
            return 200, {**data, "message": "No history available for this provider"}
        now = int(time.time())
        events = []
        for event in stored[:limit]:
            events.append(
                {
                    **event,
                    "datetime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event["timestamp"])),
                    "timeAgo": _time_ago(now - event["timestamp"]),
                    "details": f"State changed from {event['previousState']} to {event['state']}",
                }
            )
        return 200, {
            "provider": provider,
            "events": events,
            "count": len(events),
            "limit": limit,
            "statistics": _history_stats(events),
            "totalAvailable": len(stored),
        }

    def _create_route(self, req: _Request) -> tuple[int, Any]:
        route_id = str(req.data.get("id") or "")
        rid = int(route_id) if route_id.isdigit() else None
        return self.state.save_route(req.data, method="POST", route_id=rid)

    def _save_route(self, req: _Request) -> tuple[int, Any]:
        return self.state.save_route(req.data, method=req.method, route_id=int(str(req.record_id)))

    def _delete_route(self, req: _Request) -> tuple[int, Any]:
        self.state.delete_route(int(str(req.record_id)))
        return 200, {"deleted_id": req.record_id}

    def _change_priority(self, req: _Request) -> tuple[int, Any]:
        priorities = req.data.get("priorities", req.data)
        if not isinstance(priorities, dict):
            raise ApiFailure(422, ["No priority data provided"])
        return 200, self.state.change_priority(priorities)

    def _for_select(self, req: _Request) -> tuple[int, Any]:
        kind = req.raw.query.get("type", "all")
        items = self.state.routing_select()
        if kind in ("phones", "internal"):
            items = [i for i in items if i["type"] == "SIP"]
        return 200, items

    def _cdr_rows(self, query: Any) -> list[dict[str, Any]]:
        rows = list(self.state.cdr)
        for key in ("did", "src_num", "dst_num", "disposition", "linkedid"):
            if query.get(key):
                rows = [r for r in rows if r.get(key) == query[key]]
        date_from, date_to = query.get("dateFrom"), query.get("dateTo")
        if date_from:
            date_from += " 00:00:00" if len(date_from) == 10 else ""
            rows = [r for r in rows if r["start"] >= date_from]
        if date_to:
            date_to += " 23:59:59" if len(date_to) == 10 else ""
            rows = [r for r in rows if r["start"] <= date_to]
        return rows

    def _cdr(self, req: _Request) -> tuple[int, Any]:
        query = req.raw.query
        try:
            limit = min(max(1, int(query.get("limit", 50))), 1000)
            offset = max(0, int(query.get("offset", 0)))
        except ValueError as exc:
            raise ApiFailure(422, ["Invalid pagination parameters"]) from exc
        rows = sorted(self._cdr_rows(query), key=lambda r: r["start"], reverse=True)
        page = [{k: v for k, v in r.items() if k != "source_host"} for r in rows[offset : offset + limit]]
        last = page[-1]["id"] if page else None
        pagination = {
            "total": len(rows),
            "limit": limit,
            "offset": offset,
            "hasMore": offset + limit < len(rows),
            "lastId": last,
        }
        return 200, {"records": page, "pagination": pagination}

    def _cdr_stats(self, req: _Request) -> tuple[int, Any]:
        query = req.raw.query
        if not query.get("dateFrom") or not query.get("dateTo"):
            raise ApiFailure(422, ["dateFrom and dateTo are required"])
        stats: dict[str, dict[str, Any]] = {}
        for row in self._cdr_rows(query):
            provider = row.get("from_account")
            if not provider or (query.get("provider") and provider != query["provider"]):
                continue
            record = self.state.providers.get(provider, {})
            item = stats.setdefault(
                provider,
                {
                    "provider": provider,
                    "providerName": record.get("description", provider),
                    "direction": "incoming",
                    "totalCalls": 0,
                    "answeredCalls": 0,
                    "totalDuration": 0,
                    "totalBillsec": 0,
                },
            )
            item["totalCalls"] += 1
            item["answeredCalls"] += row["disposition"] == "ANSWERED"
            item["totalDuration"] += row["duration"]
            item["totalBillsec"] += row["billsec"]
        return 200, list(stats.values())


# ---------------------------------------------------------------------- helpers


def _php_int(value: str | None, default: int) -> int:
    """PHP's (int) of a query string: its leading integer, 0 when it has none."""
    if value is None:
        return default
    match = re.match(r"\s*([+-]?\d+)", value)
    return int(match.group(1)) if match else 0


def _time_ago(seconds: int) -> str:
    """GetHistoryAction::getTimeAgo."""
    if seconds < 60:
        return f"{seconds} seconds ago"
    n, unit = (
        (seconds // 60, "minute")
        if seconds < 3600
        else (seconds // 3600, "hour")
        if seconds < 86400
        else (seconds // 86400, "day")
    )
    return f"{n} {unit}{'s' if n > 1 else ''} ago"


def _history_stats(history: list[dict[str, Any]]) -> dict[str, Any]:
    """GetHistoryAction::calculateHistoryStats: `history` newest first."""
    if not history:
        return {}
    stats: dict[str, Any] = {"totalEvents": len(history), "stateChanges": 0, "errors": 0, "recoveries": 0}
    states: dict[str, int] = {}
    for event in history:
        if "state" not in event:
            continue
        stats["stateChanges"] += 1
        state = str(event["state"]).lower()
        states[state] = states.get(state, 0) + 1
        if state in ("rejected", "unreachable", "off", "unknown"):
            stats["errors"] += 1
        elif state in ("registered", "ok", "reachable"):
            previous = str(event.get("previousState") or "").lower()
            if previous in ("rejected", "unreachable", "unregistered", "off", "unknown"):
                stats["recoveries"] += 1
    stats["states"] = states
    first, last = history[-1], history[0]
    if "timestamp" in first and "timestamp" in last:
        stats["timeRange"] = {
            "from": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(first["timestamp"])),
            "to": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["timestamp"])),
            "duration": last["timestamp"] - first["timestamp"],
        }
    return stats


def _parse_path(tail: str) -> tuple[str, str | None, str | None] | None:
    """`res`, `res/id`, `res:method`, `res/id:method` -> (resource, id, method)."""
    parts = tail.strip("/").split("/")
    if not parts or not parts[0] or len(parts) > 2:
        return None
    if len(parts) == 1:
        resource, _, action = parts[0].partition(":")
        return resource, None, action or None
    record, _, action = parts[1].partition(":")
    if not record:
        return None
    return parts[0], record, action or None


def _stat_key(req: _Request) -> str:
    key = req.resource + ("/{id}" if req.record_id is not None else "")
    return key + (f":{req.action}" if req.action else "")


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}


async def _request_data(request: web.Request) -> dict[str, Any]:
    """Body (JSON or form), then query parameters, which override body keys."""
    data: dict[str, Any] = {}
    if request.can_read_body:
        if request.content_type == "application/json":
            data = await _json_body(request)
        else:
            form = await request.post()
            data = {k: v for k, v in form.items() if isinstance(v, str)}
    data.update(request.query)
    return data


# MikoPBX answers from one of its WorkerApiCommands processes (three by default);
# the envelope's `pid` is the worker's own (getmypid)
_WORKER_PIDS = (os.getpid() + 1, os.getpid() + 2, os.getpid() + 3)


def php_json(value: Any) -> str:
    """`json_encode($value)` with PHP's default flags: compact, `/` escaped, non-ASCII as \\uXXXX."""
    return json.dumps(value, separators=(",", ":")).replace("/", "\\/")


def _envelope(status: int, data: Any, messages: Any, function: str) -> web.Response:
    ok = status < 400
    body: dict[str, Any] = {
        "result": ok,
        "data": data if data is not None else [],
        "messages": messages,
        "function": function,
        "processor": "sandbox",
        "pid": random.choice(_WORKER_PIDS),
    }
    if status not in (200,):
        body["httpCode"] = status
    # Http/Response.php::send: meta appended to the content, E-Tag over the content
    content = php_json(body)
    timestamp = datetime.now().astimezone().isoformat(timespec="seconds")  # date('c')
    body["meta"] = {"timestamp": timestamp, "hash": hashlib.sha1((timestamp + content).encode()).hexdigest()}
    etag = hashlib.sha1(content.encode()).hexdigest()
    return web.Response(
        text=php_json(body), status=status, content_type="application/json", headers={"E-Tag": etag}
    )


# MikoPBX's nginx.conf (src/Core/System/RootFS/etc/nginx/nginx.conf): gzip on, gzip_proxied any,
# these gzip_types (text/html always), nginx's defaults: level 1, 20 bytes at least
_GZIP_TYPES = {
    "text/html",
    "text/plain",
    "text/css",
    "application/json",
    "application/x-javascript",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
}


def _nginx_gzip(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """The answer as nginx sends it to a client that accepts gzip: compressed, level 1."""
    if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
        return response
    accepted = request.headers.get("Accept-Encoding", "").lower()
    if "gzip" not in accepted or response.content_type not in _GZIP_TYPES or len(response.body) < 20:
        return response
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # a gzip stream
    response.body = packer.compress(response.body) + packer.flush()
    response.headers["Content-Encoding"] = "gzip"
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _not_found(request: web.Request) -> web.Response:
    # Phalcon's notFound handler: `success`, not `result`.
    body = {"success": False, "messages": {"error": [f"Endpoint not found: {request.path_qs}"]}, "data": None}
    return web.json_response(body, status=404)
