"""`/api/v1/jobs/schedules`: cron schedules of a job or a workflow template: create, list,
get, pause, resume, delete (issue 7). Firing them is the scheduler's (app/worker/scheduler.py).

Everything a schedule will launch is validated here, once, as the job and workflow
endpoints validate it: handlers exist, the workflow's DAG is sound, no `$`/dotted keys.
Creating one is admitted like a submit (app/admission.py): a rate token, the tenant's cap on
schedules, and a minimum gap between its ticks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field

from .. import registry
from ..domain.redact import redact
from ..domain.schedule import ScheduleSpec
from ..domain.workflow import validate_steps
from ..errors import ValidationFailed
from .auth import Principal, require_principal, visible
from .jobs import ID_PATTERN, admission, strict_query
from .schemas import Stamp
from .workflows import require_handlers

router = APIRouter(prefix="/api/v1/jobs/schedules", tags=["schedules"])
ScheduleId = Path(pattern=ID_PATTERN, description="the schedule's id")


class ScheduleOut(BaseModel):
    id: str
    name: str
    owner: str
    cron: str
    timezone: str
    misfire_policy: str
    paused: bool
    next_run_at: Stamp = Field(description="the next tick that has not run yet (UTC)")
    job: dict[str, Any] | None = Field(None, description="the job template, when the schedule submits a job")
    workflow: dict[str, Any] | None = Field(None, description="the workflow template, when it submits a workflow")
    created_at: Stamp
    updated_at: Stamp
    run_count: int = 0
    last_run_at: Stamp | None = Field(None, description="the tick that last ran")
    last_fired_at: Stamp | None = Field(None, description="when that tick was launched")
    last_job_id: str | None = None
    last_workflow_id: str | None = None
    last_error: dict[str, Any] | None = None
    last_misfire: dict[str, Any] | None = Field(
        None, description="the last due ticks passed over, by the misfire policy"
    )
    refused_ticks: int = Field(0, description="ticks its tenant's rate limit or quota refused (the last in last_error)")

    @classmethod
    def of(cls, doc: dict) -> ScheduleOut:
        fields = {k: v for k, v in doc.items() if k in cls.model_fields}
        if fields.get("last_error"):
            fields["last_error"] = redact(fields["last_error"])
        return cls(id=doc["_id"], **fields, **{doc["target"]: redact(doc["template"])})


class SchedulePage(BaseModel):
    schedules: list[ScheduleOut]
    next_cursor: str | None = None


@contextmanager
def under(prefix: str):
    """Re-raise a validation error of a nested template with its field's full path."""
    try:
        yield
    except ValidationFailed as exc:
        raise ValidationFailed(
            exc.message, field=f"{prefix}.{exc.field}" if exc.field else prefix, **exc.details
        ) from None


def check_target(spec: ScheduleSpec, settings, tenant: str | None = None) -> None:
    if (spec.job is None) == (spec.workflow is None):
        raise ValidationFailed("give exactly one of job and workflow", field="job" if spec.job is None else "workflow")
    if spec.job is not None:
        registry.require(spec.job.engine, spec.job.operation, field="job.operation")
    else:
        with under("workflow"):
            validate_steps(spec.workflow.jobs, cap=settings.workflow_max_steps, tenant=tenant)
            require_handlers(spec.workflow.jobs)


@router.post("", status_code=201, response_model=ScheduleOut)
async def create(spec: ScheduleSpec, request: Request, who: Principal = Depends(require_principal)):
    check_target(spec, request.app.state.settings, tenant=who.tenant)
    store = request.app.state.store
    await admission(request).schedule(who.scope, spec.cron_spec())
    return ScheduleOut.of(await store.schedules.create(spec, owner=who.owner, now=store.clock.now()))


@router.get("", response_model=SchedulePage, dependencies=[strict_query("cursor", "limit")])
async def list_schedules(
    request: Request,
    cursor: str | None = Query(None, pattern=ID_PATTERN),
    limit: int = Query(50, ge=1, le=200),
    who: Principal = Depends(require_principal),
):
    docs, nxt = await request.app.state.store.schedules.list(tenant=who.scope, after=cursor, limit=limit)
    return SchedulePage(schedules=[ScheduleOut.of(d) for d in docs], next_cursor=nxt)


@router.get("/{schedule_id}", response_model=ScheduleOut)
async def get(request: Request, schedule_id: str = ScheduleId, who: Principal = Depends(require_principal)):
    return ScheduleOut.of(
        visible(who, await request.app.state.store.schedules.get(schedule_id), "schedule", "schedule_id")
    )


@router.post("/{schedule_id}/pause", response_model=ScheduleOut)
async def pause(request: Request, schedule_id: str = ScheduleId, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    visible(who, await store.schedules.get(schedule_id), "schedule", "schedule_id")
    return ScheduleOut.of(await store.schedules.pause(schedule_id, store.clock.now()))


@router.post("/{schedule_id}/resume", response_model=ScheduleOut)
async def resume(request: Request, schedule_id: str = ScheduleId, who: Principal = Depends(require_principal)):
    """Continues at the first tick after now: ticks that fell while paused do not run."""
    store = request.app.state.store
    visible(who, await store.schedules.get(schedule_id), "schedule", "schedule_id")
    return ScheduleOut.of(await store.schedules.resume(schedule_id, store.clock.now()))


@router.delete("/{schedule_id}", status_code=204, response_class=Response)
async def delete(request: Request, schedule_id: str = ScheduleId, who: Principal = Depends(require_principal)):
    visible(who, await request.app.state.store.schedules.get(schedule_id), "schedule", "schedule_id")
    await request.app.state.store.schedules.delete(schedule_id)
    return Response(status_code=204)
