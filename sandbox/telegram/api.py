"""The bot's side of the Bot API double: the HTTP protocol aiogram speaks,
one `_m_<method>` per Bot API method pbxbot uses, each with Telegram's checks."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from .wire import (
    ADMIN_RIGHTS,
    JSON_FIELDS,
    MAX_CALLBACK_DATA,
    MAX_CAPTION,
    MAX_TEXT,
    NOT_MODIFIED,
    ApiError,
    Chat,
    User,
    plain_text,
    public,
    utf16_len,
)

MAX_PHOTO_BYTES = 10 * 1024 * 1024


def _png_size(content: bytes) -> tuple[int, int] | None:
    """A PNG's width and height from its IHDR chunk; None for a JPEG (not read)."""
    if content[:8] != b"\x89PNG\r\n\x1a\n" or content[12:16] != b"IHDR":
        return None
    return int.from_bytes(content[16:20], "big"), int.from_bytes(content[20:24], "big")


class BotApi:
    """Reads and writes the chat state (ChatState) and passes every call through
    fault injection (FaultInjection) first; TelegramSandbox puts the three together."""

    # from ChatState
    token: str
    bot: User
    users: dict[int, User]
    chats: dict[int, Chat]
    started: set[int]
    messages: dict[int, dict[int, dict[str, Any]]]
    commands: dict[tuple[str, str], list[dict[str, str]]]
    files: dict[str, tuple[str, bytes]]
    webhook: dict[str, Any] | None
    calls: dict[str, int]
    refused: list[tuple[str, int, str]]
    _polls: int
    _updates: deque[dict[str, Any]]
    _callbacks: dict[str, bool]
    _changed: asyncio.Condition
    _deliveries: set[asyncio.Task]

    if TYPE_CHECKING:  # defined by ChatState and FaultInjection (stubs here would shadow them)

        def _private(self, user_id: int) -> Chat: ...
        def _bot_message(self, chat: Chat, **content: Any) -> dict[str, Any]: ...
        async def _record(self, kind: str, **event: Any) -> None: ...
        async def _notify(self) -> None: ...
        def _injected(self, method: str) -> None: ...
        def _rate(self, chat: Chat) -> None: ...

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.body_exists:
            ctype = request.content_type
            if ctype == "application/json":
                params.update(await request.json())
            elif ctype.startswith("multipart/"):
                reader = await request.multipart()
                async for part in reader:
                    if not isinstance(part, BodyPartReader) or part.name is None:  # aiogram names each
                        raise web.HTTPBadRequest(text="a multipart part without a name")
                    if part.filename:
                        params[part.name] = {"filename": part.filename, "content": bytes(await part.read())}
                    else:
                        params[part.name] = await part.text()
            else:
                params.update(await request.post())
        for key, value in list(params.items()):  # aiogram sends files as "attach://<part name>"
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in params:
                params[key] = params.pop(value[9:])
        for key in JSON_FIELDS & params.keys():
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
            self._injected(name)
            handler = getattr(self, f"_m_{name}", None)
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            params = await self._params(request)
            result = handler(params)
            if inspect.isawaitable(result):  # the methods that wait (getUpdates) or record events
                result = await result
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

    def _existing(self, params: dict[str, Any], what: str) -> tuple[Chat, dict[str, Any]]:
        chat = self._chat(params.get("chat_id"))
        message = self.messages.get(chat.id, {}).get(int(params.get("message_id") or 0))
        if message is None:
            raise ApiError(400, f"Bad Request: message to {what} not found")
        return chat, message

    def _m_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.bot.wire(),
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    def _m_deleteWebhook(self, params: dict[str, Any]) -> bool:
        self.webhook = None
        return True

    def _m_setWebhook(self, params: dict[str, Any]) -> bool:
        url = str(params.get("url") or "")
        if not url:
            self.webhook = None
            return True
        if not url.startswith(("https://", "http://")):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        self.webhook = {"url": url, "secret_token": params.get("secret_token")}
        return True

    def _m_getWebhookInfo(self, params: dict[str, Any]) -> dict[str, Any]:
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
        message = self._bot_message(chat, text=text, reply_markup=inline)
        message["_html"] = params.get("text")
        if markup and inline is None:  # ForceReply: a Message carries inline keyboards only
            message["_reply_markup"] = markup
        await self._record(
            "send", chat_id=chat.id, message_id=message["message_id"], text=text, markup=markup
        )
        return public(message)

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
        return public(message)

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
        return public(message)

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
        message = self._bot_message(chat, document=meta, caption=caption)
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
        if len(photo["content"]) > MAX_PHOTO_BYTES:
            raise ApiError(400, "Bad Request: PHOTO_TOO_BIG")  # sendPhoto: "The photo must be at most 10 MB"
        width, height = _png_size(photo["content"]) or (800, 450)
        # Bot API: "The photo's width and height must not exceed 10000 in total. Width and height
        # ratio must be at most 20."
        if width + height > 10000 or max(width, height) > 20 * max(min(width, height), 1):
            raise ApiError(400, "Bad Request: PHOTO_INVALID_DIMENSIONS")
        caption = self._text(params, "caption", MAX_CAPTION) if params.get("caption") else None
        self._rate(chat)
        file_id = f"photo{len(self.files) + 1}"
        self.files[file_id] = (f"photos/{file_id}.png", photo["content"])
        # Telegram keeps the photo at 1280 px on its longer side at most (and smaller copies)
        scale = min(1.0, 1280 / max(width, height))
        size = {"width": round(width * scale), "height": round(height * scale)}
        sizes = [{"file_id": file_id, "file_unique_id": file_id + "u", **size}]
        message = self._bot_message(chat, photo=sizes, caption=caption)
        await self._record(
            "photo", chat_id=chat.id, message_id=message["message_id"], text=caption, content=photo["content"]
        )
        return message

    def _m_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
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

    def _m_setMyCommands(self, params: dict[str, Any]) -> bool:
        scope = json.dumps(params.get("scope") or {"type": "default"}, sort_keys=True)
        self.commands[(scope, params.get("language_code") or "")] = params.get("commands") or []
        return True

    def _m_getMyCommands(self, params: dict[str, Any]) -> list[dict[str, str]]:
        scope = json.dumps(params.get("scope") or {"type": "default"}, sort_keys=True)
        return self.commands.get((scope, params.get("language_code") or ""), [])

    def _m_getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
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

    def _m_getChatAdministrators(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        chat = self._chat(params.get("chat_id"))
        return [self._m_getChatMember({"chat_id": chat.id, "user_id": uid}) for uid in sorted(chat.admins)]
