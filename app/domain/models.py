"""Validated job input (`JobSpec`) and the pure pieces of a job document. No I/O here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .retry import RetryConfig
from .userjson import UserDict, check_json

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"
check_keys = check_json  # handler results and progress data obey the same rules (app/worker, app/context.py)


DEBOUNCE_MAX_SECONDS = 86_400.0  # a window, and its max_wait, last at most a day


class Debounce(BaseModel):
    """`JobSpec.debounce`: submits with the same key (per tenant) inside the window replace
    the waiting job's parameters and push its start back (docs/limits.md, "Debounce")."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=200, description="per tenant, like dedupe_key")
    seconds: float = Field(gt=0, le=DEBOUNCE_MAX_SECONDS, description="the start is this long after the latest submit")
    max_wait: float | None = Field(
        None, gt=0, le=DEBOUNCE_MAX_SECONDS, description="at most this long after the first submit; at least seconds"
    )
    follower: bool = Field(False, description="while the key's job has started, one more job may wait behind it")

    @field_validator("max_wait")
    @classmethod
    def _after_seconds(cls, v: float | None, info: ValidationInfo) -> float | None:
        seconds = info.data.get("seconds")
        if v is not None and seconds is not None and v < seconds:
            raise ValueError("max_wait must be at least seconds")
        return v


class JobSpec(BaseModel):
    """What a client may say about a job (seed 001's `AsyncJob`, plus scheduling and dedupe).
    Give `run_at` or `delay_seconds`, not both."""

    # `_one_delay`'s rule, said in the schema too, so clients read it in /openapi.json.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {"required": ["run_at", "delay_seconds"]}})

    engine: str = Field(pattern=NAME_PATTERN)
    operation: str = Field(pattern=NAME_PATTERN)
    parameters: UserDict = Field(default_factory=dict)
    priority: int = Field(5, ge=1, le=10, description="1 is highest, 10 lowest")
    name: str | None = Field(None, max_length=200)
    retry_config: RetryConfig | None = None
    run_at: datetime | None = Field(None, description="when to run; not with delay_seconds")
    delay_seconds: float | None = Field(None, ge=0, le=366 * 86_400, description="seconds from now; not with run_at")
    timeout_seconds: float | None = Field(None, gt=0, le=7 * 86_400)
    dedupe_key: str | None = Field(None, min_length=1, max_length=200)
    debounce: Debounce | None = Field(None, description="not with dedupe_key, run_at or delay_seconds")

    @field_validator("run_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v

    @field_validator("debounce")
    @classmethod
    def _debounce_alone(cls, v: Debounce | None, info: ValidationInfo) -> Debounce | None:
        if v is None:
            return v
        # Workflow steps and schedule templates are JobSpecs too; they are never debounced.
        if cls is not JobSpec:
            raise ValueError("only a job submitted on its own can be debounced")
        if any(info.data.get(f) is not None for f in ("dedupe_key", "run_at", "delay_seconds")):
            raise ValueError("debounce sets the start itself: give it without dedupe_key, run_at or delay_seconds")
        return v

    @model_validator(mode="after")
    def _one_delay(self) -> JobSpec:
        if self.run_at is not None and self.delay_seconds is not None:
            raise ValueError("give run_at or delay_seconds, not both")
        return self


def tenant_of(owner: str | None) -> str:
    """The tenant in an owner stamp `<tenant>/<user>`; the bootstrap admin's is `default`."""
    return owner.split("/", 1)[0] if owner and "/" in owner else "default"


# Fields a new job leaves out while they are empty (None, False or []): readers use
# `.get`, and `JobOut` fills them in. On SecantusDB every transition decodes, diffs and
# re-encodes the whole document, so a job born at half the size drains ~10 % faster
# (docs/benchmarks.md).
SPARSE_FIELDS = frozenset(
    {
        "name",
        "queued_at",
        "run_at",
        "started_at",
        "completed_at",
        "execution_time_ms",
        "result",
        "last_error",
        "errors",
        "timeout_seconds",
        "depends_on",
        "workflow_id",
        "step_key",
        "dedupe_key",
        "debounce_key",
        "debounce_deadline",
        "cancel_requested",
    }
)


def new_job_document(
    spec: JobSpec,
    *,
    job_id: str,
    owner: str,
    now: datetime,
    retry: RetryConfig | dict,
    workflow_id: str | None = None,
    depends_on: list[str] | None = None,
    step_key: str | None = None,
) -> dict[str, Any]:
    """The document for a freshly accepted job, in `pending`, `scheduled` or `queued`.
    The store adds `seq` to queued ones."""
    from datetime import timedelta

    from .states import JobStatus

    run_at = spec.run_at or (now + timedelta(seconds=spec.delay_seconds) if spec.delay_seconds else None)
    d = spec.debounce
    if d is not None:  # the window opens: a later submit with the key may move run_at, up to the deadline
        run_at = now + timedelta(seconds=d.seconds)
    if depends_on:
        status = JobStatus.PENDING
    elif run_at is not None and run_at > now:
        status = JobStatus.SCHEDULED
    else:
        status = JobStatus.QUEUED
    doc: dict[str, Any] = {
        "_id": job_id,
        "engine": spec.engine,
        "operation": spec.operation,
        "parameters": spec.parameters,
        "priority": spec.priority,
        "name": spec.name,
        "status": status.value,
        "owner": owner,
        "tenant": tenant_of(owner),
        "created_at": now,
        "queued_at": now if status == JobStatus.QUEUED else None,
        "run_at": run_at,
        "started_at": None,
        "completed_at": None,
        "execution_time_ms": None,
        "result": None,
        "last_error": None,
        "errors": [],
        "attempt": 0,
        "retry_count": 0,
        "retry_config": retry if isinstance(retry, dict) else retry.model_dump(),
        "timeout_seconds": spec.timeout_seconds,
        "progress": {"percent": 0.0, "stage": None, "data": {}},
        "depends_on": depends_on or [],
        "workflow_id": workflow_id,
        "step_key": step_key,
        "dedupe_key": spec.dedupe_key,
        "debounce_key": f"{tenant_of(owner)}:{d.key}" if d else None,
        "debounce_deadline": now + timedelta(seconds=d.max_wait) if d and d.max_wait else None,
        "cancel_requested": False,
    }
    return {k: v for k, v in doc.items() if k not in SPARSE_FIELDS or not (v is None or v is False or v == [])}
