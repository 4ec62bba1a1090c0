"""The chats' side of the Bot API double: users, groups and their messages,
the updates waiting for the bot (or posted to its webhook), and the record of
everything the bot did, which tests and `pbxbot shell` wait on."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from .wire import ANONYMOUS_ADMIN_ID, Chat, User, public, utf16_len


class ChatState:
    """Who is there, what was said, what the bot has yet to read."""

    def __init__(self, token: str, bot_username: str):
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
        self._updates: deque[dict[str, Any]] = deque()
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._callbacks: dict[str, bool] = {}  # query id -> answered
        self._callback_ids = itertools.count(1)
        self._polls = 0  # getUpdates requests so far
        self._changed = asyncio.Condition()
        self.webhook: dict[str, Any] | None = None  # {"url", "secret_token"} once setWebhook was called
        # Stand-in for a load balancer in front of webhook replicas: deliver round-robin to these.
        self.webhook_targets: list[str] = []
        self.delivered: list[tuple[int, str, int]] = []  # (update_id, target, HTTP status)
        self._next_target = 0
        self._deliveries: set[asyncio.Task] = set()

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
            extra["reply_to_message"] = {k: v for k, v in public(answered).items() if k != "reply_to_message"}
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
                "message": public(message),
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

    async def _record(self, kind: str, **event: Any) -> None:
        self.events.append({"kind": kind, "at": time.monotonic(), **event})
        for listener in self.listeners:
            listener(self.events[-1])
        await self._notify()

    def _bot_message(self, chat: Chat, **content: Any) -> dict[str, Any]:
        message = {
            "message_id": self._next_id(chat.id),
            "from": self.bot.wire(),
            "chat": chat.wire(self.users),
            "date": int(time.time()),
            **{k: v for k, v in content.items() if v is not None},
        }
        self.messages.setdefault(chat.id, {})[message["message_id"]] = message
        return message
