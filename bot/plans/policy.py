"""Roles and approval rules: pure functions of the policy settings.

    viewer    reads: /numbers, plans, digests
    operator  proposes changes (and cancels its own)
    approver  approves or rejects others' plans
    admin     all of it, configures, cancels anyone's plan

A plan needs, per kind, N approvals from approvers other than its proposer
(defaults: add 1, route 1, remove 2, undo 1). `self_approve = true` lets the
proposer's own approval count, for a PBX with one admin. Unknown users have no
role: every action is refused (fail closed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from bot.config import PolicySettings

LOCAL_ADMIN_ID = 0  # the command line on the bot's own machine: `pbxbot plan --apply`


class Role(enum.IntEnum):
    VIEWER = 1
    OPERATOR = 2
    APPROVER = 3
    ADMIN = 4


class Action(enum.StrEnum):
    VIEW = "view"
    PROPOSE = "propose"
    APPROVE = "approve"
    CANCEL_OWN = "cancel_own"
    CANCEL_ANY = "cancel_any"
    CONFIGURE = "configure"


_MINIMUM = {
    Action.VIEW: Role.VIEWER,
    Action.PROPOSE: Role.OPERATOR,
    Action.CANCEL_OWN: Role.OPERATOR,
    Action.APPROVE: Role.APPROVER,
    Action.CANCEL_ANY: Role.ADMIN,
    Action.CONFIGURE: Role.ADMIN,
}


def role_of(policy: PolicySettings, user_id: int) -> Role | None:
    """The highest role the user is listed with; None for a stranger."""
    if user_id == LOCAL_ADMIN_ID:
        return Role.ADMIN
    for role, ids in (
        (Role.ADMIN, policy.admins),
        (Role.APPROVER, policy.approvers),
        (Role.OPERATOR, policy.operators),
        (Role.VIEWER, policy.viewers),
    ):
        if user_id in ids:
            return role
    return None


def may(policy: PolicySettings, user_id: int, action: Action) -> bool:
    role = role_of(policy, user_id)
    return role is not None and role >= _MINIMUM[action]


def approvals_needed(policy: PolicySettings, kind: str) -> int:
    return policy.approvals.get(kind, 1)


@dataclass(frozen=True)
class Tally:
    have: int
    need: int

    @property
    def done(self) -> bool:
        return self.have >= self.need


def tally(policy: PolicySettings, kind: str, proposer_id: int, approvers: list[int]) -> Tally:
    """Approvals that count: distinct approvers, the proposer only with self_approve."""
    counted = {
        uid
        for uid in approvers
        if may(policy, uid, Action.APPROVE) and (uid != proposer_id or policy.self_approve)
    }
    return Tally(len(counted), approvals_needed(policy, kind))


def refuse_approval(policy: PolicySettings, user_id: int, proposer_id: int, already: list[int]) -> str | None:
    """Why this user may not approve (a catalogue key), or None."""
    if not may(policy, user_id, Action.APPROVE):
        return "policy.not_approver"
    if user_id == proposer_id and not policy.self_approve:
        return "policy.own_plan"
    if user_id in already:
        return "policy.already_approved"
    return None


def refuse_cancel(policy: PolicySettings, user_id: int, proposer_id: int) -> str | None:
    if may(policy, user_id, Action.CANCEL_ANY):
        return None
    if user_id == proposer_id and may(policy, user_id, Action.CANCEL_OWN):
        return None
    return "policy.not_yours"
