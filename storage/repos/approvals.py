"""Approvals (`ApprovalRow`): who approved or rejected which version of a plan."""

from __future__ import annotations

from sqlmodel import col, select

from ..tables import ApprovalRow
from .base import Repo


class ApprovalRepo(Repo):
    def add(self, row: ApprovalRow) -> None:
        with self.session() as s:
            s.add(row)
            self.commit(s)

    def of(self, plan_id: str, version: int) -> list[ApprovalRow]:
        with self.session() as s:
            return list(
                s.exec(
                    select(ApprovalRow)
                    .where(ApprovalRow.plan_id == plan_id, ApprovalRow.version == version)
                    .order_by(col(ApprovalRow.id))
                )
            )
