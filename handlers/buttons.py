"""What a button carries: one aiogram CallbackData factory per kind of button,
its action an enum, ids only (never a secret, never a text a user typed).

The wire format is versioned by what it carries: `Button` is the prefix (the
kind), an action enum's values are the letters on the wire, so a card posted
long ago (`pl:a:7f3a2c:2`: approve plan 7f3a2c at version 2) is read the same
today. Members may be renamed; a value once posted is never given to another
action. When a kind's fields change, the old presses still start with its
prefix but no longer parse: `outdated` tells them apart from a forgery, and
they get a polite "this button is outdated" (handlers/approvals.py).
"""

from __future__ import annotations

from enum import StrEnum

from aiogram.filters.callback_data import CallbackData


class Button(StrEnum):
    """The kinds of buttons, by their callback data prefix."""

    PLAN = "pl"  # under a plan card
    FIX = "fx"  # under a /doctor report
    PICK = "pw"  # "which plan is this password for?" in a private chat
    DRIFT = "dr"  # "Put back" under a drift alert
    PASSWORD = "np"  # "new password for <login>" under a card whose registration came back rejected


class PlanAction(StrEnum):
    APPROVE = "a"  # approve (the card says Apply where the proposer may approve alone)
    REJECT = "r"
    CANCEL = "c"


class PlanButton(CallbackData, prefix=Button.PLAN):
    """A plan card's button; `version` is the plan's, so a press on an older card is refused."""

    action: PlanAction
    plan: str
    version: int


class FixButton(CallbackData, prefix=Button.FIX):
    """A /doctor Fix button: the finding is found again when pressed."""

    key: str  # sha1 of the host, 10 hex


class DriftButton(CallbackData, prefix=Button.DRIFT):
    """A drift alert's "Put back": the alert's audit event id; the plan is read from that row."""

    alert: int


class NewPassword(CallbackData, prefix=Button.PASSWORD):
    """Propose /password for a login the card's plan saw rejected: the plan's id and the
    login's place among its rejected logins (sorted), never the login as typed."""

    plan: str
    n: int


DROP = -1  # the "it was not a password" choice


class SecretPick(CallbackData, prefix=Button.PICK):
    """Which waiting login a held password goes to: ids only, never the password."""

    hold: int
    choice: int  # index into the held row's choices, or DROP


def outdated(data: str | None) -> bool:
    """A press no factory above took, yet with one of our prefixes: a button posted
    in an older format (or a forgery dressed as one: it is answered, nothing more)."""
    prefix = (data or "").split(":", 1)[0]
    return prefix in {kind.value for kind in Button}
