"""The repositories off the event loop: one thread boundary between the async bot and the database.

The repositories are plain synchronous SQLAlchemy: short transactions, easy to
test. On the event loop, though, a slow database (PostgreSQL across a network,
20 ms a packet) would freeze every chat while one handler waits for it.
`AsyncRepos` runs each repository call in a small pool of its own threads,
sized like the engine's connection pool, so the loop only awaits.

    db = AsyncRepos(repos)
    row = await db.plans.get(plan_id)
    await db.run(lambda: ...)  # several calls in one thread hop (e.g. a `transaction()`)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .repos import Repo, Repos

DEFAULT_THREADS = 8  # SQLAlchemy's default pool holds 5 connections with 10 more on demand


class _Awaitable:
    """Every public method of `target` (a repository), awaitable in `pool`."""

    def __init__(self, target: Any, run: Callable[..., Any]):
        self._target = target
        self._run = run

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name.startswith("_"):
            raise AttributeError(name)
        if isinstance(attribute, Repo):
            wrapped: Any = _Awaitable(attribute, self._run)
        elif callable(attribute):
            method = attribute

            async def call(*args: Any, **kwargs: Any) -> Any:
                return await self._run(method, *args, **kwargs)

            call.__name__ = name
            call.__doc__ = method.__doc__
            wrapped = call
        else:
            raise AttributeError(name)
        setattr(self, name, wrapped)  # built once per name
        return wrapped


class AsyncRepos(_Awaitable):
    """`Repos`, awaitable: `await db.plans.get(id)`, `await db.add_plan(row, logins)`.
    `sync` is the `Repos` itself (for code that already runs in a thread, and for tests)."""

    def __init__(self, repos: Repos, *, threads: int = DEFAULT_THREADS):
        self.sync = repos
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pbxbot-db")
        super().__init__(repos, self.run)

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn(*args, **kwargs)` (database work) in the store's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
