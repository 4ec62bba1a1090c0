"""aiogram routers, one file per concern. Thin: parse, call bot/, render, post."""

from __future__ import annotations

from aiogram import Router


def routers() -> list[Router]:
    """Fresh routers for one dispatcher."""
    from . import approvals, common, drift, numbers, routing, secrets

    # routing, drift, secrets before approvals: their buttons must not reach the catch-all for unknown ones
    return [
        common.router(),
        numbers.router(),
        routing.router(),
        drift.router(),
        secrets.router(),
        approvals.router(),
    ]
