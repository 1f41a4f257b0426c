"""The handler registry: `@handler(engine=..., operation=...)` and module loading.

Invariant: one function per (engine, operation). A second, different function for the same
pair fails at import, so a misconfigured deployment fails at start-up, not at run time.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .context import JobContext
from .domain.models import NAME_PATTERN
from .errors import ValidationFailed

HandlerFn = Callable[[JobContext], Awaitable[Any]]
_NAME = re.compile(NAME_PATTERN)


@dataclass(frozen=True)
class Handler:
    engine: str
    operation: str
    fn: HandlerFn
    description: str


_registry: dict[tuple[str, str], Handler] = {}


class DuplicateHandler(RuntimeError):
    pass


class HandlerModuleError(RuntimeError):
    """An extra handler module could not be imported; the message is one line."""


def handler(*, engine: str, operation: str) -> Callable[[HandlerFn], HandlerFn]:
    if not _NAME.match(engine) or not _NAME.match(operation):
        raise ValueError(f"bad handler name {engine}.{operation}: use letters, digits, '_' and '-'")

    def register(fn: HandlerFn) -> HandlerFn:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {engine}.{operation} must be an async function")
        key = (engine, operation)
        old = _registry.get(key)
        if old is not None and (old.fn.__module__, old.fn.__qualname__) != (fn.__module__, fn.__qualname__):
            raise DuplicateHandler(
                f"{engine}.{operation} is registered twice: {old.fn.__module__}.{old.fn.__qualname__} "
                f"and {fn.__module__}.{fn.__qualname__}"
            )
        _registry[key] = Handler(engine, operation, fn, (inspect.getdoc(fn) or "").split("\n")[0])
        return fn

    return register


def get(engine: str, operation: str) -> Handler | None:
    return _registry.get((engine, operation))


def require(engine: str, operation: str, field: str = "operation") -> Handler:
    h = get(engine, operation)
    if h is None:
        raise ValidationFailed(
            f"no handler is registered for {engine}.{operation}", field=field, engine=engine, operation=operation
        )
    return h


def all_handlers() -> list[Handler]:
    return sorted(_registry.values(), key=lambda h: (h.engine, h.operation))


def load(extra_modules: list[str] | None = None) -> None:
    """Import the built-in `handlers` package and any extra modules, which register on import.

    Extra modules are looked up in the current directory first, as uvicorn and celery do,
    so `--handlers my_handlers` finds `./my_handlers.py`."""
    importlib.import_module("handlers")
    if extra_modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for mod in extra_modules or []:
        try:
            importlib.import_module(mod)
        except DuplicateHandler:
            raise
        except Exception as exc:
            raise HandlerModuleError(
                f"cannot import handler module {mod!r} (from {os.getcwd()}): {type(exc).__name__}: {exc}"
            ) from exc
