"""aiogram routers, one file per concern. Thin: parse, call bot/, render, post."""

from __future__ import annotations

from aiogram import Router


def routers() -> list[Router]:
    """Fresh routers for one dispatcher."""
    from . import approvals, common, numbers, routing, secrets

    # routing and secrets before approvals: their buttons must not reach the catch-all for unknown buttons
    return [common.router(), numbers.router(), routing.router(), secrets.router(), approvals.router()]
