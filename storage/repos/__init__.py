"""The repositories: the only code that reads or writes the tables, one a kind
of record, handed out by `Repos` (as Latand/tgbot_template_v3's `RequestsRepo`
hands out one repo a table):

    repos = Repos(engine)
    repos.plans.get(plan_id)
    repos.audit.add(AuditRow(...))
    with repos.transaction() as tx:  # several repos, one commit
        tx.plans.add(row)
        tx.locks.take(row.pbx, logins, row.id)

Each call on its own is one short transaction.
"""

from __future__ import annotations

import contextlib
import functools
import secrets as _secrets
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from sqlalchemy import Connection, Engine, delete, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from ..tables import AuditRow, LockRow, PlanRow
from .approvals import ApprovalRepo
from .audit import AuditRepo
from .base import Repo
from .chats import ChatRepo
from .digests import DigestRepo
from .held import HeldSecretRepo
from .locks import Conflict, LockRepo
from .mirror import MirrorRepo
from .plans import PlanRepo
from .prompts import PromptRepo
from .schedules import ScheduleRepo
from .secrets import SecretRepo

RepoT = TypeVar("RepoT", bound=Repo)

PLAN_ID_BYTES = 3  # six hex digits: short enough to type in `/undo 7f3a2c`

__all__ = [
    "PLAN_ID_BYTES",
    "ApprovalRepo",
    "AuditRepo",
    "ChatRepo",
    "DigestRepo",
    "HeldSecretRepo",
    "LockRepo",
    "MirrorRepo",
    "PlanRepo",
    "PromptRepo",
    "Repo",
    "Repos",
    "ScheduleRepo",
    "SecretRepo",
]


class Repos:
    """One repository per kind of record, all on one engine (or, from
    `transaction()`, on one session)."""

    def __init__(self, engine: Engine, session: Session | None = None):
        self.engine = engine
        self._session = session

    def _repo(self, kind: type[RepoT]) -> RepoT:
        return kind(self.engine, self._session)

    @functools.cached_property
    def plans(self) -> PlanRepo:
        return self._repo(PlanRepo)

    @functools.cached_property
    def locks(self) -> LockRepo:
        return self._repo(LockRepo)

    @functools.cached_property
    def approvals(self) -> ApprovalRepo:
        return self._repo(ApprovalRepo)

    @functools.cached_property
    def audit(self) -> AuditRepo:
        return self._repo(AuditRepo)

    @functools.cached_property
    def secrets(self) -> SecretRepo:
        return self._repo(SecretRepo)

    @functools.cached_property
    def prompts(self) -> PromptRepo:
        return self._repo(PromptRepo)

    @functools.cached_property
    def held(self) -> HeldSecretRepo:
        return self._repo(HeldSecretRepo)

    @functools.cached_property
    def chats(self) -> ChatRepo:
        return self._repo(ChatRepo)

    @functools.cached_property
    def schedules(self) -> ScheduleRepo:
        return self._repo(ScheduleRepo)

    @functools.cached_property
    def digests(self) -> DigestRepo:
        return self._repo(DigestRepo)

    @functools.cached_property
    def mirror(self) -> MirrorRepo:
        return self._repo(MirrorRepo)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Repos]:
        """Repos sharing one session: committed when the block ends, rolled back when it raises."""
        if self._session is not None:  # already inside one
            yield self
            return
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield Repos(self.engine, s)
                s.commit()
            except BaseException:
                s.rollback()  # rows inserted in the block become new again (they may be added anew)
                raise

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A connection in one transaction: the enclosing one's, or one committed when the
        block ends and rolled back when it raises."""
        if self._session is not None:
            yield self._session.connection()
            return
        with self.engine.begin() as connection:
            yield connection

    # ------------------------------------------------------------------ across repos

    def add_plan(
        self,
        row: PlanRow,
        logins: Iterable[str] = (),
        events: Callable[[PlanRow], Iterable[AuditRow]] | None = None,
    ) -> Conflict | None:
        """Insert the plan with a fresh id and lock its logins, in one transaction, with
        the audit `events(row)` give once the row has its id. Returns None, or the open
        plan that holds some of the logins (which, since when): then nothing is stored."""
        logins = sorted(set(logins))
        for _ in range(20):
            row.id = _secrets.token_hex(PLAN_ID_BYTES)
            locks = [LockRow(pbx=row.pbx, login=login, plan_id=row.id).model_dump() for login in logins]
            audit = [event.model_dump(exclude={"id"}) for event in (events(row) if events else ())]
            try:  # inserted at once: a login locked already, or an id taken, fails the insert
                # plain INSERTs, not the ORM's unit of work: every command's card waits for
                # this one (0.4 ms instead of 0.83); the rows stay as they are given
                with self._writing() as db:
                    db.execute(insert(PlanRow), [row.model_dump()])
                    if locks:
                        db.execute(insert(LockRow), locks)
                    if audit:
                        db.execute(insert(AuditRow), audit)
            except IntegrityError:
                holder = self.locks.conflict(row.pbx, logins)
                if holder is not None:
                    return holder
                continue  # the id was taken: draw again
            return None
        raise RuntimeError("could not draw a free plan id")

    def discard_plan(self, plan_id: str) -> None:
        """A plan stored while the PBX was still being read, that the answer did not confirm
        (see `Lifecycle.propose`): no card, approval or audit row names it yet. Gone with
        its locks, in one transaction; a plan that moved on from proposed is kept."""
        draft = select(col(PlanRow.id)).where(col(PlanRow.id) == plan_id, col(PlanRow.status) == "proposed")
        with self._writing() as db:
            db.execute(delete(LockRow).where(col(LockRow.plan_id).in_(draft)))  # first: they refer to it
            db.execute(delete(PlanRow).where(col(PlanRow.id).in_(draft)))

    # ------------------------------------------------------------------ health

    def ping(self) -> bool:
        with Session(self.engine) as s:
            return s.exec(select(1)).one() == 1
