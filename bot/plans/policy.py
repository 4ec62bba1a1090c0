"""Roles and approval rules: pure functions of the policy settings.

    viewer    reads: /numbers, plans, digests
    operator  proposes changes (and cancels its own)
    approver  approves or rejects others' plans
    admin     all of it, configures, cancels anyone's plan

A plan needs, per kind, N approvals from approvers other than its proposer
(defaults: add 1, route 1, remove 2, undo 1, fix 1, password 1). `traps` names
the counts the configured approvers can never meet (`pbxbot check` and the
start warn of them). `self_approve = true` lets the
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


@dataclass(frozen=True)
class Trap:
    """A count of approvals the configured approvers cannot meet: for every plan of the
    kind (`never`), or for one proposed by an approver, whose own approval does not count."""

    kind: str
    need: int
    approvers: int  # people who may approve (approvers and admins)
    never: bool


def traps(policy: PolicySettings) -> list[Trap]:
    """The kinds whose approvals cannot be met by the approvers other than a proposer."""
    approvers = len({uid for uid in (*policy.admins, *policy.approvers) if may(policy, uid, Action.APPROVE)})
    found = []
    for kind, need in sorted(policy.approvals.items()):
        if need > approvers:
            found.append(Trap(kind, need, approvers, never=True))
        elif not policy.self_approve and need > approvers - 1 and need > 0:
            found.append(Trap(kind, need, approvers, never=False))
    return found


def trap_warnings(policy: PolicySettings) -> list[tuple[str, dict[str, object]]]:
    """The traps as catalogue keys and their values: one line for the counts never met,
    one for those a proposing approver cannot meet."""
    found = traps(policy)
    lines: list[tuple[str, dict[str, object]]] = []
    for never, key in ((True, "policy.trap_never"), (False, "policy.trap_proposer")):
        these = [trap for trap in found if trap.never is never]
        if these:
            kinds = ", ".join(f"{trap.kind} = {trap.need}" for trap in these)
            lines.append((key, {"kinds": kinds, "approvers": these[0].approvers}))
    return lines


def refuse_cancel(policy: PolicySettings, user_id: int, proposer_id: int) -> str | None:
    if may(policy, user_id, Action.CANCEL_ANY):
        return None
    if user_id == proposer_id and may(policy, user_id, Action.CANCEL_OWN):
        return None
    return "policy.not_yours"
