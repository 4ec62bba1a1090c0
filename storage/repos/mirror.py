"""The PBX mirror (`MirrorRow`): each record of a PBX as last read, and when.

Account rows are keyed by the account's id; the lists (routes, destinations,
registration states) are one row each, with an empty key. An account the bot dropped
(removed, or written with an unknown outcome) leaves a tombstone (`GONE`, no data) in
its place: another process that still holds the account drops it too when it syncs,
instead of taking its absence from the PBX's list for a removal by hand."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select

from ..tables import MirrorRow, utcnow
from .base import Repo

ACCOUNT = "account"
GONE = "gone"  # an account's tombstone: dropped by the bot at `read_at`


def _chunks(keys: list[str]) -> Iterator[list[str]]:
    """500 at a time: a bounded IN list, and a 5,000-account read never holds 5,000 ORM rows
    at once (the process's resident memory keeps such a peak)."""
    for start in range(0, len(keys), 500):
        yield keys[start : start + 500]


def _insert(s: Any) -> Any:
    """The dialect's INSERT, which has ON CONFLICT (the bot's two: SQLite, PostgreSQL)."""
    if s.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


class MirrorRepo(Repo):
    def load(self, pbx: str, kind: str | None = ACCOUNT) -> list[MirrorRow]:
        """Every mirrored record of this kind (None: of every kind)."""
        query = select(MirrorRow).where(MirrorRow.pbx == pbx)
        if kind is not None:
            query = query.where(MirrorRow.kind == kind)
        with self.session() as s:
            return list(s.exec(query))

    def put(
        self, pbx: str, kind: str, records: Mapping[str, dict[str, Any]], *, at: datetime | None = None
    ) -> None:
        """Keep these records (by key) as read at `at`: inserted, or written over."""
        if not records:
            return
        at = at or utcnow()
        for chunk in _chunks(list(records)):
            kinds = [kind, GONE] if kind == ACCOUNT else [kind]  # read again: no longer gone
            with self.session() as s:
                if kind == ACCOUNT:  # dropped since this was read (another process): the tombstone stands
                    newer = set(
                        s.exec(
                            select(MirrorRow.key).where(
                                col(MirrorRow.pbx) == pbx,
                                col(MirrorRow.kind) == GONE,
                                col(MirrorRow.key).in_(chunk),
                                col(MirrorRow.read_at) >= at,
                            )
                        )
                    )
                    chunk = [k for k in chunk if k not in newer]
                    if not chunk:
                        continue
                s.exec(
                    delete(MirrorRow).where(
                        col(MirrorRow.pbx) == pbx,
                        col(MirrorRow.kind).in_(kinds),
                        col(MirrorRow.key).in_(chunk),
                    )
                )
                s.add_all(MirrorRow(pbx=pbx, kind=kind, key=k, data=records[k], read_at=at) for k in chunk)
                self.commit(s)

    def forget(self, pbx: str, keys: Iterable[str], *, at: datetime | None = None) -> None:
        """Accounts the bot dropped: their rows go, and a tombstone each (`GONE`, at `at`)
        tells the other processes to drop them too."""
        at = at or utcnow()
        for chunk in _chunks(list(dict.fromkeys(keys))):
            with self.session() as s:
                s.exec(
                    delete(MirrorRow).where(
                        col(MirrorRow.pbx) == pbx,
                        col(MirrorRow.kind) == ACCOUNT,
                        col(MirrorRow.key).in_(chunk),
                    )
                )
                # an upsert: two processes telling one removal at once must not collide on the key
                tombstones = [{"pbx": pbx, "kind": GONE, "key": k, "data": {}, "read_at": at} for k in chunk]
                insert = _insert(s)(MirrorRow).values(tombstones)
                s.exec(
                    insert.on_conflict_do_update(
                        index_elements=["pbx", "kind", "key"], set_={"read_at": insert.excluded.read_at}
                    )
                )
                self.commit(s)

    def drop(self, pbx: str, kind: str | None = None, keys: Iterable[str] | None = None) -> int:
        """Forget records: these keys of this kind, every record of the kind, or all of the PBX."""
        query = delete(MirrorRow).where(col(MirrorRow.pbx) == pbx)
        if kind is not None:
            query = query.where(col(MirrorRow.kind) == kind)
        if keys is not None:
            wanted = list(keys)
            if not wanted:
                return 0
            query = query.where(col(MirrorRow.key).in_(wanted))
        with self.session() as s:
            count = s.exec(query).rowcount
            self.commit(s)
            return int(count or 0)

    def stamps(self, pbx: str, since: datetime | None = None) -> list[tuple[str, str, datetime]]:
        """(kind, key, read_at) of every record of the PBX (read after `since`): which to
        load, without loading them (5,000 accounts' records at once were a 30 MB peak)."""
        query = select(MirrorRow.kind, MirrorRow.key, MirrorRow.read_at).where(MirrorRow.pbx == pbx)
        if since is not None:
            query = query.where(col(MirrorRow.read_at) > since)
        with self.session() as s:
            return [(kind, key, read_at) for kind, key, read_at in s.exec(query)]

    def get(self, pbx: str, kind: str, keys: Iterable[str]) -> list[MirrorRow]:
        """These records of this kind (a few hundred keys at most: one IN list)."""
        wanted = list(keys)
        if not wanted:
            return []
        query = select(MirrorRow).where(
            col(MirrorRow.pbx) == pbx, col(MirrorRow.kind) == kind, col(MirrorRow.key).in_(wanted)
        )
        with self.session() as s:
            return list(s.exec(query))

    def changed_since(self, pbx: str, since: datetime, kind: str | None = ACCOUNT) -> list[MirrorRow]:
        """Records of this kind (None: of every kind) read after `since` (another process's
        reads and writes)."""
        query = select(MirrorRow).where(MirrorRow.pbx == pbx, col(MirrorRow.read_at) > since)
        if kind is not None:
            query = query.where(MirrorRow.kind == kind)
        with self.session() as s:
            return list(s.exec(query))
