"""The routing rules doctor, trace and digest share: how MikoPBX reads an
account's extra parameters, and how Asterisk matches a route's DID.

(The start of the one routing-rules module: host normalisation, recipe
detection and number keys join it next.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.plans.planner import RECIPE_CONTEXT

# Sections MikoPBX's pjsip generator reads from extra parameters; anything else is ignored.
KNOWN_SECTIONS = {"registration-auth", "registration", "endpoint-auth", "aor", "identify", "endpoint"}


@dataclass(frozen=True)
class Attributes:
    """`manualattributes` as MikoPBX's Util::parseIniSettings reads it, plus what it drops."""

    sections: dict[str, dict[str, str]]
    unknown_sections: list[str]
    lines_without_value: list[str]

    @classmethod
    def parse(cls, text: str) -> Attributes:
        sections: dict[str, dict[str, str]] = {}
        unknown: list[str] = []
        dropped: list[str] = []
        current = ""
        for raw in (text or "").splitlines():
            line = raw.strip()
            if not line or line.startswith((";", "#")):
                continue
            if line.startswith("[") and line.endswith("]"):
                current = line[1:-1].strip()
                sections.setdefault(current, {})
                if current not in KNOWN_SECTIONS and current not in unknown:
                    unknown.append(current)
                continue
            key, sep, value = line.partition("=")
            if not sep or not value.strip():
                dropped.append(line[:60])
                continue
            sections.setdefault(current, {})[key.strip()] = value.strip()
        return cls(sections, unknown, dropped)

    @property
    def recipe(self) -> bool:
        return self.sections.get("endpoint", {}).get("context") == RECIPE_CONTEXT


def did_matches(pattern: str, did: str) -> bool:
    """Asterisk's extension match for a route DID: plain, or a `_`-pattern (X Z N . ! [a-b])."""
    if not pattern.startswith("_"):
        return pattern == did
    out, body, i = [], pattern[1:], 0
    while i < len(body):
        ch = body[i]
        if ch == "[":
            end = body.find("]", i)
            end = len(body) if end < 0 else end
            out.append("[" + re.escape(body[i + 1 : end]).replace("\\-", "-") + "]")
            i = end
        else:
            out.append(
                {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}.get(ch, re.escape(ch))
            )
        i += 1
    return re.fullmatch("".join(out), did) is not None
