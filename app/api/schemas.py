"""Response models of the REST API, and the conversion from stored documents."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema, field_validator, model_validator

from ..domain.flowsteps import iso
from ..domain.limitkeys import check_weight, parse_key_spec
from ..domain.models import NAME_PATTERN
from ..domain.rates import MAX_BURST, parse_rate
from ..domain.redact import redact
from ..domain.retry import RetryConfig
from ..domain.states import JobStatus

# Every timestamp in an API answer: milliseconds, always (MongoDB keeps no more), so a
# stamp on a whole second is `...:08.000Z`, never `...:08Z`.
Stamp = Annotated[
    datetime,
    PlainSerializer(iso, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class Progress(BaseModel):
    percent: float = 0.0
    stage: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class JobError(BaseModel):
    code: str
    message: str
    attempt: int | None = None
    at: Stamp | None = None
    worker: str | None = None


# What a handler or its caller wrote freely: secrets (a URL's password in an error message) may be in it.
REDACTED = ("result", "last_error", "errors", "progress", "cancel_reason", "name")


class JobUsage(BaseModel):
    tokens_in: float = 0
    tokens_out: float = 0
    cost: float = 0
    counters: dict[str, float] = Field(default_factory=dict)


class JobOut(BaseModel):
    id: str
    engine: str
    operation: str
    name: str | None = None
    status: JobStatus
    priority: int
    parameters: dict[str, Any]
    owner: str | None = None
    created_at: Stamp
    queued_at: Stamp | None = None
    run_at: Stamp | None = None
    started_at: Stamp | None = None
    completed_at: Stamp | None = None
    execution_time_ms: int | None = None
    result: Any = None
    last_error: JobError | None = None
    errors: list[JobError] = Field(default_factory=list)
    attempt: int = 0
    retry_count: int = 0
    retry_config: RetryConfig
    progress: Progress
    timeout_seconds: float | None = None
    dedupe_key: str | None = None
    depends_on: list[str] = Field(default_factory=list)
    workflow_id: str | None = None
    step_key: str | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    lease_owner: str | None = None
    lease_expires_at: Stamp | None = None
    usage: JobUsage | None = Field(None, description="what its attempts reported with ctx.usage, summed")
    backpressure_count: int = Field(0, description="times the provider pushed it back (RateLimited), uncharged")
    why: dict | None = Field(None, description="why a job that is not running yet waits: reasons as data")

    @classmethod
    def of(cls, doc: dict, **extra) -> JobOut:
        fields = {k: v for k, v in doc.items() if k in cls.model_fields and k != "id"}
        fields["parameters"] = redact(fields.get("parameters") or {})
        for f in REDACTED:
            if f in fields:
                fields[f] = redact(fields[f])
        return cls(id=doc["_id"], **fields, **extra)


class SubmitOut(JobOut):
    deduplicated: bool = Field(False, description="true when an existing live job with this dedupe_key was returned")
    debounced: bool = Field(
        False, description="true when a waiting job with this debounce key took these parameters and a later run_at"
    )


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as `cursor` to get the next page")


class History(BaseModel):
    total: int
    counts: dict[str, int]
    success_rate: float | None
    avg_execution_time_ms: float | None


class KeyOut(BaseModel):
    key: str = Field(description="`<tenant>/<value>`")
    limit: str = Field(description="`concurrency`, `rate` or `held` (provider back-pressure)")
    running: int
    until: Stamp | None = Field(None, description="its next slot (rate) or the hold's end")


class QueueOut(BaseModel):
    name: str
    running: int = Field(description="jobs running: the caller's tenant's, or every tenant's for the bootstrap admin")
    queued: int = Field(description="jobs queued, counted like `running`")
    max_concurrent_jobs: int = Field(description="the engine's deployment-wide limit")
    paused: bool = Field(description="the whole engine is paused (by the bootstrap admin)")
    tenant_paused: bool = Field(False, description="the caller's tenant paused its own work on this engine")
    oldest_queued_age_seconds: float | None = None
    held_until: Stamp | None = Field(
        None,
        description="provider back-pressure holds this engine until then: the whole engine, or "
        "(for a tenant) its own key; null when nothing holds it",
    )
    held_key: str | None = Field(None, description="the held key (`tenant:<name>`), null for the whole engine")
    budget_reached: bool = Field(
        False, description="the caller's tenant spent its cost budget: its queued jobs here wait (docs/limits.md)"
    )
    budget_until: Stamp | None = Field(None, description="when the reached budget period rolls over")
    rate: str | None = Field(None, description="the engine's rate limit (`60/min`), across every worker; null: none")
    burst: int | None = Field(None, description="the rate limit's burst")
    key: str | None = Field(None, description="what the per-key limits count by (`params.account`); null: none")
    key_rate: str | None = Field(None, description="each key's rate limit, across every worker")
    key_burst: int | None = Field(None, description="each key's burst")
    key_concurrency: int | None = Field(None, description="jobs running at once for each key")
    keys_at_limit: list[KeyOut] = Field(
        default_factory=list,
        description="limit keys with queued jobs that may not start now (the caller's tenant's own, every "
        "tenant's for the bootstrap admin)",
    )
    weights: dict[str, float] | None = Field(
        None, description="tenants' claim weights (the bootstrap admin sees all; a tenant only its own)"
    )


class QueueStatus(BaseModel):
    queues: list[QueueOut]


class LimitsIn(BaseModel):
    """Any of these; a field left out is kept, and `null` clears a limit (`key: null` clears
    every per-key limit). docs/limits.md, "Rate limits" and "Per-key limits"."""

    model_config = ConfigDict(extra="forbid")
    max_concurrent_jobs: int | None = Field(None, ge=1, le=100_000)
    rate: str | None = Field(None, description="starts per period across every worker: `N/s`, `N/min` or `N/h`")
    burst: int | None = Field(
        None, ge=1, le=MAX_BURST, description="starts allowed at once (default: one period's worth, at most 100)"
    )
    key: str | None = Field(
        None, description="what per-key limits count by: `tenant`, `owner` or `params.<path>` (within each tenant)"
    )
    key_rate: str | None = Field(None, description="starts per period for each key, across every worker")
    key_burst: int | None = Field(None, ge=1, le=MAX_BURST, description="each key's burst")
    key_concurrency: int | None = Field(None, ge=1, le=100_000, description="jobs running at once for each key")
    weights: dict[str, float | None] | None = Field(
        None, description="tenants' shares of the engine's claims, by weight (default 1); `null` removes one"
    )

    @field_validator("rate", "key_rate")
    @classmethod
    def _rate(cls, v: str | None) -> str | None:
        if v is not None:
            parse_rate(v)
        return v

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return None if v is None else parse_key_spec(v)

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict | None) -> dict | None:
        if v is None:
            raise ValueError("must be an object of tenant: weight")
        if len(v) > 1000:
            raise ValueError("at most 1000 tenants at once")
        for tenant, w in v.items():
            if not re.match(NAME_PATTERN, tenant):
                raise ValueError(f"{tenant[:60]!r} is not a tenant name")
            check_weight(tenant, w)
        return v

    @model_validator(mode="after")
    def _some(self) -> LimitsIn:
        if not self.model_fields_set:
            raise ValueError(
                "give max_concurrent_jobs, rate, burst, key, key_rate, key_burst, key_concurrency or weights"
            )
        return self


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None
    position: dict[str, int] | None = Field(
        None, description="a body that is not JSON: where it stops being JSON (`line`, `column`, `character`)"
    )
    details: dict[str, Any] | None = None
    errors: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    """Every 4xx and 5xx answer has this shape (app/api/errors.py)."""

    error: ErrorBody


ERROR_RESPONSES = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "the body could not be read (e.g. JSON nested too deeply)"),
        (401, "missing or invalid bearer token"),
        (403, "the caller's role does not allow this"),
        (404, "no such resource, or not the caller's to see"),
        (409, "the resource is not in a state that allows this"),
        (413, "the body is over the size cap"),
        (422, "the request failed validation; `field` names the problem"),
        (429, "rate limit or quota reached; see Retry-After"),
    )
}


def error_responses(*codes: int) -> dict:
    """The documented error answers for these status codes only."""
    return {c: ERROR_RESPONSES[c] for c in codes}


class UsageRow(BaseModel):
    key: Any = Field(description="the group: a tenant, engine, day (YYYY-MM-DD), job id or workflow id (null: none)")
    attempts: int = Field(description="attempts that reported usage")
    tokens_in: float
    tokens_out: float
    cost: float
    counters: dict[str, float] = Field(default_factory=dict, description="the handlers' own counters, summed")


class UsageOut(BaseModel):
    group_by: str
    start: date | None = Field(None, alias="from")
    end: date | None = Field(None, alias="to")
    rows: list[UsageRow]

    model_config = {"populate_by_name": True, "serialize_by_alias": True}
