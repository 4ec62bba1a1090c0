"""Who a PBX call is for: the priority it takes in the PBX's call budget.

MikoPBX's nginx lets a client make 180 requests a minute. Everything the bot
does shares that budget, and not everything is as urgent: an admin waiting for
a card comes first, an approved apply next, reports (digest, doctor) after
them, and the background refresh of the mirror only with what is left.

The priority travels with the task (a context variable), so code between the
caller and the client needs no extra argument:

    with priority(Priority.BACKGROUND):
        await reader.refresh(...)
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum


class Priority(IntEnum):
    """Lower value, served first."""

    COMMAND = 0  # an admin is waiting for an answer
    APPLY = 1  # an approved plan writing and verifying
    REPORT = 2  # digest, doctor, scheduled summaries
    BACKGROUND = 3  # the mirror's refresher: spare budget only


_current: contextvars.ContextVar[Priority] = contextvars.ContextVar("pbx_priority", default=Priority.COMMAND)


def current_priority() -> Priority:
    return _current.get()


@contextmanager
def priority(level: Priority) -> Iterator[Priority]:
    """PBX calls made inside this block (and by tasks started inside it) take `level`."""
    token = _current.set(level)
    try:
        yield level
    finally:
        _current.reset(token)
