"""The one place that maps what a handler did to a job transition.

`classify` turns a handler's return or exception into an `Outcome`; `apply` performs the
matching guarded transition. A `LeaseLost` from the store propagates: the caller logs it
and writes nothing else.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from app import metrics
from app.context import PermanentError, Retry
from app.domain.models import check_keys
from app.domain.retry import RetryConfig
from app.errors import SwitchyardError
from app.store.jobs import error_entry

MAX_RESULT_BYTES = 12 * 1024 * 1024  # a job document must stay under MongoDB's 16 MiB


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
class Lost:
    """The lease is gone (rescued or taken over): write nothing."""


Outcome = Success | Failure | Cancelled | Released | Lost


def classify_result(result: Any) -> Outcome:
    try:
        check_keys(result, "result")
        size = len(json.dumps(result))
    except (TypeError, ValueError) as exc:
        return Failure("bad_result", f"handler returned a result that cannot be stored: {exc}", permanent=True)
    if size > MAX_RESULT_BYTES:
        return Failure("result_too_large", f"result is {size} bytes; the cap is {MAX_RESULT_BYTES}", permanent=True)
    return Success(result)


def classify_exception(exc: BaseException) -> Outcome:
    if isinstance(exc, Retry):
        return Failure("retry", exc.reason, retry_after=exc.after, explicit_retry=True)
    if isinstance(exc, PermanentError):
        return Failure(exc.code, exc.message, permanent=True)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return Failure("timeout", str(exc) or "timed out")
    return Failure(type(exc).__name__, str(exc) or repr(exc))


async def apply(store, job: dict, token: str, outcome: Outcome, execution_ms: int, worker: str,
                complete=None) -> str:
    """Perform the transition for `outcome`; returns the job's new status ("" for Lost).
    `complete` may batch completions (see `completer.py`); it defaults to the store's.
    A database error is retried a few times: every transition is guarded by the lease, so
    a write that landed although its reply was lost makes the retry match nothing (a
    completion then finds its own `finished_token`), and a brief fault no longer leaves
    the job running until it is rescued and run again."""
    for delay in (0.1, 0.5, 1.0, None):
        try:
            return await _apply(store, job, token, outcome, execution_ms, worker, complete)
        except SwitchyardError:  # LeaseLost and the like: an answer, not a fault
            raise
        except Exception:
            if delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


async def _apply(store, job: dict, token: str, outcome: Outcome, execution_ms: int, worker: str, complete) -> str:
    jobs = store.jobs
    jid = job["_id"]
    match outcome:
        case Success(result=result):
            await (complete or jobs.complete)(jid, token, result, execution_ms)
            metrics.job_outcome(job["engine"], "completed", execution_ms)
            return "completed"
        case Cancelled(reason=reason):
            await jobs.cancel_running(jid, token, reason, step=bool(job.get("workflow_id")))
            metrics.job_outcome(job["engine"], "cancelled", execution_ms)
            return "cancelled"
        case Released():
            await jobs.release(jid, token, job["engine"], job["priority"], job.get("tenant", "default"))
            return "queued"
        case Lost():
            return ""
        case Failure() as f:
            retry = RetryConfig(**job["retry_config"])
            attempt = job["attempt"]
            entry = error_entry(f.code, f.message, attempt, store.clock.now(), worker)
            retryable = not f.permanent and (f.explicit_retry or retry.retries(f.code))
            if not retryable or attempt >= retry.max_attempts:
                if retryable:
                    entry["message"] += f" (no attempts left: {attempt}/{retry.max_attempts})"
                await jobs.fail(jid, token, entry, execution_ms, step=bool(job.get("workflow_id")))
                metrics.job_outcome(job["engine"], "failed", execution_ms)
                return "failed"
            delay = f.retry_after if f.retry_after is not None else retry.delay(job.get("retry_count", 0))
            await jobs.retry(jid, token, entry, delay)
            metrics.job_outcome(job["engine"], "scheduled", execution_ms)
            return "scheduled"
    raise TypeError(f"unknown outcome {outcome!r}")
