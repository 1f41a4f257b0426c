"""What a handler sees: `JobContext`, and the two exceptions it may raise on purpose."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from app.domain.models import check_keys

ProgressSink = Callable[[float, "str | None", dict], Awaitable[None]]


class Retry(Exception):
    """Raise to retry the job later: after `after` seconds, or the back-off delay if None."""

    def __init__(self, after: float | None = None, reason: str = "retry requested by handler") -> None:
        super().__init__(reason)
        self.after = after
        self.reason = reason


class PermanentError(Exception):
    """Raise to fail the job at once, without retries."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code


@dataclass
class JobContext:
    job_id: str
    engine: str
    operation: str
    attempt: int
    params: dict[str, Any]
    parents: dict[str, Any] = field(default_factory=dict)
    workflow_id: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    _sink: ProgressSink | None = None
    _lease_token: str | None = None

    @property
    def lease_token(self) -> str | None:
        """The lease this attempt runs under (read-only): every write about it is fenced
        by this token, so a ledger can tell one attempt's run from another's."""
        return self._lease_token

    async def progress(self, percent: float, stage: str | None = None, data: dict | None = None) -> None:
        """Report progress (0–100). Raises ValueError on bad input; the write is fenced by
        the job's lease like every other transition."""
        percent = float(percent)
        if not 0 <= percent <= 100:
            raise ValueError("percent must be between 0 and 100")
        data = data or {}
        check_keys(data, "data")
        if self._sink is not None:
            await self._sink(percent, stage, data)
