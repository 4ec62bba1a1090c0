"""Logging: human-readable lines by default, one JSON object per line on request.

Either way a filter masks every secret the settings hold (bot token, PBX API
keys and passwords, the webhook secret, the vault key) in case one ever slips
into a message or an exception text: defence in depth, the code does not log
secrets in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from bot.config import Settings

MASK = "***"


class Redact(logging.Filter):
    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = self._clean(record.getMessage())
            record.msg, record.args = message, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            data["exception"] = record.exc_text
        elif record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def secrets_of(settings: Settings) -> list[str]:
    values = []
    for secret in (settings.telegram.token, settings.telegram.webhook_secret, settings.storage.secret_key):
        if secret is not None:
            values.append(secret.get_secret_value())
    if settings.telegram.token is not None:
        values.append(settings.telegram.token.get_secret_value().partition(":")[2])
    for profile in settings.pbx.values():
        for secret in (profile.api_key, profile.password):
            if secret is not None:
                values.append(secret.get_secret_value())
    return values


def setup(settings: Settings | None, *, level: int = logging.WARNING, fmt: str | None = None) -> None:
    fmt = fmt or (settings.log_format if settings else "text")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(Redact(secrets_of(settings) if settings else []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # one line per update is noise at INFO; it stays available with -v
    for noisy in ("aiogram.event", "httpx", "apscheduler.executors.default"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
