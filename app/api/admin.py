"""The dead letter and operator endpoints: list failed jobs, retry one job or many by filter
(seed 004), and reset stuck jobs (seed 003). The moves themselves are the lifecycle's
(app/store/job_admin.py); this module owns their HTTP shape and who may call them.

Included in the app before `jobs.router`, whose `/api/v1/jobs/{job_id}/...` routes would
otherwise see `dead-letter` and `retry` as job ids. Listing and retrying one job need a
caller who may see the job; the bulk retry and the reset act on everyone's jobs and need
the admin role.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import metrics
from ..domain.models import NAME_PATTERN
from ..errors import Conflict, Forbidden, NotFound
from ..logs import get_logger
from .auth import Principal, audit, can_see, require_principal
from .jobs import ID_PATTERN, strict_query
from .schemas import JobOut, JobPage, Stamp

router = APIRouter(tags=["dead letter"])
CODE_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"


async def require_admin(who: Principal = Depends(require_principal)) -> Principal:
    if not who.is_global:  # these act on every tenant's jobs
        raise Forbidden("this endpoint needs the deployment's admin (SWITCHYARD_ADMIN_TOKEN)", field="Authorization")
    return who


def _aware(v: datetime | None) -> datetime | None:
    return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


class BulkRetryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str | None = Field(None, pattern=NAME_PATTERN)
    operation: str | None = Field(None, pattern=NAME_PATTERN)
    error_code: str | None = Field(None, pattern=CODE_PATTERN, description="the code of the job's last error")
    failed_after: Stamp | None = Field(None, description="failed at or after this time")
    failed_before: Stamp | None = Field(None, description="failed before this time")
    limit: int = Field(100, ge=1, le=10_000, description="retry at most this many jobs, oldest failures first")

    @model_validator(mode="after")
    def _window(self) -> BulkRetryIn:
        self.failed_after, self.failed_before = _aware(self.failed_after), _aware(self.failed_before)
        if self.failed_after and self.failed_before and self.failed_after >= self.failed_before:
            raise ValueError("failed_after must be before failed_before")
        return self


class BulkRetryOut(BaseModel):
    retried: int = Field(description="jobs moved back to queued")
    matched: int = Field(description="failed standalone jobs that matched the filter")
    skipped_dedupe: int = Field(0, description="not retried: another live job holds their dedupe_key")
    skipped_steps: int = Field(0, description="workflow steps that matched; retry their workflows instead")
    workflow_ids: list[str] = Field(default_factory=list, description="the workflows of those steps")


class ResetStuckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: str | None = Field(None, pattern=NAME_PATTERN)
    dry_run: bool = Field(False, description="report what would be done, change nothing")


class StuckJob(BaseModel):
    job_id: str
    engine: str
    workflow_id: str | None = None
    lease_owner: str | None = None
    lease_expires_at: Stamp | None = None
    attempt: int
    new_status: str = Field(description='queued, failed (no attempts left), or "" when it moved on meanwhile')


class ResetStuckOut(BaseModel):
    checked_at: Stamp
    dry_run: bool
    requeued: int
    failed: int
    jobs: list[StuckJob]


@router.get(
    "/api/v1/jobs/dead-letter",
    response_model=JobPage,
    dependencies=[strict_query("engine", "operation", "error_code", "cursor", "limit")],
)
async def dead_letter(
    request: Request,
    engine: str | None = Query(None, pattern=NAME_PATTERN),
    operation: str | None = Query(None, pattern=NAME_PATTERN),
    error_code: str | None = Query(None, pattern=CODE_PATTERN),
    cursor: str | None = Query(None, pattern=ID_PATTERN),
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(require_principal),
):
    """Failed jobs (the dead letter), newest first, with their error history. Kept for
    `SWITCHYARD_RETENTION_FAILED_SECONDS` after they failed."""
    docs, nxt = await request.app.state.store.job_admin.dead_letter(
        engine=engine, operation=operation, error_code=error_code, after=cursor, limit=limit, tenant=who.scope
    )
    return JobPage(jobs=[JobOut.of(d) for d in docs], next_cursor=nxt)


@router.post("/api/v1/jobs/retry", response_model=BulkRetryOut)
async def retry_many(
    request: Request, body: BulkRetryIn = Body(default_factory=BulkRetryIn), who: Principal = Depends(require_admin)
):
    """Retry failed jobs matching a filter, each with a fresh attempt budget."""
    out = await request.app.state.store.job_admin.retry_failed(**body.model_dump())
    await audit(request, who, "jobs.bulk_retry", None, filter=body.model_dump(mode="json"), retried=out["retried"])
    return BulkRetryOut(**out)


@router.post(
    "/api/v1/jobs/{job_id}/retry",
    response_model=JobOut,
    responses={409: {"description": "the job is not failed or cancelled, or is a workflow step"}},
)
async def retry_one(job_id: str, request: Request, who: Principal = Depends(require_principal)):
    """A failed or cancelled job goes back to queued with a fresh attempt budget; its error
    history stays. A workflow step is refused with 409: retry its workflow, which re-runs
    every failed step and the steps cancelled because of them."""
    store = request.app.state.store
    job = await store.jobs.get(job_id)
    if not can_see(who, job.get("owner")):
        raise NotFound(f"job {job_id!r} not found", field="job_id")
    if job.get("workflow_id"):
        wf = job["workflow_id"]
        raise Conflict(
            f"job {job_id} is step {job.get('step_key')!r} of workflow {wf}; retry the workflow with "
            f"POST /api/v1/jobs/workflows/{wf}/retry",
            field="workflow_id",
            workflow_id=wf,
            retry_url=f"/api/v1/jobs/workflows/{wf}/retry",
        )
    return JobOut.of(await store.job_admin.retry_job(job_id))


@router.post("/api/v1/admin/jobs/reset-stuck", response_model=ResetStuckOut, tags=["admin"])
async def reset_stuck(
    request: Request, body: ResetStuckIn = Body(default_factory=ResetStuckIn), who: Principal = Depends(require_admin)
):
    """Running jobs whose lease has expired (their worker died or stalled) are requeued now,
    the attempt counted, or failed when they have no attempts left: what the rescuer in
    maintenance does every second, on demand, with a report."""
    store = request.app.state.store
    now = await store.clock.sync()
    jobs = await store.job_admin.reset_stuck(now, engine=body.engine, dry_run=body.dry_run)
    if not body.dry_run:
        for j in jobs:
            if j["new_status"]:
                metrics.job_rescued(j["engine"], j["new_status"])
        await audit(request, who, "jobs.reset_stuck", body.engine, jobs=[j["job_id"] for j in jobs][:100])
    return ResetStuckOut(
        checked_at=now,
        dry_run=body.dry_run,
        jobs=[StuckJob(**j) for j in jobs],
        requeued=sum(j["new_status"] == "queued" for j in jobs),
        failed=sum(j["new_status"] == "failed" for j in jobs),
    )


class CounterCorrection(BaseModel):
    engine: str
    counter: str = Field(description="`queued` (jobs counted as queued) or `running` (permits held)")
    was: int
    now: int


class ReconcileOut(BaseModel):
    corrections: list[CounterCorrection]


@router.post("/api/v1/admin/engines/reconcile", response_model=ReconcileOut, tags=["admin"])
async def reconcile(request: Request, who: Principal = Depends(require_admin)):
    """Re-derive every engine's counters from the jobs now, as maintenance does on a schedule
    (`SWITCHYARD_RECONCILE_INTERVAL_SECONDS`), and correct those that drifted."""
    store = request.app.state.store
    fixed = await store.engines.reconcile(store.jobs.count_queued)
    for c in fixed:
        metrics.COUNTER_CORRECTIONS.labels(c["engine"], c["counter"]).inc()
        get_logger("switchyard.api").warning("engine.counter_corrected", **c)
    await audit(request, who, "engines.reconcile", None, corrections=len(fixed))
    return ReconcileOut(corrections=[CounterCorrection(**c) for c in fixed])
