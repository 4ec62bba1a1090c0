"""The process entry layer: the command line, the aiogram app (polling and
webhook), `check`, the scheduler and leader wiring, logs and metrics. The only
room that imports handlers/ and sandbox/; nothing imports it but sandbox/."""

from __future__ import annotations

# Before any aiogram import in the process (handlers/ import it): its models are built when used.
from . import lazy_models  # noqa: F401
