"""The store off the event loop: one thread boundary between the async bot and the database.

`Store` is plain synchronous SQLAlchemy: short transactions, easy to test. On
the event loop, though, a slow database (PostgreSQL across a network, 20 ms a
packet) would freeze every chat while one handler waits for it. `AsyncStore`
runs each `Store` call in a small pool of its own threads, sized like the
engine's connection pool, so the loop only awaits.

    db = AsyncStore(store)
    row = await db.get_plan(plan_id)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .repo import Store

DEFAULT_THREADS = 8  # SQLAlchemy's default pool holds 5 connections with 10 more on demand


class AsyncStore:
    """Every public method of `Store`, awaitable. `sync` is the store itself (for
    code that already runs in a thread, and for tests)."""

    def __init__(self, store: Store, *, threads: int = DEFAULT_THREADS):
        self.sync = store
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pbxbot-db")

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (database work) in the store's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.sync, name)
        if name.startswith("_") or not callable(method):
            raise AttributeError(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.run(method, *args, **kwargs)

        call.__name__ = name
        call.__doc__ = method.__doc__
        setattr(self, name, call)  # built once per method
        return call

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
