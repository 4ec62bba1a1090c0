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
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import BodyPartReader, web

from .server import LoopbackServer

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
GROUP_LIMIT_PER_MIN = 20
ANONYMOUS_ADMIN_ID = 1087968824
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are exactly "
    "the same as a current content and reply markup of the message"
)
# An administrator's rights as getChatMember reports them (every field aiogram requires).
ADMIN_RIGHTS = {
    "can_be_edited": False, "is_anonymous": False, "can_manage_chat": True, "can_delete_messages": True,
    "can_manage_video_chats": False, "can_restrict_members": False, "can_promote_members": False,
    "can_change_info": False, "can_invite_users": False, "can_post_stories": False, "can_edit_stories": False,
    "can_delete_stories": False, "can_send_welcome_messages": False,
}  # fmt: skip  # @GroupAnonymousBot: how Telegram shows an anonymous group admin
_HTML_TAGS = {
    "b",
    "strong",
    "i",
    "em",
    "u",
    "ins",
    "s",
    "strike",
    "del",
    "a",
    "code",
    "pre",
    "tg-spoiler",
    "span",
    "blockquote",
    "tg-emoji",
}
_JSON_FIELDS = {
    "reply_markup",
    "commands",
    "scope",
    "entities",
    "allowed_updates",
    "link_preview_options",
    "reply_parameters",
    "caption_entities",
}


class ApiError(Exception):
    def __init__(self, code: int, description: str, **parameters: Any):
        self.code = code
        self.description = description
        self.parameters = parameters


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _HtmlText(HTMLParser):
    """Telegram's HTML parse mode: the plain text, or an error for unknown or unclosed tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.stack: list[str] = []
        self.error: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            self.error = f'Unsupported start tag "{tag}"'
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.error = f'Unexpected end tag "{tag}"'
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def plain_text(text: str, parse_mode: str | None) -> str:
    if (parse_mode or "").upper() != "HTML":
        return text
    parser = _HtmlText()
    parser.feed(text)
    parser.close()
    if parser.error or parser.stack:
        reason = parser.error or f'Can\'t find end tag corresponding to start tag "{parser.stack[-1]}"'
        raise ApiError(400, f"Bad Request: can't parse entities: {reason}")
    return html.unescape("".join(parser.parts))


@dataclass
class User:
    id: int
    first_name: str
    username: str | None = None
    language_code: str | None = "ru"
    is_bot: bool = False

    def wire(self) -> dict[str, Any]:
        data = {"id": self.id, "is_bot": self.is_bot, "first_name": self.first_name}
        if self.username:
            data["username"] = self.username
        if self.language_code:
            data["language_code"] = self.language_code
        return data


@dataclass
class Chat:
    id: int
    type: str  # private | group | supergroup
    title: str | None = None
    members: set[int] = field(default_factory=set)
    admins: set[int] = field(default_factory=set)
    bot_is_admin: bool = True
    migrated_to: int | None = None

    def wire(self, users: dict[int, User]) -> dict[str, Any]:
        if self.type == "private":
            user = users[self.id]
            data = {"id": self.id, "type": "private", "first_name": user.first_name}
            if user.username:
                data["username"] = user.username
            return data
        return {"id": self.id, "type": self.type, "title": self.title or str(self.id)}


@dataclass
class Fault:
    method: str
    count: int = 1
    retry_after: int = 1


def _public(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if not k.startswith("_")}


class TelegramSandbox(LoopbackServer):
    def __init__(
        self,
        token: str,
        *,
        bot_username: str = "pbxbot_sandbox_bot",
        enforce_limits: bool = False,
        group_limit: int = GROUP_LIMIT_PER_MIN,
        group_window: float = 60.0,
    ):
        self.token = token
        self.bot = User(
            int(token.split(":")[0]) if token.split(":")[0].isdigit() else 777000001,
            "pbxbot",
            bot_username,
            None,
            True,
        )
        self.users: dict[int, User] = {}
        self.chats: dict[int, Chat] = {}
        self.started: set[int] = set()  # users whose private chat with the bot exists
        self.messages: dict[int, dict[int, dict[str, Any]]] = {}  # chat -> message id -> message
        self.events: list[dict[str, Any]] = []  # everything the bot did, in order
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # called with each new event
        self.last_update_id = 0  # the newest update a person's action made
        self.commands: dict[tuple[str, str], list[dict[str, str]]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (path, content)
        self.faults: list[Fault] = []
        self.calls: dict[str, int] = {}
        self.refused: list[tuple[str, int, str]] = []  # (method, code, description) of refused requests
        self.enforce_limits = enforce_limits
        self.group_limit = group_limit
        self.group_window = group_window
        self.limited: list[tuple[int, float]] = []  # (chat, when): messages refused by the group limit
        self._updates: deque[dict[str, Any]] = deque()
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._callbacks: dict[str, bool] = {}  # query id -> answered
        self._callback_ids = itertools.count(1)
        self._polls = 0  # getUpdates requests so far
        self._changed = asyncio.Condition()
        self._sent_at: dict[int, deque[float]] = {}
        self.webhook: dict[str, Any] | None = None  # {"url", "secret_token"} once setWebhook was called
        # Stand-in for a load balancer in front of webhook replicas: deliver round-robin to these.
        self.webhook_targets: list[str] = []
        self.delivered: list[tuple[int, str, int]] = []  # (update_id, target, HTTP status)
        self._next_target = 0
        self._deliveries: set[asyncio.Task] = set()
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self.app = app

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ the people's side

    def add_user(
        self, user_id: int, first_name: str, *, username: str | None = None, language_code: str | None = "ru"
    ) -> User:
        user = User(user_id, first_name, username, language_code)
        self.users[user_id] = user
        return user

    def add_group(
        self,
        chat_id: int,
        title: str,
        members: list[int],
        *,
        admins: Iterable[int] = (),
        supergroup: bool = True,
        bot_is_admin: bool = True,
    ) -> Chat:
        chat = Chat(
            chat_id, "supergroup" if supergroup else "group", title, set(members), set(admins), bot_is_admin
        )
        self.chats[chat_id] = chat
        return chat

    def _private(self, user_id: int) -> Chat:
        chat = self.chats.get(user_id)
        if chat is None:
            chat = self.chats[user_id] = Chat(user_id, "private", members={user_id})
        return chat

    def _next_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def _push(self, kind: str, payload: dict[str, Any]) -> None:
        self.last_update_id = next(self._update_ids)
        update = {"update_id": self.last_update_id, kind: payload}
        if self.webhook is not None:
            task = asyncio.get_running_loop().create_task(self._deliver(update))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)
            return
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())

    async def _deliver(self, update: dict[str, Any]) -> None:
        """POST the update to the webhook, as Telegram does; retry while it fails."""
        import aiohttp

        for attempt in range(20):
            webhook = self.webhook
            if webhook is None:  # deleted meanwhile: the update waits for getUpdates, as Telegram keeps it
                self._updates.append(update)
                await self._notify()
                return
            headers = {}
            if webhook.get("secret_token"):
                headers["X-Telegram-Bot-Api-Secret-Token"] = webhook["secret_token"]
            targets = self.webhook_targets or [webhook["url"]]
            target = targets[self._next_target % len(targets)]
            self._next_target += 1
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.post(target, json=update, headers=headers) as response:
                        status = response.status
            except aiohttp.ClientError:
                status = 0
            self.delivered.append((update["update_id"], target, status))
            if status == 200:
                return
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _user_message(self, user_id: int, chat_id: int, **content: Any) -> dict[str, Any]:
        chat = self._private(user_id) if chat_id == user_id else self.chats[chat_id]
        if chat.type == "private":
            self.started.add(user_id)
        sender = self.users[user_id]
        message: dict[str, Any] = {
            "message_id": self._next_id(chat.id),
            "from": sender.wire(),
            "chat": chat.wire(self.users),
            "date": int(time.time()),
            **content,
        }
        text = content.get("text", "")
        if text.startswith("/"):
            command = text.split()[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": utf16_len(command)}]
        self.messages.setdefault(chat.id, {})[message["message_id"]] = message
        return message

    def send(
        self, user_id: int, chat_id: int, text: str, *, anonymous: bool = False, reply_to: int | None = None
    ) -> dict[str, Any]:
        """`user_id` writes `text` in `chat_id` (their own id: the private chat with the bot),
        as a reply to message `reply_to` when given."""
        extra = {}
        if reply_to is not None:
            answered = self.messages[user_id if chat_id == user_id else chat_id][reply_to]
            extra["reply_to_message"] = {
                k: v for k, v in _public(answered).items() if k != "reply_to_message"
            }
        message = self._user_message(user_id, chat_id, text=text, **extra)
        if anonymous:
            chat = self.chats[chat_id]
            message["from"] = User(ANONYMOUS_ADMIN_ID, "Group", "GroupAnonymousBot", None, True).wire()
            message["sender_chat"] = chat.wire(self.users)
        self._push("message", message)
        return message

    def send_document(
        self, user_id: int, chat_id: int, filename: str, content: bytes, caption: str | None = None
    ) -> dict[str, Any]:
        file_id = f"doc{len(self.files) + 1}"
        self.files[file_id] = (f"documents/{file_id}_{filename}", content)
        document = {
            "file_id": file_id,
            "file_unique_id": file_id + "u",
            "file_name": filename,
            "mime_type": "text/csv",
            "file_size": len(content),
        }
        extra = {"caption": caption} if caption else {}
        message = self._user_message(user_id, chat_id, document=document, **extra)
        self._push("message", message)
        return message

    def press(self, user_id: int, chat_id: int, message_id: int, data: str) -> str:
        """`user_id` presses the button with `data` under a message (or forges one)."""
        message = self.messages.get(chat_id, {}).get(message_id)
        if message is None:
            raise KeyError(f"no message {message_id} in chat {chat_id}")
        query_id = str(next(self._callback_ids))
        self._callbacks[query_id] = False
        self._push(
            "callback_query",
            {
                "id": query_id,
                "from": self.users[user_id].wire(),
                "message": _public(message),
                "chat_instance": str(chat_id),
                "data": data,
            },
        )
        return query_id

    def migrate(self, chat_id: int, new_id: int) -> Chat:
        """The group becomes a supergroup with a new id, as Telegram does it."""
        old = self.chats[chat_id]
        new = Chat(new_id, "supergroup", old.title, set(old.members), set(old.admins), old.bot_is_admin)
        old.migrated_to = new_id
        self.chats[new_id] = new
        admin = next(iter(old.admins or old.members))
        self._push("message", {**self._user_message(admin, chat_id), "migrate_to_chat_id": new_id})
        self._push("message", {**self._user_message(admin, new_id), "migrate_from_chat_id": chat_id})
        return new

    def buttons(self, chat_id: int, message_id: int) -> list[dict[str, Any]]:
        markup = self.messages.get(chat_id, {}).get(message_id, {}).get("reply_markup") or {}
        return [button for row in markup.get("inline_keyboard", []) for button in row]

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The bot's messages in a chat as they are now (edits applied, deletions gone)."""
        return [m for m in self.messages.get(chat_id, {}).values() if m["from"]["id"] == self.bot.id]

    async def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 30.0,  # noqa: ASYNC109 (a test helper: one deadline for the whole wait)
        after: int = 0,
    ) -> dict[str, Any]:
        """The first bot event (from index `after`) that matches; waits for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while True:
                for event in self.events[after:]:
                    if predicate(event):
                        return event
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    seen = [
                        (e["kind"], e.get("chat_id"), (e.get("text") or "")[:60]) for e in self.events[after:]
                    ]
                    raise TimeoutError(f"no matching bot event in {timeout} s; saw {seen}")
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    continue

    def inject(self, method: str, *, count: int = 1, retry_after: int = 1) -> None:
        self.faults.append(Fault(method, count, retry_after))

    # ------------------------------------------------------------------ the bot's side

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.body_exists:
            ctype = request.content_type
            if ctype == "application/json":
                params.update(await request.json())
            elif ctype.startswith("multipart/"):
                reader = await request.multipart()
                async for part in reader:
                    if not isinstance(part, BodyPartReader) or part.name is None:
                        raise web.HTTPBadRequest(
                            text="a multipart part without a name"
                        )  # (aiogram names each)
                    if part.filename:
                        params[part.name] = {"filename": part.filename, "content": bytes(await part.read())}
                    else:
                        params[part.name] = await part.text()
            else:
                params.update(await request.post())
        for key, value in list(params.items()):  # aiogram sends files as "attach://<part name>"
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in params:
                params[key] = params.pop(value[9:])
        for key in _JSON_FIELDS & params.keys():
            if isinstance(params[key], str):
                params[key] = json.loads(params[key])
        return params

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        name = method[0].lower() + method[1:]
        self.calls[name] = self.calls.get(name, 0) + 1
        try:
            fault = next((f for f in self.faults if f.method == name), None)
            if fault is not None:
                fault.count -= 1
                if fault.count <= 0:
                    self.faults.remove(fault)
                raise ApiError(
                    429, f"Too Many Requests: retry after {fault.retry_after}", retry_after=fault.retry_after
                )
            handler = getattr(self, f"_m_{name}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            params = await self._params(request)
            result = await handler(params)
        except ApiError as exc:
            self.refused.append((name, exc.code, exc.description))
            body: dict[str, Any] = {"ok": False, "error_code": exc.code, "description": exc.description}
            if exc.parameters:
                body["parameters"] = exc.parameters
            return web.json_response(body, status=exc.code)
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            raise web.HTTPUnauthorized
        path = request.match_info["path"]
        for stored, content in self.files.values():
            if stored == path:
                return web.Response(body=content)
        raise web.HTTPNotFound

    def _chat(self, chat_id: Any) -> Chat:
        try:
            cid = int(chat_id)
        except (TypeError, ValueError):
            raise ApiError(400, "Bad Request: chat not found") from None
        chat = self.chats.get(cid)
        if chat is None and cid in self.users:
            if cid not in self.started:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
            chat = self._private(cid)
        if chat is None:
            raise ApiError(400, "Bad Request: chat not found")
        if chat.migrated_to is not None:
            raise ApiError(
                400,
                "Bad Request: group chat was upgraded to a supergroup chat",
                migrate_to_chat_id=chat.migrated_to,
            )
        if chat.type == "private" and chat.id not in self.started:
            raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
        return chat

    def _check_markup(self, markup: Any) -> dict[str, Any] | None:
        if not markup:
            return None
        if "force_reply" in markup and not 1 <= len(markup.get("input_field_placeholder", "x")) <= 64:
            raise ApiError(400, "Bad Request: input field placeholder is too long")
        for row in markup.get("inline_keyboard", []):
            for button in row:
                data = button.get("callback_data")
                if data is not None and not 1 <= len(data.encode()) <= MAX_CALLBACK_DATA:
                    raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")
        return markup

    def _text(self, params: dict[str, Any], key: str = "text", limit: int = MAX_TEXT) -> str:
        raw = str(params.get(key, ""))
        text = plain_text(raw, params.get("parse_mode"))
        if not text.strip() and key == "text":
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > limit:
            raise ApiError(
                400,
                "Bad Request: message is too long"
                if key == "text"
                else "Bad Request: message caption is too long",
            )
        return text

    def _rate(self, chat: Chat) -> None:
        if not self.enforce_limits or chat.type == "private":
            return
        now = time.monotonic()
        sent = self._sent_at.setdefault(chat.id, deque())
        while sent and now - sent[0] >= self.group_window:
            sent.popleft()
        if len(sent) >= self.group_limit:
            wait = max(1, int(self.group_window - (now - sent[0])) + 1)
            self.limited.append((chat.id, now))
            raise ApiError(429, f"Too Many Requests: retry after {wait}", retry_after=wait)
        sent.append(now)

    async def _record(self, kind: str, **event: Any) -> None:
        self.events.append({"kind": kind, "at": time.monotonic(), **event})
        for listener in self.listeners:
            listener(self.events[-1])
        await self._notify()

    async def _bot_message(self, chat: Chat, **content: Any) -> dict[str, Any]:
        message = {
            "message_id": self._next_id(chat.id),
            "from": self.bot.wire(),
            "chat": chat.wire(self.users),
            "date": int(time.time()),
            **{k: v for k, v in content.items() if v is not None},
        }
        self.messages.setdefault(chat.id, {})[message["message_id"]] = message
        return message

    async def _m_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.bot.wire(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _m_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    async def _m_setWebhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        if not url:
            self.webhook = None
            return True
        if not url.startswith(("https://", "http://")):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = {"url": url, "secret_token": params.get("secret_token")}
        return True

    async def _m_getWebhookInfo(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": (self.webhook or {}).get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._deliveries),
        }

    async def _m_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        if self.webhook is not None:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = int(params.get("offset") or 0)
        limit = int(params.get("limit") or 100)
        timeout = float(params.get("timeout") or 0)
        while self._updates and self._updates[0]["update_id"] < offset:
            self._updates.popleft()
        self._polls += 1  # as Telegram: a newer getUpdates ends the one still waiting with 409
        mine = self._polls
        await self._notify()
        if not self._updates and timeout > 0:
            async with self._changed:
                try:
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: bool(self._updates) or self._polls != mine), timeout
                    )
                except TimeoutError:
                    pass
            if self._polls != mine:
                raise ApiError(
                    409,
                    "Conflict: terminated by other getUpdates request; "
                    "make sure that only one bot instance is running",
                )
        return list(itertools.islice(self._updates, limit))

    async def _m_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params.get("chat_id"))
        text = self._text(params)
        markup = self._check_markup(params.get("reply_markup"))
        self._rate(chat)
        inline = markup if markup and "inline_keyboard" in markup else None
        message = await self._bot_message(chat, text=text, reply_markup=inline)
        message["_html"] = params.get("text")
        if markup and inline is None:  # ForceReply: a Message carries inline keyboards only
            message["_reply_markup"] = markup
        await self._record(
            "send", chat_id=chat.id, message_id=message["message_id"], text=text, markup=markup
        )
        return _public(message)

    def _existing(self, params: dict[str, Any], what: str) -> tuple[Chat, dict[str, Any]]:
        chat = self._chat(params.get("chat_id"))
        message = self.messages.get(chat.id, {}).get(int(params.get("message_id") or 0))
        if message is None:
            raise ApiError(400, f"Bad Request: message to {what} not found")
        return chat, message

    async def _m_editMessageText(self, params: dict[str, Any]) -> dict[str, Any]:
        chat, message = self._existing(params, "edit")
        if message["from"]["id"] != self.bot.id:
            raise ApiError(400, "Bad Request: message can't be edited")
        text = self._text(params)
        markup = self._check_markup(params.get("reply_markup"))
        if text == message.get("text") and markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        message["text"], message["_html"] = text, params.get("text")
        if markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = markup
        await self._record(
            "edit", chat_id=chat.id, message_id=message["message_id"], text=text, markup=markup
        )
        return _public(message)

    async def _m_editMessageReplyMarkup(self, params: dict[str, Any]) -> dict[str, Any]:
        chat, message = self._existing(params, "edit")
        markup = self._check_markup(params.get("reply_markup"))
        if markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        if markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = markup
        await self._record(
            "edit", chat_id=chat.id, message_id=message["message_id"], text=message.get("text"), markup=markup
        )
        return _public(message)

    async def _m_deleteMessage(self, params: dict[str, Any]) -> bool:
        chat, message = self._existing(params, "delete")
        own = message["from"]["id"] == self.bot.id
        if not own and chat.type != "private" and not chat.bot_is_admin:
            raise ApiError(400, "Bad Request: message can't be deleted")
        del self.messages[chat.id][message["message_id"]]
        await self._record("delete", chat_id=chat.id, message_id=message["message_id"])
        return True

    async def _m_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        query_id = str(params.get("callback_query_id"))
        if self._callbacks.get(query_id, True):
            raise ApiError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        self._callbacks[query_id] = True
        text = params.get("text")
        await self._record(
            "answer",
            query_id=query_id,
            text=text,
            show_alert=params.get("show_alert") in (True, "true", "True"),
        )
        return True

    async def _m_sendDocument(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params.get("chat_id"))
        document = params.get("document")
        if not isinstance(document, dict):
            raise ApiError(400, "Bad Request: there is no document in the request")
        caption = self._text(params, "caption", MAX_CAPTION) if params.get("caption") else None
        self._rate(chat)
        file_id = f"bot{len(self.files) + 1}"
        self.files[file_id] = (f"documents/{file_id}_{document['filename']}", document["content"])
        meta = {
            "file_id": file_id,
            "file_unique_id": file_id + "u",
            "file_name": document["filename"],
            "file_size": len(document["content"]),
        }
        message = await self._bot_message(chat, document=meta, caption=caption)
        await self._record(
            "document",
            chat_id=chat.id,
            message_id=message["message_id"],
            text=caption,
            filename=document["filename"],
            content=document["content"],
        )
        return message

    async def _m_sendPhoto(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params.get("chat_id"))
        photo = params.get("photo")
        if not isinstance(photo, dict):
            raise ApiError(400, "Bad Request: there is no photo in the request")
        if not photo["content"].startswith(b"\x89PNG") and not photo["content"].startswith(b"\xff\xd8"):
            raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        caption = self._text(params, "caption", MAX_CAPTION) if params.get("caption") else None
        self._rate(chat)
        file_id = f"photo{len(self.files) + 1}"
        self.files[file_id] = (f"photos/{file_id}.png", photo["content"])
        sizes = [{"file_id": file_id, "file_unique_id": file_id + "u", "width": 800, "height": 450}]
        message = await self._bot_message(chat, photo=sizes, caption=caption)
        await self._record(
            "photo", chat_id=chat.id, message_id=message["message_id"], text=caption, content=photo["content"]
        )
        return message

    async def _m_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        file_id = str(params.get("file_id"))
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        path, content = self.files[file_id]
        return {
            "file_id": file_id,
            "file_unique_id": file_id + "u",
            "file_size": len(content),
            "file_path": path,
        }

    async def _m_setMyCommands(self, params: dict[str, Any]) -> bool:
        scope = json.dumps(params.get("scope") or {"type": "default"}, sort_keys=True)
        self.commands[(scope, params.get("language_code") or "")] = params.get("commands") or []
        return True

    async def _m_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, str]]:
        scope = json.dumps(params.get("scope") or {"type": "default"}, sort_keys=True)
        return self.commands.get((scope, params.get("language_code") or ""), [])

    async def _m_getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._chat(params.get("chat_id"))
        user_id = int(params.get("user_id") or 0)
        if user_id == self.bot.id:  # the bot itself: an admin where it may delete messages
            user, status = self.bot, "administrator" if chat.bot_is_admin else "member"
        elif user_id in self.users:
            user = self.users[user_id]
            status = (
                "administrator" if user_id in chat.admins else "member" if user_id in chat.members else "left"
            )
        else:
            raise ApiError(400, "Bad Request: user not found")
        member: dict[str, Any] = {"status": status, "user": user.wire()}
        if status == "administrator":
            member.update(ADMIN_RIGHTS)
        return member

    async def _m_getChatAdministrators(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        chat = self._chat(params.get("chat_id"))
        return [
            await self._m_getChatMember({"chat_id": chat.id, "user_id": uid}) for uid in sorted(chat.admins)
        ]
