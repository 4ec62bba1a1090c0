"""Faults the Bot API double injects: a 429 with retry_after on the next calls
of a method (`inject`), and Telegram's 20 messages a minute per group when
`enforce_limits` is on (each message it refuses so is in `limited`)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from .wire import GROUP_LIMIT_PER_MIN, ApiError, Chat


@dataclass
class Fault:
    method: str
    count: int = 1
    retry_after: int = 1


class FaultInjection:
    def __init__(
        self,
        *,
        enforce_limits: bool = False,
        group_limit: int = GROUP_LIMIT_PER_MIN,
        group_window: float = 60.0,
    ):
        self.faults: list[Fault] = []
        self.enforce_limits = enforce_limits
        self.group_limit = group_limit
        self.group_window = group_window
        self.limited: list[tuple[int, float]] = []  # (chat, when): messages refused by the group limit
        self._sent_at: dict[int, deque[float]] = {}

    def inject(self, method: str, *, count: int = 1, retry_after: int = 1) -> None:
        self.faults.append(Fault(method, count, retry_after))

    def _injected(self, method: str) -> None:
        """Raise the 429 injected for `method`, if one is pending (and count it down)."""
        fault = next((f for f in self.faults if f.method == method), None)
        if fault is not None:
            fault.count -= 1
            if fault.count <= 0:
                self.faults.remove(fault)
            raise ApiError(
                429, f"Too Many Requests: retry after {fault.retry_after}", retry_after=fault.retry_after
            )

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
