"""A local Telegram Bot API server: the HTTP protocol aiogram speaks, for the
methods pbxbot uses, with Telegram's checks.

    POST {base}/bot<token>/<method>     JSON, urlencoded or multipart (aiogram sends multipart)
    GET  {base}/file/bot<token>/<path>  a file, after getFile

Checks as Telegram makes them: 4,096 characters per message (UTF-16 units,
after HTML parsing; bad HTML is "can't parse entities"), callback data of at
most 64 bytes, "message is not modified", unknown message ids, a private chat
the user never started (403), deleting others' messages in a group only as an
admin, a group that became a supergroup (400 with migrate_to_chat_id), and
injectable 429s with retry_after. `enforce_limits` adds Telegram's 20
messages per minute per group (`group_limit` per `group_window` seconds: tests
shrink the window); each message it refuses so is in `limited`.

The other side, for tests and `pbxbot shell`: users `send` text, documents,
`press` buttons; every bot action is an event that `wait_for` can wait on.

Three parts: chats.py (the chat state, the people's side), api.py (the Bot API
methods, the bot's side), faults.py (injected 429s, the group limit); wire.py
holds what they share (limits, errors, HTML parsing, users and chats).
"""

from __future__ import annotations

from aiohttp import web

from ..server import LoopbackServer
from .api import BotApi
from .chats import ChatState
from .faults import Fault, FaultInjection
from .wire import (
    ANONYMOUS_ADMIN_ID,
    GROUP_LIMIT_PER_MIN,
    MAX_CALLBACK_DATA,
    MAX_CAPTION,
    MAX_TEXT,
    ApiError,
    Chat,
    User,
    plain_text,
    utf16_len,
)

__all__ = [
    "ANONYMOUS_ADMIN_ID",
    "MAX_CALLBACK_DATA",
    "MAX_CAPTION",
    "MAX_TEXT",
    "ApiError",
    "Chat",
    "Fault",
    "TelegramSandbox",
    "User",
    "plain_text",
    "utf16_len",
]


class TelegramSandbox(BotApi, ChatState, FaultInjection, LoopbackServer):
    """A local Bot API server: the chat state, the API methods over it, and the faults."""

    def __init__(
        self,
        token: str,
        *,
        bot_username: str = "pbxbot_sandbox_bot",
        enforce_limits: bool = False,
        group_limit: int = GROUP_LIMIT_PER_MIN,
        group_window: float = 60.0,
    ):
        ChatState.__init__(self, token, bot_username)
        FaultInjection.__init__(
            self, enforce_limits=enforce_limits, group_limit=group_limit, group_window=group_window
        )
        self.calls: dict[str, int] = {}  # Bot API calls by method
        self.refused: list[tuple[str, int, str]] = []  # (method, code, description) of refused requests
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self.app = app
