"""`POST /api/v1/jobs/submit/batch`: many jobs in one request (docs/api.md, "Batches").

All or nothing before anything is written: every job is validated (the same `JobSpec` as a
single submit, and a registered handler), and a refusal is one 422 whose `errors` name each
problem by index and field (`jobs.3.priority`, as the schema's own errors name it). Then the tenant is admitted for every job
of the batch at once (the rate limit charged per job, the quota checked for all: a refused
batch changes nothing), and the jobs are written with one insert (`Lifecycle.submit_many`).
The answer lists the jobs in the order given; a job whose `dedupe_key` matched a live job
(or an earlier job of the same batch) is that job, marked `deduplicated`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from .. import metrics, registry
from ..domain.models import JobSpec
from ..errors import ValidationFailed
from .auth import Principal, require_principal
from .jobs import admit, strict_query

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: list[JobSpec] = Field(min_length=1, description="up to SWITCHYARD_BATCH_MAX_JOBS (1000) jobs")


class BatchItem(BaseModel):
    id: str
    status: str
    deduplicated: bool = Field(False, description="an existing live job with this dedupe_key (or an earlier one here)")


class BatchOut(BaseModel):
    jobs: list[BatchItem]
    created: int
    deduplicated: int


def check_batch(body: BatchIn, cap: int) -> None:
    """What the model cannot say: the cap, a handler for each job, no debounce. Every
    problem is listed, each naming its index."""
    if len(body.jobs) > cap:
        raise ValidationFailed(f"jobs: a batch holds at most {cap} jobs, this one {len(body.jobs)}", field="jobs")
    errors = []
    for i, spec in enumerate(body.jobs):
        if spec.debounce is not None:
            errors.append({"field": f"jobs.{i}.debounce", "reason": "not accepted in a batch: submit it alone"})
        elif registry.get(spec.engine, spec.operation) is None:
            errors.append(
                {
                    "field": f"jobs.{i}.operation",
                    "reason": f"no handler is registered for {spec.engine}.{spec.operation}",
                }
            )
    if errors:
        first = errors[0]
        raise ValidationFailed(f"{first['field']}: {first['reason']}", field=first["field"], errors=errors)


@router.post("/submit/batch", status_code=201, response_model=BatchOut, dependencies=[strict_query()])
async def submit_batch(body: BatchIn, request: Request, who: Principal = Depends(require_principal)):
    """Submit up to `SWITCHYARD_BATCH_MAX_JOBS` jobs at once: all accepted, or none."""
    store = request.app.state.store
    check_batch(body, store.settings.batch_max_jobs)
    await admit(request, who, len(body.jobs))
    done = await store.lifecycle.submit_many(body.jobs, who.owner)
    created = [job for job, new in done if new]
    if created:
        metrics.jobs_created([job["engine"] for job in created])
    items = [BatchItem(id=job["_id"], status=job["status"], deduplicated=not new) for job, new in done]
    return BatchOut(jobs=items, created=len(created), deduplicated=len(done) - len(created))
