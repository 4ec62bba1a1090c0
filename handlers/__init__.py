"""aiogram routers, one file per concern. Thin: parse, call bot/, render, post."""

from __future__ import annotations

from aiogram import Router


def routers() -> list[Router]:
    """Fresh routers for one dispatcher."""
    from . import approvals, common, numbers, secrets

    return [common.router(), numbers.router(), approvals.router(), secrets.router()]
