"""How MikoPBX turns provider accounts and incoming routes into Asterisk config,
and where an inbound INVITE ends up — the model behind `/sandbox/calls:simulate`
(the behaviour it models is explained in docs/ROUTING.md).

Follows mikopbx/Core 2026.1: SIPConf::generateProvidersPj / generateProviderEndpoint /
getIncomingContextId / extensionGenContexts, IncomingContexts::generate (with
multiplyExtensionsInDialplan, duplicateDialActionsRoutNumber, trimDialPlan),
ExtensionsConf::generatePublicContext,
and Asterisk's res_pjsip identifiers (endpoint_identifier_order=username,ip,anonymous;
the ip identifier returns the first identify, in object-id order, whose match covers
the source).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

PUBLIC_DIRECT_DIAL = "public-direct-dial"
NONE_INCOMING = "none-incoming"
CATCH_ALL = "_X!"
_PATTERN_CHARS = re.compile(r"[XNZ.!\[]")


def parse_manual_attributes(text: str) -> dict[str, list[tuple[str, str]]]:
    """Util::parseIniSettings: sections by `[name]`; rows without `=` or with an
    empty value are dropped."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith((";", "#")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        if not sep or not value.strip():
            continue
        sections.setdefault(current, []).append((key.strip(), value.strip()))
    return sections


def incoming_context_id(host: str, port: Any) -> str:
    """SIPConf::getIncomingContextId: host+port without non-alphanumerics."""
    return re.sub(r"[^A-Za-z0-9]", "", f"{host}{port}") + "-incoming"


def exten_pattern(number: str) -> str:
    """A route DID that looks like an Asterisk pattern gets the `_` prefix."""
    if number.startswith("_") or not _PATTERN_CHARS.search(number):
        return number
    return "_" + number


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i, body = [], 0, pattern[1:]
    while i < len(body):
        ch = body[i]
        if ch == "X":
            out.append("[0-9]")
        elif ch == "Z":
            out.append("[1-9]")
        elif ch == "N":
            out.append("[2-9]")
        elif ch == ".":
            out.append(".+")
        elif ch == "!":
            out.append(".*")
        elif ch == "[":
            end = body.find("]", i)
            end = len(body) if end < 0 else end
            out.append("[" + re.escape(body[i + 1 : end]).replace("\\-", "-") + "]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z")


def exten_matches(pattern: str, exten: str) -> bool:
    if not pattern.startswith("_"):
        return pattern == exten
    return bool(_pattern_regex(pattern).match(exten))


def _specificity(pattern: str) -> tuple[int, int, int]:
    # Asterisk tries literal extensions first, then narrower patterns before `.`/`!`,
    # and `.` before `!` (ext_cmp_pattern_pos): `_X.` takes a call before `_X!`.
    if not pattern.startswith("_"):
        return (0, 0, 0)
    return (2 if ("!" in pattern or "." in pattern) else 1, -len(pattern), pattern.count("!"))


@dataclass
class Context:
    name: str
    extens: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    includes: list[str] = field(default_factory=list)

    def add(self, pattern: str, routes: list[dict[str, Any]]) -> None:
        self.extens.setdefault(pattern, []).extend(routes)


@dataclass
class Endpoint:
    provider_id: str
    name: str
    context: str
    matches: list[str]


class Dialplan:
    """pjsip endpoints + identifies and the incoming contexts of one PBX state."""

    def __init__(
        self, providers: dict[str, dict[str, Any]], routes: dict[int, dict[str, Any]], settings: dict
    ):
        self.providers = {pid: p for pid, p in providers.items() if p["type"] == "SIP" and not p["disabled"]}
        self.routes = routes
        self.default_route = routes.get(1)
        self.guest_calls = str(settings.get("PBXAllowGuestCalls", "0")) == "1"
        self.groups: dict[str, list[dict[str, Any]]] = {}
        for p in sorted(self.providers.values(), key=lambda p: p["id"]):
            self.groups.setdefault(incoming_context_id(p["host"], p["port"]), []).append(p)
        self.endpoints = {pid: self._endpoint(p) for pid, p in self.providers.items()}
        self.contexts: dict[str, Context] = {}
        self._build_contexts()

    # -------------------------------------------------------------- pjsip.conf

    def _own_context(self, provider: dict[str, Any]) -> str:
        if provider["registration_type"] == "inbound":
            return f"{provider['username']}-incoming"
        return f"{provider['id']}-incoming"

    def _endpoint(self, p: dict[str, Any]) -> Endpoint:
        group = self.groups[incoming_context_id(p["host"], p["port"])]
        if p["registration_type"] == "inbound" or len(group) == 1:
            context = self._own_context(p)
        else:
            context = incoming_context_id(p["host"], p["port"])
        attrs = parse_manual_attributes(p.get("manualattributes", ""))
        for key, value in attrs.get("endpoint", []):
            if key == "context":
                context = value  # manual attributes come last: the last `context` wins
        matches = [p["host"]] if p["host"] else []
        matches += [h["address"] for h in p.get("additionalHosts") or []]
        if p.get("outbound_proxy"):
            matches.append(p["outbound_proxy"].split(";")[0].rsplit(":", 1)[0])
        matches += [value for key, value in attrs.get("identify", []) if key == "match"]
        name = p["username"] if p["registration_type"] == "inbound" else p["id"]
        return Endpoint(p["id"], name, context, [m.lower().rstrip(".") for m in matches if m])

    def identify(self, source_host: str, from_user: str) -> Endpoint | None:
        # endpoint_identifier_order=username,ip,anonymous
        for ep in self.endpoints.values():
            provider = self.providers[ep.provider_id]
            if provider["registration_type"] == "inbound" and from_user and from_user == ep.name:
                return ep
        host = source_host.lower().rstrip(".")
        for pid in sorted(self.endpoints):  # identify objects in id order; first match wins
            if host in self.endpoints[pid].matches:
                return self.endpoints[pid]
        return None

    # -------------------------------------------------------------- dialplan

    def _routes_of(self, provider_ids: set[str | None]) -> list[dict[str, Any]]:
        rows = [
            r
            for r in self.routes.values()
            if r["id"] != 1 and r["priority"] != 9999 and r["provider"] in provider_ids
        ]
        return sorted(rows, key=lambda r: (r["priority"], r["id"]))

    def _build_contexts(self) -> None:
        for key, members in self.groups.items():
            ids = {p["id"] for p in members}
            routes = self._routes_of(ids)
            name = self._own_context(members[0]) if len(members) == 1 else key
            ctx = Context(name)
            for r in routes:
                if r["number"]:
                    ctx.add(exten_pattern(r["number"]), [r])
            catch_all = [r for r in routes if not r["number"]]
            if len(members) > 1:
                # multiplyExtensionsInDialplan (provider array): every login of the group gets
                # `exten => <login>` with the route header; its dial actions are those
                # duplicateDialActionsRoutNumber gave that login (the empty-DID routes of its own
                # account) plus those of a route whose DID is the login itself (same dialplan key,
                # trimDialPlan appends them). Asterisk prefers this literal extension to `_X!`
                # and to any pattern, so another account's catch-all never takes the call.
                for login in dict.fromkeys(p["username"] for p in members if p["username"]):
                    owners = {p["id"] for p in members if p["username"] == login}
                    chain = [
                        r
                        for r in routes
                        if r["number"].strip() == login or (not r["number"] and r["provider"] in owners)
                    ]
                    ctx.extens.pop(exten_pattern(login), None)  # the DID route's header, replaced
                    ctx.extens[login] = chain  # empty: the default action only
            else:
                login = members[0]["username"]
                # multiplyExtensionsInDialplanStringLogin: a non-numeric login no route's DID equals
                if login and not login.isdigit() and all(r["number"].strip() != login for r in routes):
                    ctx.add(login, list(catch_all))
            ctx.add(CATCH_ALL, catch_all)  # implicit when empty: the default action only
            self.contexts[name] = ctx

        none_ctx = Context(NONE_INCOMING)
        any_routes = self._routes_of({None})
        for r in any_routes:
            none_ctx.add(exten_pattern(r["number"]) if r["number"] else CATCH_ALL, [r])
        self.contexts[NONE_INCOMING] = none_ctx
        public = Context(PUBLIC_DIRECT_DIAL)
        if any_routes:
            public.includes.append(NONE_INCOMING)
        self.contexts[PUBLIC_DIRECT_DIAL] = public

    def lookup(self, context: str, exten: str) -> tuple[str, list[dict[str, Any]]] | None:
        ctx = self.contexts.get(context)
        if ctx is None:
            return None
        for pattern in sorted(ctx.extens, key=_specificity):
            if exten_matches(pattern, exten):
                return pattern, ctx.extens[pattern]
        for included in ctx.includes:
            found = self.lookup(included, exten)
            if found:
                return found
        return None

    def simulate(self, source_host: str, to: str, from_: str = "") -> dict[str, Any]:
        """Where an INVITE from `source_host` to `sip:<to>@pbx` ends up."""
        result: dict[str, Any] = {
            "endpoint": None,
            "context": None,
            "extension": None,
            "route_id": None,
            "destination": None,
            "chain": [],
            "outcome": "not_found",
        }
        ep = self.identify(source_host, from_)
        if ep is None:
            if not self.guest_calls:
                result["reason"] = "No matching endpoint found"
                return result
            context = PUBLIC_DIRECT_DIAL  # the [anonymous] endpoint
        else:
            result["endpoint"] = ep.provider_id
            context = ep.context
        result["context"] = context
        exten = to or "s"
        found = self.lookup(context, exten)
        if found is None:
            reason = "context does not exist" if context not in self.contexts else "extension not found"
            result["reason"] = (
                f"Call to extension '{exten}' rejected because {reason} in context '{context}'."
            )
            return result
        pattern, chain = found
        result["extension"] = pattern
        result["chain"] = [r["id"] for r in chain]
        if chain:
            first = chain[0]
            result.update(route_id=first["id"], destination=first["extension"], outcome="dial")
        elif self.default_route is not None:
            result.update(route_id=1, destination=self.default_route["extension"], outcome="default")
        return result
