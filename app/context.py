"""What a handler sees: `JobContext` (progress, cancellation, usage, adding steps to its
workflow), and the exceptions it may raise on purpose: `Retry`, `PermanentError`,
`RateLimited`; `ctx.add_steps` raises `StepsRejected`."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .domain.models import check_keys

ProgressSink = Callable[[float, "str | None", dict], Awaitable[None]]
UsageSink = Callable[[dict[str, float]], Awaitable[None]]
SpawnSink = Callable[[list[dict]], Awaitable[dict[str, str]]]
HOLD_KEY = re.compile(r"^(tenant:[A-Za-z0-9_-]{1,64}|key)$")
COUNTER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
MAX_HOLD_SECONDS = 3600.0  # a malformed Retry-After must not stop an engine for a day


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


class StepsRejected(PermanentError):
    """`ctx.add_steps` refused the steps as `POST /jobs/workflows/{id}/jobs` refuses them with
    a 422 (`field` names the problem, e.g. `jobs[0].depends_on`), or the job is no workflow
    step, or its workflow has finished. Uncaught, it fails the job without a retry: the
    same steps would be refused again."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__("steps_rejected", message)
        self.field = field


class RateLimited(Exception):
    """Raise when the provider pushes back (a 429 with `Retry-After`): the job goes back to
    the queue without being charged an attempt, and no worker claims the engine's jobs (or,
    with `key="tenant:<name>"`, that tenant's jobs in the engine, or with `key="key"`, the
    jobs of this job's limit key, docs/limits.md) for `retry_after` seconds
    (at most MAX_HOLD_SECONDS). A bad `retry_after` or `key` raises ValueError here."""

    def __init__(
        self, retry_after: float, key: str | None = None, reason: str = "rate limited by the provider"
    ) -> None:
        super().__init__(reason)
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float) or not math.isfinite(retry_after):
            raise ValueError("retry_after must be a finite number of seconds")
        if retry_after < 0:
            raise ValueError("retry_after must not be negative")
        if key is not None and not (isinstance(key, str) and HOLD_KEY.match(key)):
            raise ValueError("key must be None (the whole engine), 'tenant:<name>' or 'key' (the job's limit key)")
        self.retry_after = min(float(retry_after), MAX_HOLD_SECONDS)
        self.key = key
        self.reason = reason


def check_usage(tokens_in: Any, tokens_out: Any, cost: Any, counters: dict[str, Any]) -> dict[str, float]:
    """The usage one `ctx.usage` call reports, validated; zeros left out."""
    values = {"tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost, **counters}
    out: dict[str, float] = {}
    for name, v in values.items():
        if not COUNTER_NAME.match(name):
            raise ValueError(f"usage counter name {name!r} must be an identifier")
        if name in ("tokens_in", "tokens_out") and name in counters:
            raise ValueError(f"{name} is not a counter")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ValueError(f"usage {name} must be a number, not {type(v).__name__}")
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"usage {name} must be finite and not negative")
        if name in ("tokens_in", "tokens_out") and v != int(v):
            raise ValueError(f"usage {name} must be a whole number")
        if v:
            out[name] = v
    return out


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
    _usage_sink: UsageSink | None = None
    _spawn: SpawnSink | None = None

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

    async def usage(self, tokens_in: int = 0, tokens_out: int = 0, cost: float = 0.0, **counters: float) -> None:
        """Report usage of a paid service; calls add up. Values are numbers, finite and not
        negative, counter names identifiers: anything else raises ValueError and records
        nothing. Kept per attempt and summed on the job (docs/limits.md)."""
        values = check_usage(tokens_in, tokens_out, cost, counters)
        if values and self._usage_sink is not None:
            await self._usage_sink(values)

    async def add_steps(self, steps: list[Any]) -> dict[str, str]:
        """Add steps to this job's workflow while it runs (docs/map-steps.md): each a dict (or
        a `StepSpec`) as `POST /jobs/workflows/{id}/jobs` takes them, validated the same way.
        Steps that depend on this one also wait for these, and get their results in
        `ctx.parents`. Calling it again on a later attempt with the same keys adds nothing
        twice. Returns `{key: job id}`; raises `StepsRejected` (a `PermanentError`)."""
        if self.workflow_id is None:
            raise StepsRejected(
                f"job {self.job_id} is not a workflow step: only a step can add steps to its workflow",
                field="workflow_id",
            )
        if not isinstance(steps, list) or not steps:
            raise StepsRejected("add_steps takes a non-empty list of steps", field="jobs")
        if self._spawn is None:
            raise StepsRejected("adding steps is not available to this handler's context")
        return await self._spawn(
            [s.model_dump(mode="json", exclude_unset=True) if hasattr(s, "model_dump") else s for s in steps]
        )
