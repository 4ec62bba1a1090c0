"""One scheduler owner at a time.

On PostgreSQL the owner holds a session-level advisory lock (one per schema:
the processes that share these tables) on a connection of its own; when the
owner dies its connection closes, the lock goes with it, and another process
takes it on its next try (every `interval` seconds). On
SQLite there is only one process: it is always the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection

log = logging.getLogger("pbxbot.leader")
LOCK_KEY = 0x7062_7862  # "pbxb"


class Leadership:
    def __init__(self, engine: Engine, *, interval: float = 5.0, key: int = LOCK_KEY):
        self.engine = engine
        self.interval = interval
        self.key = key
        self.owner = False
        self._conn: Connection | None = None
        self._task: asyncio.Task | None = None

    @property
    def shared(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _try(self) -> bool:
        if self._conn is None:
            self._conn = self.engine.connect()
        # One lock per schema: the bots sharing these tables, and no others on the same server.
        query = text("SELECT pg_try_advisory_lock(:k, hashtext(current_schema()))")
        got = bool(self._conn.execute(query, {"k": self.key}).scalar())
        self._conn.commit()
        return got

    def _alive(self) -> bool:
        if self._conn is None:  # dropped: no connection, no lock
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:  # the connection (and the lock with it) is gone
            self._drop()
            return False

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    async def run(
        self, on_acquired: Callable[[], Awaitable[None] | None], on_lost: Callable[[], Awaitable[None] | None]
    ) -> None:
        """Try, and keep trying, to own the schedules; call back on each change."""
        if not self.shared:
            self.owner = True
            await _call(on_acquired)
            return
        while True:
            try:
                if not self.owner and await asyncio.to_thread(self._try):
                    self.owner = True
                    log.warning("this process now runs the schedules")
                    await _call(on_acquired)
                elif self.owner and not await asyncio.to_thread(self._alive):
                    self.owner = False
                    log.warning("lost the scheduler lock")
                    await _call(on_lost)
            except Exception as exc:  # the database is away: try again later
                log.warning("scheduler lock: %s", type(exc).__name__)
                self._drop()
                if self.owner:
                    self.owner = False
                    await _call(on_lost)
            await asyncio.sleep(self.interval)

    def start(
        self, on_acquired: Callable[[], Awaitable[None] | None], on_lost: Callable[[], Awaitable[None] | None]
    ) -> None:
        self._task = asyncio.create_task(self.run(on_acquired, on_lost))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._drop)
        self.owner = False


async def _call(callback: Callable[[], Awaitable[None] | None]) -> None:
    result = callback()
    if result is not None:
        await result
