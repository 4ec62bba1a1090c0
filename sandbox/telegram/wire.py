"""What Telegram's wire carries, and its checks on text: the limits, the
errors, HTML parse mode as Telegram reads it, users and chats as JSON."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

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
JSON_FIELDS = {
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


def public(message: dict[str, Any]) -> dict[str, Any]:
    """A stored message as the API shows it (the sandbox's own `_` fields left out)."""
    return {k: v for k, v in message.items() if not k.startswith("_")}
