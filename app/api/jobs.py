"""`/api/v1/jobs`: submit, status, cancel, list and history (seed 001)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Query, Request, Response

from .. import metrics, registry
from ..admission import Admission
from ..domain.models import NAME_PATTERN, JobSpec
from ..domain.states import JobStatus
from ..domain.userjson import label
from ..errors import ValidationFailed
from ..store.why import explain
from .auth import Principal, require_principal, visible
from .schemas import History, JobOut, JobPage, SubmitOut

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
# The submit alone, included first of all routers (app/main.py): its path is a literal no
# other route matches, and a request reaches it without trying every router before it.
submit_router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])
ID_PATTERN = r"^[0-9a-f]{24}$"


async def admit(request: Request, who: Principal, n: int) -> None:
    """Per-tenant limits on creating jobs, the same for REST and schedule ticks
    (app/admission.py): a token bucket shared by every process (429 with Retry-After), and
    a cap on queued jobs (429)."""
    await admission(request).jobs(who.scope, n)


def admission(request: Request) -> Admission:
    """This app's one `Admission` (it caches the quota's counts for the process)."""
    state = request.app.state
    if getattr(state, "admission", None) is None:
        state.admission = Admission(state.store, state.settings)
    return state.admission


def strict_query(*allowed: str):
    """Unknown query parameters are refused by name, so `status[$ne]=x` and `a.b=1` never
    pass silently."""

    async def check(request: Request) -> None:
        for key in request.query_params.keys():
            if key not in allowed:
                takes = f"it takes {', '.join(allowed)}" if allowed else "it takes none"
                raise ValidationFailed(f"unknown query parameter for this endpoint; {takes}", field=label(key))

    return Depends(check)


@submit_router.post(
    "/submit",
    status_code=201,
    response_model=SubmitOut,
    dependencies=[strict_query()],
    responses={
        200: {
            "model": SubmitOut,
            "description": "deduplicated (an existing live job) or debounced (its parameters replaced)",
        },
        409: {"description": "debounce: the key's job has started and debounce.follower is false"},
    },
)
async def submit(spec: JobSpec, request: Request, response: Response, who: Principal = Depends(require_principal)):
    registry.require(spec.engine, spec.operation)
    lifecycle = request.app.state.store.lifecycle
    if spec.debounce is None:
        await admit(request, who, 1)
        job, created = await lifecycle.submit(spec, owner=who.owner)
    else:
        # Admitted once the store knows what the submit does: a replacement adds no job.
        async def admit_debounced(new: bool) -> None:
            await (admit(request, who, 1) if new else admission(request).request(who.scope))

        job, created = await lifecycle.submit(spec, owner=who.owner, admit=admit_debounced)
    if not created:
        response.status_code = 200
    else:
        metrics.jobs_created([job["engine"]])
    debounced = spec.debounce is not None and not created
    return SubmitOut.of(job, deduplicated=not created and not debounced, debounced=debounced)


@router.get(
    "/", response_model=JobPage, dependencies=[strict_query("status", "engine", "workflow_id", "cursor", "limit")]
)
async def list_jobs(
    request: Request,
    status: JobStatus | None = None,
    engine: str | None = Query(None, pattern=NAME_PATTERN),
    workflow_id: str | None = Query(None, pattern=ID_PATTERN),
    cursor: str | None = Query(None, pattern=ID_PATTERN),
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(require_principal),
):
    docs, nxt = await request.app.state.store.jobs.list(
        status=status.value if status else None,
        engine=engine,
        workflow_id=workflow_id,
        tenant=who.scope,
        after=cursor,
        limit=limit,
    )
    return JobPage(jobs=[JobOut.of(d) for d in docs], next_cursor=nxt)


@router.get("/history", response_model=History, dependencies=[strict_query("hours", "engine")])
async def history(
    request: Request,
    hours: float | None = Query(None, gt=0, le=24 * 366),
    engine: str | None = Query(None, pattern=NAME_PATTERN),
    who: Principal = Depends(require_principal),
):
    since = datetime.now(UTC) - timedelta(hours=hours) if hours else None
    return History(**await request.app.state.store.jobs.history(since=since, engine=engine, tenant=who.scope))


@router.get("/{job_id}/status", response_model=JobOut, dependencies=[strict_query()])
async def status(job_id: str, request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    job = visible(who, await store.jobs.get(job_id), "job", "job_id")
    return JobOut.of(job, why=await explain(store, job))


@router.post("/{job_id}/cancel", response_model=JobOut, dependencies=[strict_query()])
async def cancel(job_id: str, request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    visible(who, await store.jobs.get(job_id), "job", "job_id")
    job = await store.lifecycle.cancel(job_id)
    metrics.job_outcome(job["engine"], job["status"], None)  # counts only a waiting job, cancelled at once
    return JobOut.of(job)
