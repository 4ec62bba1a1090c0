"""Never silent: a command whose read of the PBX takes long says at once what it
reads and about how long it takes (at the PBX budget's rate); that message then
becomes the answer, edited in place."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

from aiogram.exceptions import TelegramBadRequest
from aiogram.types import InlineKeyboardMarkup, MaybeInaccessibleMessageUnion, Message

from bot.plans.snapshot import SlowRead, slow_read_notice
from bot.text.render import Html, tr


class Announcer:
    """Told by the core before a long read (`slow_read_notice`); posts the notice once."""

    def __init__(self, message: MaybeInaccessibleMessageUnion, lang: str):
        self.message = message
        self.lang = lang
        self.sent: Message | None = None

    async def __call__(self, read: SlowRead) -> None:
        if self.sent is not None:
            return
        self.sent = await self.message.answer(notice_text(read, self.lang))

    @contextlib.contextmanager
    def listening(self) -> Iterator[Announcer]:
        """Long reads of the PBX made inside this block (by this task) are announced."""
        token = slow_read_notice.set(self)
        try:
            yield self
        finally:
            slow_read_notice.reset(token)

    def placeholder(self, chat_id: int) -> int | None:
        """The notice's message id when it was posted in `chat_id` (the answer may take its place)."""
        if self.sent is None or self.sent.chat.id != chat_id:
            return None
        return self.sent.message_id


def notice_text(read: SlowRead, lang: str) -> Html:
    if read.seconds < 90:
        key, n = "tg.reading.seconds", max(1, math.ceil(read.seconds))
    else:
        key, n = "tg.reading.minutes", math.ceil(read.seconds / 60)
    return tr(key, lang, accounts=read.accounts, pbx=read.pbx, n=n)


async def answer_in_place(
    announcer: Announcer, text: Html, *, reply_markup: InlineKeyboardMarkup | None = None
) -> Message:
    """`text` written over the notice when one was posted, else answered as a new message."""
    if announcer.sent is not None:
        try:
            edited = await announcer.sent.edit_text(text, reply_markup=reply_markup)
        except TelegramBadRequest:  # the notice is gone: a new message instead
            pass
        else:
            return edited if isinstance(edited, Message) else announcer.sent
    return await announcer.message.answer(text, reply_markup=reply_markup)
