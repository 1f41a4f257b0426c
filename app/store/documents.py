"""Typed documents at the store's edge: what a job document in `jobs` holds, and the few
derived values every collaborator needs (its band, its lease fields).

A job document is a `JobDoc`. Fields in `SPARSE_FIELDS` (app/domain/models.py) are left out
while empty, so readers use `.get` for those; every other field is always present on a
document written by this version (older documents were upgraded at start-up, see
`JobQueries.ensure_indexes`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NotRequired, TypedDict

import bson

from .engines import band

LEASE_FIELDS = ("lease_owner", "lease_token", "lease_expires_at")
"""Stamped by a claim, removed by every move out of `running`."""


class Progress(TypedDict):
    percent: float
    stage: str | None
    data: dict[str, Any]


class ErrorEntry(TypedDict):
    code: str
    message: str
    attempt: int
    at: datetime | None
    worker: str | None


class JobDoc(TypedDict):
    _id: str
    engine: str
    operation: str
    parameters: dict[str, Any]
    priority: int
    status: str  # a JobStatus value
    owner: str
    tenant: str
    created_at: datetime
    attempt: int
    retry_count: int
    retry_config: dict[str, Any]
    progress: Progress
    seq: NotRequired[int]  # set whenever the job enters queued
    lane: NotRequired[int]  # its limit key's lane (app/domain/limitkeys.py); absent: lane 0
    limit_key: NotRequired[str]  # that key's value, as shown in "why"
    queued_at: NotRequired[datetime]
    run_at: NotRequired[datetime | None]
    started_at: NotRequired[datetime | None]
    completed_at: NotRequired[datetime | None]
    execution_time_ms: NotRequired[int | None]
    result: NotRequired[Any]
    last_error: NotRequired[ErrorEntry | None]
    errors: NotRequired[list[ErrorEntry]]
    timeout_seconds: NotRequired[float | None]
    name: NotRequired[str | None]
    dedupe_key: NotRequired[str | None]
    cancel_requested: NotRequired[bool]
    cancel_reason: NotRequired[str]
    stop_reason: NotRequired[str]  # why a running job was asked to stop, until it has
    lease_owner: NotRequired[str]
    lease_token: NotRequired[str]
    lease_expires_at: NotRequired[datetime]
    finished_token: NotRequired[str]  # the lease token that made it terminal
    expires_at: NotRequired[datetime]  # retention, or the UNSETTLED mark of a step
    # workflow steps
    workflow_id: NotRequired[str]
    step_key: NotRequired[str]
    depends_on: NotRequired[list[str]]
    parent_ids: NotRequired[list[str]]
    dependents: NotRequired[list[str]]
    waiting_on: NotRequired[dict[str, int]]
    ord: NotRequired[int]


MAX_BATCH_BYTES = 8 * 1024 * 1024
"""Most encoded bytes of values one command carries: a command is a BSON document, and
MongoDB refuses one over 16 MiB (each result may be up to `MAX_RESULT_BYTES`, 12 MiB)."""


def bson_size(value: Any) -> int:
    """`value`'s encoded size in BSON (as a document's field)."""
    return len(bson.encode({"v": value}))


def by_size(items: list, size, limit: int = MAX_BATCH_BYTES):
    """`items` in consecutive runs whose `size(item)` adds up to at most `limit` (an item
    larger than `limit` goes alone)."""
    run, total = [], 0
    for item in items:
        n = size(item)
        if run and total + n > limit:
            yield run
            run, total = [], 0
        run.append(item)
        total += n
    if run:
        yield run


BAND_FIELDS = {"engine": 1, "priority": 1, "tenant": 1, "lane": 1}  # what `band_of` reads: project all of them


def band_of(job: JobDoc | dict) -> str:
    """The (priority, tenant, lane) band a job is numbered and claimed in."""
    return band(job["priority"], job["tenant"], job.get("lane", 0))


def is_step(job: JobDoc | dict) -> bool:
    return bool(job.get("workflow_id"))


def error_entry(code: str, message: str, attempt: int, at: datetime | None, worker: str | None = None) -> ErrorEntry:
    return {"code": code, "message": message[:2000], "attempt": attempt, "at": at, "worker": worker}
