"""The one place that maps what a handler did to a job transition.

`classify` turns a handler's return or exception into an `Outcome`; `apply` performs the
matching guarded transition. A `LeaseLost` from the store propagates: the caller logs it
and writes nothing else.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bson.errors import InvalidDocument

from .. import metrics
from ..context import PermanentError, RateLimited, Retry
from ..domain.models import check_keys
from ..domain.retry import RetryConfig
from ..domain.states import JobStatus
from ..errors import SwitchyardError
from ..store.bands import lane_hold_key, tenant_key
from ..store.documents import bson_size, error_entry
from ..store.lifecycle import EXIT_TARGETS, Exit

MAX_RESULT_BYTES = 12 * 1024 * 1024  # encoded as BSON: a job document must stay under MongoDB's 16 MiB


@dataclass
class Success:
    result: Any


@dataclass
class Failure:
    code: str
    message: str
    permanent: bool = False
    retry_after: float | None = None
    explicit_retry: bool = False


@dataclass
class Cancelled:
    reason: str


@dataclass
class Released:
    """Graceful shutdown: hand the job back without counting the attempt."""


@dataclass
class Held:
    """The provider pushed back (`RateLimited`): hold the engine or key, requeue uncharged."""

    retry_after: float
    key: str | None
    reason: str


@dataclass
class Lost:
    """The lease is gone (rescued or taken over): write nothing."""


Outcome = Success | Failure | Cancelled | Released | Held | Lost


def classify_result(result: Any) -> Outcome:
    try:
        check_keys(result, "result")
        json.dumps(result)  # a result is JSON: clients read it so
        size = bson_size(result)
    except (TypeError, ValueError, OverflowError, InvalidDocument) as exc:
        return Failure("bad_result", f"handler returned a result that cannot be stored: {exc}", permanent=True)
    if size > MAX_RESULT_BYTES:
        return Failure("result_too_large", f"result is {size} bytes; the cap is {MAX_RESULT_BYTES}", permanent=True)
    return Success(result)


def classify_exception(exc: BaseException) -> Outcome:
    if isinstance(exc, RateLimited):
        return Held(exc.retry_after, exc.key, exc.reason)
    if isinstance(exc, Retry):
        return Failure("retry", exc.reason, retry_after=exc.after, explicit_retry=True)
    if isinstance(exc, PermanentError):
        return Failure(exc.code, exc.message, permanent=True)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Failure("timeout", str(exc) or "timed out")
    return Failure(type(exc).__name__, str(exc) or repr(exc))


async def apply(store, job: dict, token: str, outcome: Outcome, execution_ms: int, worker: str, leave=None) -> str:
    """Perform the move for `outcome`; returns the job's new status ("" for Lost). `leave`
    batches moves out of running (`batching.Exits`); it defaults to the lifecycle's own.
    A database error is retried a few times: every move is fenced by the lease and stamps
    `finished_token`, so a write that landed although its reply was lost is recognised as
    ours by the replay, and a brief fault no longer leaves the job running until rescued."""
    for delay in (0.1, 0.5, 1.0, None):
        try:
            return await _apply(store, job, token, outcome, execution_ms, worker, leave)
        except SwitchyardError:  # LeaseLost and the like: an answer, not a fault
            raise
        except Exception:
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def exit_for(store, job: dict, token: str, outcome: Outcome, execution_ms: int, worker: str) -> Exit | None:
    """The move out of `running` that `outcome` calls for; None for Released, Held and Lost."""
    match outcome:
        case Success(result=result):
            return Exit(job, token, "complete", result=result, execution_ms=execution_ms)
        case Cancelled(reason=reason):
            return Exit(job, token, "stop", reason=reason, execution_ms=execution_ms)
        case Released() | Held() | Lost():
            return None
        case Failure() as f:
            retry = RetryConfig(**job["retry_config"])
            attempt = job["attempt"]
            now = store.clock.now()
            entry = error_entry(f.code, f.message, attempt, now, worker)
            retryable = not f.permanent and (f.explicit_retry or retry.retries(f.code))
            if not retryable or attempt >= retry.max_attempts:
                if retryable:
                    entry["message"] += f" (no attempts left: {attempt}/{retry.max_attempts})"
                return Exit(job, token, "fail", error=entry, execution_ms=execution_ms)
            delay = f.retry_after if f.retry_after is not None else retry.delay(job.get("retry_count", 0))
            # counted from the failure, not from when a batch of exits is written
            return Exit(job, token, "backoff", error=entry, run_at=now + timedelta(seconds=delay))
    raise TypeError(f"unknown outcome {outcome!r}")


async def _apply(store, job: dict, token: str, outcome: Outcome, execution_ms: int, worker: str, leave) -> str:
    if isinstance(outcome, Released):
        await store.lifecycle.release(job, token)
        return JobStatus.QUEUED.value
    if isinstance(outcome, Held):
        # The hold lands before the job is back in the queue, so no worker claims it (or
        # another job of the engine or key) in between.
        until = store.clock.now() + timedelta(seconds=outcome.retry_after)
        key = outcome.key
        if key == "key":  # the job's limit key (docs/limits.md): its lane, else its tenant
            key = lane_hold_key(job["lane"]) if job.get("lane") else tenant_key(job["tenant"])
        await store.engines.hold(job["engine"], key, until)
        note = {"at": store.clock.now(), "until": until, "key": key, "reason": outcome.reason}
        await store.lifecycle.hold(job, token, note)
        return JobStatus.QUEUED.value
    e = exit_for(store, job, token, outcome, execution_ms, worker)
    if e is None:
        return ""
    if leave is None:
        await store.lifecycle.leave(e)
    else:
        await leave(e)
    status = EXIT_TARGETS[e.move].value
    metrics.job_outcome(job["engine"], status, execution_ms)
    return status
