"""The records of a simulated MikoPBX and the rules its REST actions apply.

Behaviour follows mikopbx/Core at 2026.1 (src/PBXCoreREST/Lib/Providers/*,
Lib/IncomingRoutes/*, Common/Models/*): validation order and texts, the
quirks, and how pjsip.conf and the incoming dialplan come out of the records
(see dialplan.py). Errors are raised as `ApiFailure` with MikoPBX's status
and message shape; the HTTP layer (mikopbx.py) only serialises them.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET_MASK = "XXXXXXXX"
SYSTEM_EXTENSIONS = ("hangup", "busy", "did2user", "voicemail")
TRANSPORTS = ["udp,tcp", "udp", "tcp", "tls"]
REGISTRATION_TYPES = ["outbound", "inbound", "none"]
DTMF_MODES = ["auto", "auto_info", "inband", "rfc4733", "info"]


class ApiFailure(Exception):
    """A MikoPBX `result:false` answer: `errors` is a list, or a dict keyed by field."""

    def __init__(self, status: int, errors: list[str] | dict[str, str]):
        super().__init__(str(errors))
        self.status = status
        self.errors = errors


# MikoPBX field definitions that its schema check enforces (enum, min/max, maxLength).
_PROVIDER_SCHEMA: dict[str, dict[str, Any]] = {
    "description": {"maxLength": 255},
    "note": {"maxLength": 500},
    "registration_type": {"enum": REGISTRATION_TYPES},
    "username": {"maxLength": 100},
    "secret": {"maxLength": 100},
    "host": {"maxLength": 255},
    "port": {"min": 1, "max": 65535},
    "transport": {"enum": TRANSPORTS},
    "qualifyfreq": {"min": 10, "max": 3600},
    "dtmfmode": {"enum": DTMF_MODES},
    "outbound_proxy": {"maxLength": 255},
}
_ROUTE_SCHEMA: dict[str, dict[str, Any]] = {
    "rulename": {"maxLength": 100},
    "number": {"maxLength": 50},
    "priority": {"min": 0, "max": 9999},
    "timeout": {"min": 0, "max": 7400},
    "extension": {"maxLength": 20},
    "note": {"maxLength": 1024},
}

PROVIDER_DEFAULTS: dict[str, Any] = {
    "type": "SIP",
    "description": "",
    "note": "",
    "disabled": False,
    "registration_type": "outbound",
    "username": "",
    "secret": "",
    "host": "",
    "port": 5060,
    "transport": "udp,tcp",
    "qualify": True,
    "qualifyfreq": 60,
    "dtmfmode": "auto",
    "fromuser": "",
    "fromdomain": "",
    "disablefromuser": False,
    "outbound_proxy": "",
    "networkfilterid": "none",
    "manualattributes": "",
    "additionalHosts": [],
    "cid_source": "default",
    "did_source": "default",
}
_PROVIDER_FIELDS = set(PROVIDER_DEFAULTS)
_ROUTE_FIELDS = {
    "rulename",
    "number",
    "providerid",
    "priority",
    "timeout",
    "extension",
    "audio_message_id",
    "note",
}


def _schema_errors(data: dict[str, Any], schema: dict[str, dict[str, Any]]) -> list[str]:
    errors = []
    for name, rule in schema.items():
        if name not in data or data[name] is None:
            continue
        value = data[name]
        if "enum" in rule and value not in rule["enum"]:
            errors.append(f"Field '{name}' must be one of: {', '.join(rule['enum'])}")
        if "min" in rule or "max" in rule:
            try:
                number = int(value)
            except (TypeError, ValueError):
                errors.append(f"Field '{name}' must be an integer")
                continue
            if "min" in rule and number < rule["min"]:
                errors.append(f"Field '{name}' must be at least {rule['min']} (got {number})")
            if "max" in rule and number > rule["max"]:
                errors.append(f"Field '{name}' must be at most {rule['max']} (got {number})")
        if "maxLength" in rule and isinstance(value, str) and len(value) > rule["maxLength"]:
            errors.append(f"Field '{name}' must be at most {rule['maxLength']} characters (got {len(value)})")
    return errors


def _fk_error(name: str) -> str:
    # Phalcon's foreign-key message, wrapped by SaveRecordAction.
    return f'Failed to save incoming route: Value of field "{name}" does not exist on referenced table'


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "on", "yes")
    return bool(value)


_EVENT_NAMES = {  # GetAllStatusesAction::getEventDescription, as MikoPBX's English catalogue reads it
    "registered": "Registered",
    "unregistered": "Unregistered",
    "unreachable": "Unreachable",
    "lagged": "Lagged",
    "rejected": "Rejected",
    "off": "Disabled",
    "ok": "OK",
}


def _history_event(timestamp: int, state: str, previous: str) -> dict[str, Any]:
    lowered = state.lower()
    kind = (
        "info"
        if lowered in ("registered", "ok", "reachable")
        else "warning"
        if lowered in ("unreachable", "lagged", "unregistered")
        else "error"
    )
    return {
        "timestamp": timestamp,
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)),
        "type": kind,
        "event": _EVENT_NAMES.get(lowered, "Status changed"),
        "details": f"{previous} -> {state}",
        "state": state,
        "previousState": previous,
    }


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Registrar:
    """How the simulated provider side answers REGISTER."""

    delay: float = 0.5  # seconds from saving an account to its registration
    # (host, username): refused whatever the password
    rejected: set[tuple[str, str]] = field(default_factory=set)
    # (host, username) -> the password the provider issued: any other is answered 403 Forbidden
    passwords: dict[tuple[str, str], str] = field(default_factory=dict)

    def accepts(self, host: str, username: str, secret: str | None = None) -> bool:
        key = (host.lower(), username)
        if key in self.rejected:
            return False
        issued = self.passwords.get(key)
        return issued is None or secret == issued


@dataclass
class PbxState:
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: dict[int, dict[str, Any]] = field(default_factory=dict)
    employees: list[dict[str, Any]] = field(default_factory=list)
    queues: list[dict[str, Any]] = field(default_factory=list)
    ivr_menus: list[dict[str, Any]] = field(default_factory=list)
    cdr: list[dict[str, Any]] = field(default_factory=list)
    active_calls: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, str] = field(
        default_factory=lambda: {
            "PBXRateLimitEnabled": "1",
            "PBXAllowGuestCalls": "0",
            "PBXLanguage": "en-en",
        }
    )
    registrar: Registrar = field(default_factory=Registrar)
    seed: int = 0
    # Runtime (not saved): when each account was last saved, for registration timing.
    saved_at: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        if 1 not in self.routes:
            self.routes[1] = self._default_route()

    # ------------------------------------------------------------------ persistence

    def dump(self) -> dict[str, Any]:
        return {
            "providers": self.providers,
            "routes": {str(k): v for k, v in self.routes.items()},
            "employees": self.employees,
            "queues": self.queues,
            "ivr_menus": self.ivr_menus,
            "cdr": self.cdr,
            "active_calls": self.active_calls,
            "settings": self.settings,
            "rejected_credentials": sorted(list(x) for x in self.registrar.rejected),
            "issued_passwords": sorted([h, u, p] for (h, u), p in self.registrar.passwords.items()),
        }

    @classmethod
    def load(cls, data: dict[str, Any]) -> PbxState:
        state = cls(
            providers=data.get("providers", {}),
            routes={int(k): v for k, v in data.get("routes", {}).items()},
            employees=data.get("employees", []),
            queues=data.get("queues", []),
            ivr_menus=data.get("ivr_menus", []),
            cdr=data.get("cdr", []),
            active_calls=data.get("active_calls", []),
        )
        state.settings.update(data.get("settings", {}))
        state.registrar.rejected = {(h, u) for h, u in data.get("rejected_credentials", [])}
        state.registrar.passwords = {(h, u): p for h, u, p in data.get("issued_passwords", [])}
        return state

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.dump(), ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)

    # ------------------------------------------------------------------ extensions

    def extension_numbers(self) -> dict[str, tuple[str, str]]:
        """number -> (type, name) of everything a route may send a call to."""
        result: dict[str, tuple[str, str]] = {}
        for emp in self.employees:
            result[str(emp["number"])] = ("SIP", emp["user_username"])
        for queue in self.queues:
            result[str(queue["extension"])] = ("QUEUE", queue["name"])
        for menu in self.ivr_menus:
            result[str(menu["extension"])] = ("IVR_MENU", menu["name"])
        for name in SYSTEM_EXTENSIONS:
            result[name] = ("SYSTEM", name)
        return result

    def routing_select(self) -> list[dict[str, Any]]:
        icons = {"SIP": "user outline", "QUEUE": "users", "IVR_MENU": "sitemap", "SYSTEM": "cogs"}
        localized = {"SIP": "Employees", "QUEUE": "Call queues", "IVR_MENU": "IVR menu", "SYSTEM": "System"}
        items = []
        for number, (kind, name) in self.extension_numbers().items():
            if number == "did2user":
                continue
            label = f'<i class="{icons[kind]} icon"></i> {name} <{number}>'
            items.append(
                {
                    "value": number,
                    "name": label,
                    "text": label,
                    "type": kind,
                    "typeLocalized": localized[kind],
                }
            )
        return items

    # ------------------------------------------------------------------ providers

    def new_provider_id(self) -> str:
        while True:
            uid = f"SIP-TRUNK-{self._rng.getrandbits(32):08X}"
            if uid not in self.providers:
                return uid

    def provider_view(self, record: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(record)
        if data.get("registration_type") == "outbound":
            data["secret"] = SECRET_MASK  # MikoPBX never returns an outbound password
        data["networkfilter_represent"] = "No restrictions"
        return data

    def provider_list_item(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": record["id"],
            "type": record["type"],
            "note": record["note"],
            "disabled": record["disabled"],
            "represent": f'<i class="server icon"></i> {record["type"]}: {record["description"]}',
            "username": record["username"],
            "host": record["host"],
            "registration_type": record["registration_type"],
            "transport": record["transport"],
            "port": record["port"],
            "statusClass": "disabled" if record["disabled"] else "",
            "search_index": f"{record['description']} {record['username']} {record['host']}".lower(),
        }

    def provider_template(self) -> dict[str, Any]:
        data = copy.deepcopy(PROVIDER_DEFAULTS)
        data["id"] = self.new_provider_id()
        data["transport"] = "UDP"  # getDefault says "UDP"; writes refuse it until lower-cased
        return data

    def provider_copy(self, provider_id: str) -> dict[str, Any]:
        source = self.find_provider(provider_id)
        data = self.provider_view(source)
        data.update(
            id="", description=f"copy of {source['description']}", username=f"{source['username']}_copy"
        )
        data.pop("networkfilter_represent", None)
        return data

    def find_provider(self, provider_id: str) -> dict[str, Any]:
        record = self.providers.get(provider_id)
        if record is None or record["type"] != "SIP":
            raise ApiFailure(404, ["Provider not found"])
        return record

    def save_provider(
        self, body: dict[str, Any], *, method: str, provider_id: str | None
    ) -> tuple[int, dict]:
        """POST/PUT/PATCH /sip-providers[/{id}], in SaveRecordAction's order."""
        data = {k: (v.strip() if isinstance(v, str) else v) for k, v in body.items()}
        data["type"] = "SIP"  # the controller forces it
        if provider_id is not None:
            data["id"] = provider_id
        record_id = data.get("id") or None
        existing = self.providers.get(record_id) if record_id else None

        if set(body) == {"id", "type", "disabled"} and existing is not None:
            existing["disabled"] = _bool(data["disabled"])
            self.saved_at[existing["id"]] = time.monotonic()
            return 200, self.provider_view(existing)
        if method in ("PUT", "PATCH") and existing is None:
            raise ApiFailure(404, ["Provider not found"])

        if method != "PATCH":
            required: dict[str, str] = {}
            if not data.get("description"):
                required["description"] = "Provider description is required"
            if not data.get("registration_type"):
                required["registration_type"] = "Registration type is required"
            elif data["registration_type"] not in REGISTRATION_TYPES:
                required["registration_type"] = "Registration type must be: none, outbound, or inbound"
            if required:
                raise ApiFailure(422, required)

        schema = _schema_errors(data, _PROVIDER_SCHEMA)
        if schema:
            raise ApiFailure(422, schema)

        if existing is not None and existing["type"] != data["type"]:
            raise ApiFailure(422, ["Cannot change provider type after creation"])

        merged = copy.deepcopy(existing) if existing else {**copy.deepcopy(PROVIDER_DEFAULTS), "id": ""}
        for key in _PROVIDER_FIELDS:
            if key in data and key != "secret":
                merged[key] = data[key]
        if "secret" in data:
            # The mask keeps the stored password (for the registration type in the request).
            rtype = data.get("registration_type", merged["registration_type"])
            if not (data["secret"] == SECRET_MASK and rtype == "outbound" and existing):
                merged["secret"] = data["secret"]
        merged["transport"] = str(merged["transport"]).lower()
        merged["disabled"] = _bool(merged["disabled"])
        merged["qualify"] = _bool(merged["qualify"])
        merged["port"] = int(merged["port"] or 5060)
        merged["qualifyfreq"] = int(merged["qualifyfreq"] or 60)
        merged["additionalHosts"] = [
            {"address": h["address"] if isinstance(h, dict) else str(h)}
            for h in merged["additionalHosts"] or []
        ]

        if "registration_type" in data:
            self._business_rules(merged)
        if merged["registration_type"] == "inbound":
            username = merged["username"]
            if username and not all(c.isascii() and (c.isalnum() or c in "._-") for c in username):
                raise ApiFailure(422, ["mo_SipUsernameInvalidCharacters"])

        if not merged["id"]:
            merged["id"] = record_id or self.new_provider_id()
        status = 200 if existing else 201
        self.providers[merged["id"]] = merged
        self.saved_at[merged["id"]] = time.monotonic()
        return status, self.provider_view(merged)

    @staticmethod
    def _business_rules(record: dict[str, Any]) -> None:
        rtype = record["registration_type"]
        errors = []
        if rtype in ("outbound", "none") and not record["host"]:
            errors.append("Enter the server name or IP address of the provider")
        if rtype in ("outbound", "inbound") and not record["username"]:
            errors.append("Enter your login to log in to your provider.")
        if rtype in ("outbound", "inbound") and not record["secret"]:
            errors.append("Enter password for authorization")
        if errors:
            raise ApiFailure(422, errors)

    def delete_provider(self, provider_id: str) -> None:
        if provider_id not in self.providers:
            raise ApiFailure(422, ["api_ProviderNotFound"])
        del self.providers[provider_id]
        self.saved_at.pop(provider_id, None)
        # IncomingRoutingTable rows of the provider go with it (hasMany, cascade).
        for rid in [rid for rid, r in self.routes.items() if r["provider"] == provider_id]:
            del self.routes[rid]

    def set_provider_disabled(self, provider_id: str, disabled: bool) -> dict[str, Any]:
        record = self.providers.get(provider_id)
        if record is None:
            raise ApiFailure(422, ["api_ProviderNotFound"])
        record["disabled"] = disabled
        self.saved_at[provider_id] = time.monotonic()
        return {"id": provider_id, "type": "SIP", "disabled": disabled, "description": record["description"]}

    # ------------------------------------------------------------------ registration

    def registration(self, record: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        saved = self.saved_at.get(record["id"], now - 3600)
        since = now - saved
        rtype = record["registration_type"]
        if record["disabled"]:
            state, text = "off", "Disabled"
        elif rtype == "none":
            state, text = "OK", "Reachable"
        elif rtype == "inbound":
            state, text = "UNREGISTERED", "Not registered"
        elif since < self.registrar.delay:
            state, text = "unregistered", "Not registered"
        elif self.registrar.accepts(record["host"], record["username"], record["secret"]):
            state, text = "registered", "Registered"
        else:
            state, text = "rejected", "Rejected"
        duration = int(since if since < self.registrar.delay else since - self.registrar.delay)
        status = {
            "id": record["id"],
            "type": "sip",
            "state": state,
            "stateText": text,
            "stateColor": "green" if state in ("registered", "OK") else "red",
            "stateDescription": text,
            "host": record["host"],
            "username": record["username"],
            "description": record["description"],
            "rtt": 23.0 if state in ("registered", "OK") else None,
            "lastUpdate": _now(),
            "stateDuration": max(0, duration),
        }
        if state == "rejected":
            status["rejectionReason"] = "403 Forbidden"
        return status

    def registration_history(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The state changes ProviderMonitor pushes to its Redis list, newest first
        (GetAllStatusesAction::recordHistoryEvent): the account's save left it
        unregistered, then it reached its current state."""
        now = time.monotonic()
        status = self.registration(record, now)
        current = status["state"]
        wall = int(time.time())
        changed = wall - int(status["stateDuration"])
        saved = wall - int(now - self.saved_at.get(record["id"], now - 3600))
        events = [_history_event(min(saved, changed), "unregistered", "UNKNOWN")]
        if current != "unregistered":
            events.insert(0, _history_event(changed, current, "unregistered"))
        return events

    # ------------------------------------------------------------------ routes

    @staticmethod
    def _default_route() -> dict[str, Any]:
        return {
            "id": 1,
            "rulename": "default action",
            "number": "",
            "provider": None,
            "priority": 9999,
            "timeout": 120,
            "extension": "busy",
            "audio_message_id": None,
            "note": "",
        }

    def route_view(self, record: dict[str, Any]) -> dict[str, Any]:
        provider = self.providers.get(record["provider"] or "")
        extensions = self.extension_numbers()
        _, name = extensions.get(record["extension"], ("", record["extension"]))
        return {
            "id": str(record["id"]),
            "rulename": record["rulename"],
            "number": record["number"],
            "providerid": record["provider"] or "none",
            "priority": record["priority"],
            "timeout": record["timeout"],
            "extension": record["extension"],
            "audio_message_id": record["audio_message_id"] or "",
            "note": record["note"],
            "providerid_represent": provider["description"] if provider else "Any provider",
            "provider_type": provider["type"] if provider else "",
            "provider_disabled": bool(provider and provider["disabled"]),
            "extension_represent": f"{name} <{record['extension']}>",
            "audio_message_id_represent": "",
            "search_index": f"{record['rulename']} {record['number']} {record['extension']}".lower(),
        }

    def list_routes(self) -> list[dict[str, Any]]:
        rows = sorted(
            (r for rid, r in self.routes.items() if rid > 1), key=lambda r: (r["priority"], r["id"])
        )
        return [self.route_view(r) for r in rows]

    def find_route(self, route_id: int) -> dict[str, Any]:
        if route_id == 1:
            self.routes.setdefault(1, self._default_route())
        record = self.routes.get(route_id)
        if record is None:
            raise ApiFailure(404, ["Incoming route not found"])
        return record

    def _next_priority(self) -> int:
        values = [r["priority"] for r in self.routes.values() if r["priority"] != 9999]
        return (max(values) if values else 0) + 1

    def route_template(self) -> dict[str, Any]:
        return self.route_view(
            {
                **self._default_route(),
                "id": "",
                "rulename": "",
                "priority": self._next_priority(),
                "extension": "",
            }
        )

    def route_copy(self, route_id: int) -> dict[str, Any]:
        source = self.find_route(route_id)
        view = self.route_view({**source, "priority": self._next_priority()})
        view["id"] = ""
        return view

    def save_route(self, body: dict[str, Any], *, method: str, route_id: int | None) -> tuple[int, dict]:
        """POST/PUT/PATCH /incoming-routes[/{id}], as SaveRecordAction does it."""
        data = {k: (v.strip() if isinstance(v, str) else v) for k, v in body.items() if k in _ROUTE_FIELDS}
        # Quirk: no providerid in the body means "any provider", on PATCH too.
        provider = data.pop("providerid", None)
        data["provider"] = None if provider in (None, "", "none") else str(provider)
        if data.get("audio_message_id") == "none":
            data["audio_message_id"] = None

        existing = self.routes.get(route_id) if route_id is not None else None
        if route_id is not None and existing is None:
            if method in ("PUT", "PATCH"):
                raise ApiFailure(404, ["Incoming route not found"])
        if existing is None:
            defaults = {"rulename": "", "number": "", "timeout": 120, "audio_message_id": None, "note": ""}
            data = {**defaults, **data}
            if not data.get("priority") or int(data["priority"]) == 1:
                data["priority"] = self._next_priority()

        errors = _schema_errors(data, _ROUTE_SCHEMA)
        if errors:
            raise ApiFailure(422, errors)

        record = (
            copy.deepcopy(existing)
            if existing
            else {**self._default_route(), "id": route_id, "extension": ""}
        )
        for key in ("rulename", "number", "priority", "timeout", "extension", "note"):
            if key in data and data[key] is not None:
                record[key] = data[key]
        if "audio_message_id" in data:
            record["audio_message_id"] = data["audio_message_id"]
        record["provider"] = data["provider"]
        record["number"] = str(record.get("number") or "")
        record["extension"] = str(record.get("extension") or "")
        record["priority"] = int(record["priority"])
        record["timeout"] = int(record["timeout"])
        if record["id"] == 1:
            record["priority"] = 9999

        # Foreign keys of IncomingRoutingTable: extension -> Extensions, provider -> Providers.
        if record["extension"] not in self.extension_numbers():
            raise ApiFailure(422, [_fk_error("extension")])
        if record["provider"] is not None and record["provider"] not in self.providers:
            raise ApiFailure(422, [_fk_error("provider")])

        if record["id"] is None:
            record["id"] = max(self.routes) + 1
        self.routes[record["id"]] = record
        return (200 if existing else 201), self.route_view(record)

    def delete_route(self, route_id: int) -> None:
        if route_id == 1:
            raise ApiFailure(422, ["Cannot delete default incoming route"])
        if route_id not in self.routes:
            raise ApiFailure(422, ["api_IncomingRouteNotFound"])
        del self.routes[route_id]

    def change_priority(self, priorities: dict[str, Any]) -> dict[str, Any]:
        if not priorities:
            raise ApiFailure(422, ["No priority data provided"])
        errors = []
        for rid in priorities:
            if int(rid) != 1 and int(rid) not in self.routes:
                errors.append(f"Route ID {rid} not found")
        if errors:
            raise ApiFailure(422, errors)
        updated = 0
        for rid, value in priorities.items():
            if int(rid) == 1:
                continue  # the default route keeps 9999
            self.routes[int(rid)]["priority"] = int(value)
            updated += 1
        return {"updated": updated, "message": f"Successfully updated {updated} route priorities"}

    def unique_dids(self, provider_id: str) -> list[dict[str, str]]:
        record = self.providers.get(provider_id)
        login = record["username"] if record else None
        seen: list[str] = []
        for call in reversed(self.cdr):
            did = call.get("did", "")
            if call.get("from_account") == provider_id and did and did != login and did not in seen:
                seen.append(did)
        return [{"value": d, "name": d} for d in seen[:20]]
