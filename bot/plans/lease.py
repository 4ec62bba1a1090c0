"""The apply lease: a live apply holds one on its plan and renews it while it
runs; a plan whose lease expired (at once, when its owner is known dead) is
free for recovery to take over."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets as _secrets
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from storage.tables import PlanRow

from .changes import Ledger
from .executor import Executor

log = logging.getLogger("pbxbot.changes")

LEASE = timedelta(seconds=60)  # an apply renews its lease every third of this


def process_id() -> str:
    """Who holds a lease: host, pid, and a nonce (a pid can be reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_secrets.token_hex(3)}"


def owner_is_dead(owner: str | None) -> bool:
    """A lease owner on this host whose process no longer runs."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return owner not in _LIVE_OWNERS  # this process, but not a lease it holds now
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_LIVE_OWNERS: set[str] = set()


class Lease:
    """This process's apply leases: who it is (`owner`) and how long a lease lasts."""

    def __init__(self, ledger: Ledger, duration: timedelta = LEASE):
        self.ledger = ledger
        self.duration = duration
        self.owner = process_id()

    def fields(self) -> dict[str, Any]:
        """A fresh lease, as the plan's columns."""
        return {"lease_owner": self.owner, "lease_until": self.ledger.clock() + self.duration}

    @contextlib.asynccontextmanager
    async def held(self, plan_id: str, executor: Executor) -> AsyncIterator[None]:
        """Renew the plan's apply lease while the body runs. Should the lease be
        lost (this process stalled past it and another took over), the executor
        stops before its next write and puts back what it wrote."""
        _LIVE_OWNERS.add(self.owner)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(self.duration.total_seconds() / 3)
                until = self.ledger.clock() + self.duration
                if not await self.ledger.db.plans.renew_lease(plan_id, self.owner, until):
                    log.error("plan %s: the apply lease was lost; stopping before the next write", plan_id)
                    executor.halt = True
                    return

        task = asyncio.create_task(heartbeat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def take_over(self, row: PlanRow) -> bool:
        """Take the lease of an applying plan whose lease expired or whose owner is known
        dead; False while a live apply holds it (or another process took it a moment ago)."""
        now = self.ledger.clock()
        dead = [row.lease_owner] if row.lease_owner and owner_is_dead(row.lease_owner) else []
        return await self.ledger.db.plans.take_lease(row.id, self.owner, now + self.duration, now, dead)

    async def free(self, plan_id: str) -> None:
        """Let the lease lapse now: another try may take the plan at once."""
        await self.ledger.db.plans.renew_lease(plan_id, self.owner, self.ledger.clock())
