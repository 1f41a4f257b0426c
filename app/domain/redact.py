"""Redaction of secret parameters everywhere but the handler's own context.

A value is secret when its key is one of the configured names (`SWITCHYARD_SECRET_PARAM_NAMES`,
compared without case), or when it sits anywhere under a key named `secrets`. The stored job
keeps the real values (its handler needs them); API responses, templates, logs and messages
show `"***"` instead.
"""

from __future__ import annotations

from typing import Any

MASK = "***"
_names: frozenset[str] = frozenset({"api_key", "password", "secret", "token", "authorization"})


def configure(names: frozenset[str]) -> None:
    global _names
    _names = frozenset(n.lower() for n in names) | {"secrets"}


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and k.lower() in _names else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value
