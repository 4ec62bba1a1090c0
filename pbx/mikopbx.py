"""Async client for the MikoPBX REST API v3 (MikoPBX 2026.1 and later).

Every MikoPBX quirk the bot depends on is handled here, once:
- the success flag is `result` (the 404 of an unknown endpoint says `success`);
- `messages.error` is a list, or a dict keyed by field after required-field checks;
- some "not found" answers are 422 with `api_ProviderNotFound`/`api_IncomingRouteNotFound`;
- a route PUT/PATCH without `providerid` turns the route into "any provider", so
  `providerid` is always sent;
- SIP passwords read back as `XXXXXXXX`; sending the mask keeps the stored one;
- `transport` must be lower case on writes;
- disabled providers are listed only with `includeDisabled=true` (the string);
- the provider list mixes SIP and IAX: only SIP is kept;
- nginx allows 180 requests/min (+20) per client: every call takes a token from the
  PBX's budget (pbx/budget.py), shared by every replica and served by priority;
- 429 and 503 are retried with backoff on reads; a write is never retried blind.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .base import call_written, planning, reading_ahead
from .budget import Budget, Claim, LocalBudget, claimed, current_claim, current_priority
from .errors import (
    PbxAuthError,
    PbxConflict,
    PbxError,
    PbxForbidden,
    PbxMalformed,
    PbxNotFound,
    PbxRateLimited,
    PbxTimeout,
    PbxUnavailable,
    PbxUnreachable,
    PbxUnsupported,
    PbxValidationError,
)
from .models import (
    ANY_PROVIDER,
    CdrPage,
    CdrRecord,
    Destination,
    Provider,
    ProviderSummary,
    RegistrationStatus,
    Route,
    strip_html,
)

log = logging.getLogger("pbxbot.pbx")

API_PATH = "/pbxcore/api/v3"
# how long an answer read ahead waits for the command it was begun for (its reader looks up
# the chat's PBX first: a millisecond, or a slow database's round trip)
AHEAD_KEEP = 5.0
_KEEP_LISTS_OVER = 8192  # bytes: a list answer this long is kept parsed while it says the same
# The end of every answer as Http/Response.php sends it: the pid of whichever API worker
# answered, then `meta` (the second it was sent, a hash over that and the content).
# Two answers of an unchanged list differ there and only there.
_VOLATILE_TAIL = re.compile(
    rb'\s*,\s*"pid"\s*:\s*\d+\s*,\s*"meta"\s*:\s*\{\s*"timestamp"\s*:\s*"[^"\\]*"\s*,'
    rb'\s*"hash"\s*:\s*"[0-9a-fA-F]*"\s*\}\s*\}\s*'
)
_NOT_FOUND_CODES = {"api_ProviderNotFound", "api_IncomingRouteNotFound"}
_RETRY_STATUSES = {429, 502, 503, 504}


@dataclass(frozen=True, slots=True)
class _Kept:
    """`_exchange`'s word for "the body is the kept list's": the records kept for it then.
    Carried with the answer, not looked up when a reader gets it: a reader may come
    seconds later (an answer read ahead), after another answer was kept for the key."""

    records: list[Any]


@dataclass(slots=True)
class _Shared:
    """A read others may join (`_call`): under way, or answered ahead of its reader."""

    epoch: int  # the client's write epoch when it began
    task: asyncio.Task[Any]
    claim: Claim
    waiting: int  # commands it was begun or joined ahead for (`reading_ahead`) that have not asked yet
    until: float | None = None  # answered ahead: each of them takes it until then (monotonic)
    asked: bool = False  # begun by a command's planning read: a read ahead joining it is that command's, late


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP call, as the audit trail and the metrics see it: no body, no headers."""

    method: str
    path: str
    status: int | None
    elapsed_ms: float
    error: str | None = None
    joined: bool = False  # no request of its own: it shared one under way (not a PBX call)


def _error_texts(messages: Any) -> tuple[list[str], dict[str, str]]:
    """`messages.error` as (all texts, field -> text)."""
    errors = messages.get("error") if isinstance(messages, Mapping) else None
    if isinstance(errors, Mapping):
        fields = {str(k): str(v) for k, v in errors.items()}
        return list(fields.values()), fields
    if isinstance(errors, list):
        return [str(e) for e in errors], {}
    if errors:
        return [str(errors)], {}
    return [], {}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def tls_context(verify: bool | str | ssl.SSLContext) -> bool | ssl.SSLContext:
    """httpx's `verify`: True (httpx's CA bundle), False (no check), or for a CA bundle
    at a path (a self-signed PBX) an `ssl.SSLContext` trusting only it: httpx 0.28
    deprecates passing the path."""
    if isinstance(verify, bool | ssl.SSLContext):
        return verify
    return ssl.create_default_context(cafile=verify)


class MikoPbxClient:
    """One MikoPBX, reached with an API key or with login + password (JWT)."""

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        login: str | None = None,
        password: str | None = None,
        verify: bool | str = True,
        timeout: float = 10.0,
        rate_limit_per_min: float = 165,
        burst: int = 10,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        name: str = "pbx",
        max_in_flight: int = 16,
        budget: Budget | None = None,
    ):
        if (api_key is None) == (login is None or password is None):
            raise ValueError("give an API key, or login and password")
        base = url.rstrip("/")
        if not base.endswith(API_PATH):
            base += API_PATH
        self.name = name
        self.base_url = base
        self._api_key = api_key
        self._login = login
        self._password = password
        self._jwt: str | None = None
        self._jwt_expires = 0.0
        self._auth_lock = asyncio.Lock()
        self._retries = retries
        self._backoff = backoff
        # The PBX's call budget: this client's own unless one shared by every client
        # of this PBX (and every replica) is given.
        self.budget = budget if budget is not None else LocalBudget(rate_limit_per_min, burst)
        # Calls on the wire at once. The rest wait here, not in httpcore's pool,
        # whose queue is scanned per request: 5,000 detail reads queued there
        # took minutes of CPU. MikoPBX serves a few PHP workers anyway.
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._reads: dict[tuple[str, tuple[tuple[str, Any], ...]], _Shared] = {}
        # list answers kept parsed while the PBX sends them the same to the byte but for the
        # envelope's volatile tail (`_parsed_list`): (that lasting part, the records)
        self._lists: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[bytes, list[Any]]] = {}
        self._epoch = 0  # moves at each write's start and end: reads begun before may not show it
        self.listeners: list[Callable[[CallRecord], None]] = []
        self._http = httpx.AsyncClient(
            base_url=base,
            verify=tls_context(verify),
            timeout=httpx.Timeout(timeout),
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "pbxbot"},
            follow_redirects=False,
        )

    @classmethod
    def from_profile(cls, name: str, profile: Any, **kwargs: Any) -> MikoPbxClient:
        """Build from a `bot.config.PbxProfile`."""
        secret = lambda s: s.get_secret_value() if s is not None else None  # noqa: E731
        return cls(
            profile.url,
            api_key=secret(profile.api_key),
            login=profile.login,
            password=secret(profile.password),
            verify=str(profile.verify_tls)
            if not isinstance(profile.verify_tls, bool)
            else profile.verify_tls,
            timeout=profile.timeout,
            rate_limit_per_min=profile.rate_limit_per_min,
            name=name,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"MikoPbxClient({self.name!r}, {self.base_url!r})"

    async def __aenter__(self) -> MikoPbxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self.budget.aclose()

    # ------------------------------------------------------------------ transport

    async def _auth_header(self, *, renew: bool = False) -> dict[str, str]:
        if self._api_key is not None:
            return {"Authorization": f"Bearer {self._api_key}"}
        async with self._auth_lock:
            if renew or self._jwt is None or time.monotonic() > self._jwt_expires - 30:
                await self._renew_jwt()
        return {"Authorization": f"Bearer {self._jwt}"}

    async def _renew_jwt(self) -> None:
        """`auth:refresh` with the refresh-token cookie (30 days) when we hold one;
        `auth:login` otherwise, or when the refresh is refused."""
        if self._jwt is not None and self._http.cookies.get("refreshToken"):
            try:
                data = await self._call("POST", "/auth:refresh", write=True, auth=False)
            except PbxAuthError:
                pass
            else:
                return self._take_token(data)
        # The official clients post the login form-encoded.
        data = await self._call(
            "POST",
            "/auth:login",
            form={"login": self._login or "", "password": self._password or ""},
            write=True,
            auth=False,
        )
        self._take_token(data)

    def _take_token(self, data: Any) -> None:
        token = data.get("accessToken") if isinstance(data, Mapping) else None
        if not token:
            raise PbxAuthError(f"{self.name}: the PBX answered without an access token")
        self._jwt = str(token)
        self._jwt_expires = time.monotonic() + float(data.get("expiresIn") or 900)

    def _emit(self, record: CallRecord) -> None:
        for listener in self.listeners:
            listener(record)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        write: bool | None = None,
        auth: bool = True,
        parse: Callable[[Any], Any] | None = None,
    ) -> Any:
        """One API call: the envelope's `data` (through `parse` when given), or a
        typed PbxError. A `data` that `parse` cannot read is PbxMalformed: the
        PBX answered, but not in MikoPBX's shape.

        A read joins the same read already under way (waiting for the rate
        limit or on the wire) unless a write of this client began since that
        one began: what it answers is then as fresh as a read of one's own. The
        shared read waits in the budget at the most urgent of its callers'
        priorities (a background read joined by a command is the command's).
        A read begun ahead (`reading_ahead`) and answered before its command asked
        is taken by the read of the same a command plans on (`planning`), within
        AHEAD_KEEP and before any write: once for each command that began or joined it
        ahead (two commands at once share one read); any other read drops it and reads
        anew."""
        if write is None:
            write = method != "GET"
        if not auth:  # logging in, a ping: nothing of the PBX's data changes; nothing shared
            return await self._exchange(method, path, params, json, form, write, auth, parse)
        if write or method != "GET":
            self._epoch += 1  # reads under way from now on may not show this write
            try:
                return await self._exchange(method, path, params, json, form, write, auth, parse)
            finally:
                self._epoch += 1
        key = (path, tuple(sorted((params or {}).items())))
        ahead = reading_ahead.get()
        shared = self._reads.get(key)
        until = shared.until if shared is not None and not ahead else None
        taken = until is not None  # answered ahead, and this is not another read ahead
        if shared is not None and until is not None:
            if planning.get() and time.monotonic() <= until:
                shared.waiting -= 1  # one of the commands it was read for: kept for the others
                if shared.waiting <= 0:
                    del self._reads[key]
            else:  # not a command's planning read (the stale check, say), or too late
                del self._reads[key]
                shared = None
        joined = shared is not None and shared.epoch == self._epoch
        if shared is None or not joined:
            claim = current_claim()
            with claimed(claim):
                task = asyncio.ensure_future(
                    self._exchange(method, path, params, None, None, False, auth, None, raw=key)
                )
            shared = _Shared(self._epoch, task, claim, 1 if ahead else 0, asked=planning.get() and not ahead)
            self._reads[key] = shared
            task.add_done_callback(lambda done: self._read_done(key, done))
        else:
            shared.claim.raise_to(current_priority())
            if ahead and not (shared.asked and shared.waiting == 0):
                shared.waiting += 1  # another command will ask for it (not the one that asked)
            elif planning.get() and not taken:
                shared.waiting = max(0, shared.waiting - 1)  # its command, in time: not kept for it
            if (written := call_written.get()) is not None:
                written()  # the one joined is on its way (or about to be)
        started = time.perf_counter()
        try:
            data, body = await asyncio.shield(shared.task)
        except PbxError as exc:
            if joined:  # told to the joiner's listeners too (its audit): not a call of its own
                self._emit(CallRecord(method, path, exc.status, _ms(started), type(exc).__name__, True))
            raise
        if joined:
            self._emit(CallRecord(method, path, 200, _ms(started), joined=True))
        if isinstance(data, _Kept):  # the body is the kept list's, to the byte: not even decoded
            if parse is not None:
                return list(data.records)
            data = self._unwrap(method, path, httpx.Response(200, content=body))
        if parse is None:
            return data
        return self._parsed_list(key, body, data, lambda: self._parsed(method, path, 200, data, parse))

    def _parsed_list(self, key: Any, body: bytes, data: Any, parse: Callable[[], Any]) -> Any:
        """A list answer the same to the byte as the last one of this read gives the
        records parsed then (a new list of the same, read-only, records): every command
        lists accounts and routes, and validating thousands of them is most of a warm
        read's time (5,000 accounts and 5,000 routes: ~40 ms). Anything else is parsed."""
        kept = self._lists.get(key)
        if kept is not None and _same_answer(body, kept[0]):
            return list(kept[1])
        parsed = parse()
        if isinstance(parsed, list) and len(body) >= _KEEP_LISTS_OVER:
            self._lists[key] = (body[: _lasting_end(body)], parsed)
            return list(parsed)
        return parsed

    def _read_done(self, key: tuple[str, tuple[tuple[str, Any], ...]], task: asyncio.Task[Any]) -> None:
        failed = task.cancelled() or task.exception() is not None  # retrieved: its waiters have it
        if (shared := self._reads.get(key)) is None or shared.task is not task:
            return
        if shared.waiting > 0 and not failed:  # commands have not asked yet: kept for them a while
            shared.until = time.monotonic() + AHEAD_KEEP
            asyncio.get_running_loop().call_later(AHEAD_KEEP, self._not_taken, key, task)
        else:
            del self._reads[key]

    def _not_taken(self, key: tuple[str, tuple[tuple[str, Any], ...]], task: asyncio.Task[Any]) -> None:
        if (shared := self._reads.get(key)) is not None and shared.task is task:
            del self._reads[key]  # nobody came for it: let it go

    async def _exchange(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json: Any,
        form: Mapping[str, str] | None,
        write: bool,
        auth: bool,
        parse: Callable[[Any], Any] | None,
        *,
        raw: Any = None,
    ) -> Any:
        """The call itself: rate limit, auth, retries of what may be retried.
        `raw` (a read's key): (the answer's data, its body as received) instead of the
        parsed answer; (`_Kept`, body) when the body is the one kept parsed for that key."""
        attempt = 0
        renewed = False
        extensions = _written_trace(call_written.get())
        while True:
            await self.budget.acquire()
            headers = await self._auth_header(renew=False) if auth else {}
            try:
                async with self._in_flight:
                    started = time.perf_counter()
                    response = await self._http.request(
                        method,
                        path,
                        params=params,
                        json=json,
                        data=form,
                        headers=headers,
                        extensions=extensions,
                    )
            except httpx.TimeoutException as exc:
                self._emit(CallRecord(method, path, None, _ms(started), "timeout"))
                # A write may have happened: the caller must read back before deciding.
                if write or attempt >= self._retries:
                    raise PbxTimeout(f"{self.name}: {method} {path}: no answer in time") from exc
            except httpx.TransportError as exc:
                self._emit(CallRecord(method, path, None, _ms(started), type(exc).__name__))
                # A connect error means nothing was sent: safe to retry even a write.
                sent = not isinstance(exc, httpx.ConnectError)
                if (write and sent) or attempt >= self._retries:
                    kind = PbxUnavailable if sent else PbxUnreachable
                    raise kind(f"{self.name}: {method} {path}: {_reason(exc)}") from exc
            else:
                status = response.status_code
                self._emit(CallRecord(method, path, status, _ms(started)))
                log.debug("%s %s %s -> %s", self.name, method, path, status)
                if status == 401 and auth and self._api_key is None and not renewed:
                    renewed = True  # the JWT expired early: log in again, once
                    await self._auth_header(renew=True)
                    continue
                # 429 is refused at nginx's door, before MikoPBX sees the request.
                retryable = status == 429 or (status in _RETRY_STATUSES and not write)
                if not (retryable and attempt < self._retries):
                    if raw is not None:
                        kept = self._lists.get(raw)
                        if status == 200 and kept is not None and _same_answer(response.content, kept[0]):
                            return _Kept(kept[1]), response.content
                        return self._unwrap(method, path, response), response.content
                    data = self._unwrap(method, path, response)
                    return data if parse is None else self._parsed(method, path, status, data, parse)
                await asyncio.sleep(self._delay(attempt, _retry_after(response)))
                attempt += 1
                continue
            await asyncio.sleep(self._delay(attempt, None))
            attempt += 1

    def _parsed(self, method: str, path: str, status: int, data: Any, parse: Callable[[Any], Any]) -> Any:
        try:
            return parse(data)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # pydantic's ValidationError too
            log.warning("%s %s %s: unexpected answer: %s", self.name, method, path, type(exc).__name__)
            raise PbxMalformed(
                f"{self.name}: {method} {path}: the PBX answered something unexpected", status=status
            ) from exc

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, 60.0)
        return min(self._backoff * (2**attempt), 10.0) * (0.5 + random.random() / 2)

    def _unwrap(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        where = f"{self.name}: {method} {path}"
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, Mapping):
            if status == 404:
                raise PbxUnsupported(f"{where}: 404 without an API answer (no REST API v3 here?)", status=404)
            if status in _RETRY_STATUSES:
                raise self._status_error(where, status, [], {}, response)
            if status >= 500:
                raise PbxUnavailable(f"{where}: HTTP {status}", status=status)
            raise PbxMalformed(f"{where}: HTTP {status}, not a MikoPBX API answer", status=status)
        ok = body.get("result", body.get("success"))
        texts, fields = _error_texts(body.get("messages"))
        if ok is True and status < 400:
            return body.get("data")
        raise self._status_error(where, status, texts, fields, response)

    @staticmethod
    def _status_error(
        where: str, status: int, texts: list[str], fields: dict[str, str], response: httpx.Response
    ) -> PbxError:
        detail = "; ".join(texts) or f"HTTP {status}"
        message = f"{where}: {detail}"
        if status == 401:
            return PbxAuthError(message, status=status, messages=texts)
        if status == 403:
            return PbxForbidden(message, status=status, messages=texts)
        if status == 404 or _NOT_FOUND_CODES.intersection(texts):
            return PbxNotFound(message, status=status, messages=texts)
        if status == 409:
            return PbxConflict(message, status=status, messages=texts)
        if status == 429:
            return PbxRateLimited(message, retry_after=_retry_after(response))
        if status in _RETRY_STATUSES or status >= 500:
            return PbxUnavailable(message, status=status, messages=texts)
        return PbxValidationError(message, status=status, messages=texts, field_errors=fields)

    # ------------------------------------------------------------------ system

    async def ping(self) -> bool:
        """`system:ping` is public: True when a MikoPBX v3 answers at this URL."""
        try:
            await self._call("GET", "/system:ping", auth=False)
        except PbxNotFound as exc:
            raise PbxUnsupported(f"{self.name}: no REST API v3 (MikoPBX older than 2026.1?)") from exc
        return True

    async def check_auth(self) -> None:
        """Raise PbxAuthError for a refused key/login, PbxUnsupported for a PBX without v3."""
        try:
            await self._call("GET", "/system:checkAuth")
        except PbxNotFound as exc:
            raise PbxUnsupported(f"{self.name}: no REST API v3 (MikoPBX older than 2026.1?)") from exc

    async def general_settings(self) -> dict[str, Any]:
        return await self._call("GET", "/general-settings", parse=lambda data: dict(data or {}))

    # ------------------------------------------------------------------ SIP providers

    async def list_providers(self, *, include_disabled: bool = True) -> list[ProviderSummary]:
        params = {"includeDisabled": "true"} if include_disabled else None
        return await self._call("GET", "/sip-providers", params=params, parse=_provider_summaries)

    async def get_provider(self, provider_id: str) -> Provider:
        return await self._call("GET", f"/sip-providers/{_id(provider_id)}", parse=Provider.model_validate)

    async def create_provider(self, provider: Provider, *, secret: str) -> Provider:
        body = provider.payload(secret=secret)
        return await self._call("POST", "/sip-providers", json=body, parse=_saved(Provider))

    async def update_provider(self, provider: Provider, *, secret: str | None = None) -> Provider:
        """PUT the whole account; the stored password is kept unless `secret` is given."""
        path, body = f"/sip-providers/{_id(provider.id)}", provider.payload(secret=secret)
        return await self._call("PUT", path, json=body, parse=_saved(Provider))

    async def patch_provider(self, provider_id: str, changes: Mapping[str, Any]) -> Provider:
        body = dict(changes)
        if "secret" in body and "registration_type" not in body:
            # MikoPBX reads registration_type from the request to handle the mask.
            raise ValueError("patch secret together with registration_type")
        if "transport" in body:
            body["transport"] = str(body["transport"]).lower()
        path = f"/sip-providers/{_id(provider_id)}"
        return await self._call("PATCH", path, json=body, parse=_saved(Provider))

    async def delete_provider(self, provider_id: str) -> None:
        await self._call("DELETE", f"/sip-providers/{_id(provider_id)}")

    async def registration_statuses(self, *, force: bool = False) -> dict[str, RegistrationStatus]:
        """Registration state of every SIP account, by provider id (states normalised)."""
        params = {"forceCheck": "true"} if force else None

        def statuses(data: Any) -> dict[str, RegistrationStatus]:
            sip = _mapping(_mapping(data).get("sip") or {})
            return {
                str(pid): RegistrationStatus.from_wire({"id": pid, **_mapping(s)}) for pid, s in sip.items()
            }

        return await self._call("GET", "/providers:getStatuses", params=params, parse=statuses)

    # ------------------------------------------------------------------ incoming routes

    async def list_routes(self) -> list[Route]:
        """Every route but the default one (id 1), by priority."""
        return await self._call("GET", "/incoming-routes", parse=_stored(Route))

    async def get_route(self, route_id: int) -> Route:
        return await self._call("GET", f"/incoming-routes/{int(route_id)}", parse=Route.model_validate)

    async def default_route(self) -> Route:
        return await self._call("GET", "/incoming-routes:getDefaultRoute", parse=Route.model_validate)

    async def create_route(self, route: Route) -> Route:
        body = route.payload()
        body.pop("id", None)
        return await self._call("POST", "/incoming-routes", json=body, parse=_saved(Route))

    async def update_route(self, route: Route) -> Route:
        if route.id is None:
            raise ValueError("update_route needs a route id")
        path = f"/incoming-routes/{route.id}"
        return await self._call("PUT", path, json=route.payload(), parse=_saved(Route))

    async def patch_route(
        self, route_id: int, changes: Mapping[str, Any], *, providerid: str | None
    ) -> Route:
        """PATCH some fields. `providerid` is required (None = any provider): MikoPBX
        resets the route to "any provider" when a PATCH leaves it out."""
        body = {**changes, "providerid": providerid or ANY_PROVIDER}
        path = f"/incoming-routes/{int(route_id)}"
        return await self._call("PATCH", path, json=body, parse=_saved(Route))

    async def delete_route(self, route_id: int) -> None:
        await self._call("DELETE", f"/incoming-routes/{int(route_id)}")

    async def destinations(self) -> list[Destination]:
        """Every routable destination in one call (what the route form offers)."""
        params = {"type": "routing"}
        return await self._call("GET", "/extensions:getForSelect", params=params, parse=_records(Destination))

    async def cdr(
        self,
        *,
        date_from: str | None = None,
        date_to: str | None = None,
        limit: int = 100,
        offset: int = 0,
        grouped: bool = True,
        **filters: str,
    ) -> CdrPage:
        """One page of call records (MikoPBX caps `limit` at 1000)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "grouped": str(grouped).lower()}
        params.update({k: v for k, v in (("dateFrom", date_from), ("dateTo", date_to)) if v})
        params.update({k: v for k, v in filters.items() if v})

        def page(data: Any) -> CdrPage:
            data = _mapping(data or {})
            pagination = _mapping(data.get("pagination") or {})
            records = _records(CdrRecord)(data.get("records") or [])
            return CdrPage(
                records=records,
                total=int(pagination.get("total", len(records))),
                limit=int(pagination.get("limit", limit)),
                offset=int(pagination.get("offset", offset)),
                has_more=bool(pagination.get("hasMore", False)),
            )

        return await self._call("GET", "/cdr", params=params, parse=page)

    async def iter_cdr(self, *, page_size: int = 500, **kwargs: Any) -> AsyncIterator[CdrRecord]:
        offset = 0
        while True:
            page = await self.cdr(limit=page_size, offset=offset, **kwargs)
            for record in page.records:
                yield record
            if not page.has_more or not page.records:
                return
            offset += len(page.records)


def _lasting_end(body: bytes) -> int:
    """Where what an answer says ends: before its volatile tail (the worker's pid and
    `meta`), when the body ends with exactly that; else its length (all of it counts).
    The tail is found from the end: the last `"pid"`, then a match to the very end, so
    a `pid` or `meta` inside `data` is never taken for the envelope's."""
    at = body.rfind(b'"pid"')
    comma = body.rfind(b",", 0, at) if at > 0 else -1
    if comma > 0 and _VOLATILE_TAIL.fullmatch(body, comma):
        return comma
    return len(body)


def _same_answer(body: bytes, lasting: bytes) -> bool:
    """`body` says what the answer whose lasting part is `lasting` said (no copy made)."""
    return _lasting_end(body) == len(lasting) and body.startswith(lasting)


def _mapping(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"expected an object, got {type(data).__name__}")
    return data


def _list(data: Any) -> list[Any]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise TypeError(f"expected a list, got {type(data).__name__}")
    return data


def _records(model: Any) -> Callable[[Any], list[Any]]:
    """A list answer: every item must be an object of `model`'s shape."""

    def parse(data: Any) -> list[Any]:
        return [model.model_validate(_mapping(item)) for item in _list(data)]

    return parse


def _stored(model: Any) -> Callable[[Any], list[Any]]:
    """A list of stored records: each must carry its id (plans name records by it)."""

    def parse(data: Any) -> list[Any]:
        records = _records(model)(data)
        if any(record.id in (None, "") for record in records):
            raise ValueError("a listed record has no id")
        return records

    return parse


def _saved(model: Any) -> Callable[[Any], Any]:
    """A write's answer: the saved record, which must carry its id."""

    def parse(data: Any) -> Any:
        record = model.model_validate(_mapping(data))
        if record.id in (None, ""):
            raise ValueError("the saved record has no id")
        return record

    return parse


def _provider_summaries(data: Any) -> list[ProviderSummary]:
    result = []
    for item in _list(data):
        item = _mapping(item)
        if str(item.get("type", "SIP")).upper() != "SIP":
            continue  # the list holds IAX providers too
        represent = strip_html(str(item.get("represent", "")))
        description = represent.split(":", 1)[1].strip() if ":" in represent else represent
        result.append(ProviderSummary.model_validate({**item, "description": description}))
    return result


def _id(value: str) -> str:
    return quote(str(value), safe="")


def _written_trace(written: Callable[[], None] | None) -> dict[str, Any] | None:
    """httpx's `trace` extension calling `written` once, when a request's body has been
    written (httpcore's "http11.send_request_body.complete"); None when nobody asks."""
    if written is None:
        return None
    told = False

    async def trace(event: str, _info: dict[str, Any]) -> None:
        nonlocal told
        if not told and event.endswith("send_request_body.complete"):
            told = True
            written()

    return {"trace": trace}


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _reason(exc: Exception) -> str:
    # httpx messages may quote the URL, never headers or bodies.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
