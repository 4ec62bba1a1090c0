"""aiogram validates every Telegram answer with `Response[<the method's result>]`, a
generic model pydantic keeps only weakly: without a holder its validator is built
again after each garbage collection (about 50 ms a message). The bot's session keeps
the ones it has used."""

from __future__ import annotations

import gc

from aiogram.methods import SendMessage
from aiogram.methods.base import Response
from aiogram.types import Message

from bot.entry.app import KeptResponseTypes

ANSWER = {
    "ok": True,
    "result": {"message_id": 1, "date": 1700000000, "chat": {"id": -1, "type": "supergroup", "title": "x"}},
}


async def test_a_method_answer_type_outlives_garbage_collection():
    kept = KeptResponseTypes()

    async def make_request(bot, method):
        return Response[method.__returning__].model_validate(ANSWER, context={"bot": bot})

    first = await kept(make_request, None, SendMessage(chat_id=-1, text="hi"))
    gc.collect()
    again = Response[Message]
    assert again is kept.kept[SendMessage]  # the same class: its validator is not built again
    assert again.__pydantic_complete__
    second = await kept(make_request, None, SendMessage(chat_id=-1, text="hi"))
    assert first.result.message_id == second.result.message_id == 1
