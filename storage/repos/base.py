"""What every repository shares: where its sessions come from.

A repository on its own opens one short transaction per call. Given a session
(`Repos.transaction()`), it works inside that one instead: several repositories
write together, committed once at the end of the block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Engine
from sqlmodel import Session


class Repo:
    def __init__(self, engine: Engine, session: Session | None = None):
        self.engine = engine
        self._shared = session

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """The session a call works in: its own, or the enclosing transaction's."""
        if self._shared is not None:
            yield self._shared
            return
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    def commit(self, s: Session) -> None:
        """End a write: commit it, or, inside a transaction, flush it (the block commits)."""
        if self._shared is None:
            s.commit()
        else:
            s.flush()
