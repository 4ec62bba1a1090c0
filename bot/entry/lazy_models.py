"""Build aiogram's pydantic models when first used, not all at import.

aiogram calls `model_rebuild(_types_namespace=...)` on each of its ~300 Telegram
types at import time (aiogram/types/__init__.py), which builds every validator at
once. Its models say `defer_build=True`, but an explicit `model_rebuild()` builds
regardless, and there is no supported way to hand pydantic a namespace for a
later build. So this patches pydantic's *private* rebuild hook: the namespace
aiogram passes is remembered instead of used, and when pydantic builds a model on
first use (its mock validator calls `model_rebuild()` without a namespace) the
remembered one is passed. Import this before the first `import aiogram`
(bot/entry/__init__.py does, so every entry point has it).

Measured with bench/lazy_models.py (median of 5 fresh processes importing
`bot.entry.app`, then validating one group message Update; aiogram 3.31.0, pydantic
2.13.5, CPython 3.11): 108 MB resident with this module, 215 MB without it;
103 MB saved (112 MB after the first update with it, 215 MB without).

Guarded: tests/test_lazy_models.py fails when an aiogram or pydantic release
changes what this relies on (the hook's signature, aiogram's eager rebuild, a
deferred type building and validating on first use), and pyproject.toml bounds
both to the releases tested. Should the hook's signature change anyway, nothing
is patched and aiogram builds everything at import as it would without this.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel

# The hook and the parameters this relies on (pydantic 2.7 through 2.13 have them).
EXPECTED_PARAMETERS = ("cls", "force", "raise_errors", "_parent_namespace_depth", "_types_namespace")

_original = vars(BaseModel)["model_rebuild"].__func__  # the classmethod's function, not a bound method
_namespace: dict[str, Any] = {}  # the one namespace aiogram builds its types with


def _lazy_rebuild(cls: type[BaseModel], /, *args: Any, _types_namespace: Any = None, **kwargs: Any) -> Any:
    aiogram = cls.__module__.startswith("aiogram.")
    if _types_namespace is not None and aiogram and not cls.__pydantic_complete__:
        if cls.__module__.startswith("aiogram.types."):
            _namespace.update(_types_namespace)  # aiogram's eager rebuild at import: build on first use
            return None
    if _types_namespace is None and aiogram and _namespace:
        # a first use (or an aiogram method whose fields hold deferred types): build with that namespace
        _types_namespace = _namespace
    return _original(cls, *args, _types_namespace=_types_namespace, **kwargs)


def hook_matches() -> bool:
    """Whether pydantic's rebuild hook still takes what `_lazy_rebuild` passes on."""
    return tuple(inspect.signature(_original).parameters) == EXPECTED_PARAMETERS


def patched() -> bool:
    return getattr(vars(BaseModel)["model_rebuild"].__func__, "_pbxbot_lazy", False)


if hook_matches() and not patched():
    setattr(_lazy_rebuild, "_pbxbot_lazy", True)  # noqa: B010  (a mark on the function, read by patched())
    setattr(BaseModel, "model_rebuild", classmethod(_lazy_rebuild))  # noqa: B010  (mypy refuses a method's assignment)
