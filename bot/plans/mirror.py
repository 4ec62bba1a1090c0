"""The mirror's refresher: re-reads account details in the background, oldest first.

MikoPBX's list of accounts lacks their extra parameters, so a hand edit of
them is invisible to the cheap list calls every read makes. The refresher
re-reads a few accounts' details each round, those never read first and then
the ones read longest ago, with the share of the PBX's call budget left to it
(its calls take `Priority.BACKGROUND`: the shared budget serves them only with
what commands, applies and reports leave).

The bound: every account is re-read within `bound(accounts)` seconds. At the
defaults (165 calls/min, 20 % of them, a round every 60 s) a round makes the 3
list calls (accounts, routes, destinations: a route added, edited or removed, or
an account added, removed or disabled by hand, shows there within a round) and
30 detail reads, so 1,000 accounts are all re-read within 34 rounds, about 34 minutes (5,000: about
2 h 47 min). A change found on the way goes to the reader's `on_drift` hook.
"""

from __future__ import annotations

import logging
import math

from pbx.budget import Priority, priority
from pbx.errors import PbxError

from .snapshot import SnapshotReader

log = logging.getLogger("pbxbot.mirror")


class MirrorRefresher:
    def __init__(self, reader: SnapshotReader, *, per_minute: float, share: float = 0.2, every: float = 60.0):
        self.reader = reader
        self.per_minute = per_minute
        self.share = share
        self.every = every

    @property
    def batch(self) -> int:
        """Details a round reads: its share of the calls a round's time allows, less the 3 list calls."""
        return max(1, math.floor(self.per_minute * self.share * self.every / 60.0) - 3)

    def bound(self, accounts: int) -> float:
        """Seconds within which every one of `accounts` is re-read."""
        return math.ceil(accounts / self.batch) * self.every

    async def run_once(self) -> list[str]:
        """One round: the ids re-read (none when the PBX cannot be reached)."""
        try:
            with priority(Priority.BACKGROUND):
                return await self.reader.refresh(self.batch)
        except PbxError as exc:
            log.warning("mirror of %s: refresh skipped: %s", self.reader.pbx.name, type(exc).__name__)
            return []
