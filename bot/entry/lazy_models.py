"""Build aiogram's pydantic models when first used, not all at import.

aiogram calls `model_rebuild()` on each of its ~300 Telegram types at import
time, which builds every validator at once: ~110 MB of resident memory in a
process that uses a dozen of them. Its models already say `defer_build=True`;
this keeps them deferred. The namespace aiogram passes is remembered, and when
pydantic builds a model on first use it calls `model_rebuild()` again, which
then gets that namespace. Import this before the first `import aiogram`
(bot/entry/__init__.py does, so every entry point has it).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

_original = BaseModel.model_rebuild.__func__  # type: ignore[attr-defined]
_namespace: dict[str, Any] = {}  # the one namespace aiogram builds its types with


def _lazy_rebuild(cls: type[BaseModel], *args: Any, _types_namespace: Any = None, **kwargs: Any) -> Any:
    aiogram = cls.__module__.startswith("aiogram.")
    if _types_namespace is not None and aiogram and not cls.__pydantic_complete__:
        if cls.__module__.startswith("aiogram.types."):
            _namespace.update(_types_namespace)  # aiogram's eager rebuild at import: build on first use
            return None
    if _types_namespace is None and aiogram and _namespace:
        # a first use (or an aiogram method whose fields hold deferred types): build with that namespace
        _types_namespace = _namespace
    return _original(cls, *args, _types_namespace=_types_namespace, **kwargs)


if not getattr(BaseModel.model_rebuild, "_pbxbot_lazy", False):
    _lazy_rebuild._pbxbot_lazy = True  # type: ignore[attr-defined]
    BaseModel.model_rebuild = classmethod(_lazy_rebuild)  # type: ignore[method-assign,assignment]
