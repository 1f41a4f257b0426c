"""`/api/v1/jobs/workflows`: submit, list, status (with "why is it waiting"), add steps,
cancel and retry (seed 001, DESIGN.md §3)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from .. import metrics, registry
from ..domain.flowsteps import FLOW_ENGINE
from ..domain.models import tenant_of
from ..domain.redact import redact
from ..domain.workflow import AddSteps, WorkflowSpec, validate_steps
from ..store.why import explain
from .approvals import decides
from .auth import Principal, require_principal, visible
from .jobs import ID_PATTERN, admit, strict_query
from .schemas import Stamp

router = APIRouter(prefix="/api/v1/jobs/workflows", tags=["workflows"])
STEP_STATUSES = ("pending", "scheduled", "queued", "awaiting", "running", "completed", "failed", "cancelled")


class Created(BaseModel):
    id: str
    status: str
    jobs: dict[str, str]


class StepOut(BaseModel):
    key: str
    job_id: str
    status: str
    engine: str
    operation: str
    depends_on: list[str]
    started_at: Stamp | None = None
    completed_at: Stamp | None = None
    progress: float = 0.0
    cancel_reason: str | None = None
    why: dict | None = None
    type: str = Field("job", description="job, approval, signal or sleep (docs/waiting-steps.md)")
    decision: dict | None = Field(None, description="an approval's decision, once made")
    can_decide: bool = Field(False, description="an awaiting approval the caller may approve or reject")


class WorkflowOut(BaseModel):
    id: str
    name: str
    status: str
    failure_policy: str
    metadata: dict[str, Any] = {}
    created_at: Stamp
    started_at: Stamp | None = None
    completed_at: Stamp | None = None
    total: int
    counts: dict[str, int]
    progress: float
    steps: list[StepOut] | None = None


class WorkflowPage(BaseModel):
    workflows: list[WorkflowOut]
    next_cursor: str | None = None


def require_handlers(steps) -> None:
    for i, s in enumerate(steps):
        if s.type == "job" and s.engine is not None and s.operation is not None:  # else validate_steps says why
            registry.require(s.engine, s.operation, field=f"jobs[{i}].operation")


def _view(wf: dict, steps: list[dict] | None) -> WorkflowOut:
    if steps is None:  # list view: from the workflow's counters
        failed, cancelled = wf.get("n_failed", 0), wf.get("n_cancelled", 0)
        counts = {s: 0 for s in STEP_STATUSES}
        counts.update(
            failed=failed, cancelled=cancelled, completed=max(wf["total"] - wf.get("open", 0) - failed - cancelled, 0)
        )
        started = None
    else:
        counts = {s: 0 for s in STEP_STATUSES}
        for s in steps:
            counts[s["status"]] += 1
        starts = [s["started_at"] for s in steps if s.get("started_at")]
        started = min(starts) if starts else None
    done = counts["completed"] + counts["failed"] + counts["cancelled"]
    status = wf["status"]
    if status == "running" and steps is not None and started is None:
        status = "pending"  # accepted, nothing has started yet
    return WorkflowOut(
        id=wf["_id"],
        name=wf["name"],
        status=status,
        failure_policy=wf["failure_policy"],
        metadata=redact(wf.get("metadata") or {}),
        created_at=wf["created_at"],
        started_at=started,
        completed_at=wf.get("completed_at"),
        total=wf["total"],
        counts=counts,
        progress=round(100 * done / wf["total"], 2) if wf["total"] else 100.0,
    )


@router.post("", status_code=201, response_model=Created, dependencies=[strict_query()])
async def submit(spec: WorkflowSpec, request: Request, who: Principal = Depends(require_principal)):
    require_handlers(spec.jobs)
    # Before admit, so a refusal costs no token (the store checks again).
    validate_steps(spec.jobs, cap=request.app.state.settings.workflow_max_steps, tenant=tenant_of(who.owner))
    await admit(request, who, len(spec.jobs))
    wf = await request.app.state.store.workflows.create(spec, owner=who.owner)
    metrics.jobs_created(s.engine or FLOW_ENGINE for s in spec.jobs)
    return Created(id=wf["_id"], status=wf["status"], jobs={k: v["job_id"] for k, v in wf["steps"].items()})


@router.get("", response_model=WorkflowPage, dependencies=[strict_query("status", "cursor", "limit")])
async def list_workflows(
    request: Request,
    status: str | None = Query(None, pattern="^(running|completed|failed|cancelled)$"),
    cursor: str | None = Query(None, pattern=ID_PATTERN),
    limit: int = Query(50, ge=1, le=200),
    who: Principal = Depends(require_principal),
):
    store = request.app.state.store
    docs, nxt = await store.workflows.list(status=status, tenant=who.scope, after=cursor, limit=limit)
    return WorkflowPage(workflows=[_view(d, None) for d in docs], next_cursor=nxt)


@router.get("/{workflow_id}/status", response_model=WorkflowOut, dependencies=[strict_query()])
async def status(workflow_id: str, request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    wf = visible(who, await store.workflows.get(workflow_id, steps=True), "workflow", "workflow_id")
    steps = await store.jobs.steps_of(
        workflow_id,
        {
            "step_key": 1,
            "status": 1,
            "engine": 1,
            "operation": 1,
            "depends_on": 1,
            "started_at": 1,
            "completed_at": 1,
            "progress": 1,
            "cancel_reason": 1,
            "waiting_on": 1,
            "run_at": 1,
            "retry_count": 1,
            "priority": 1,
            "seq": 1,
            "tenant": 1,
            "lane": 1,
            "limit_key": 1,
            "kind": 1,  # steps that wait for people, events and time (app/api/approvals.py)
            "flow": 1,
            "wait_until": 1,
            "decision": 1,
            "map_over": 1,
            "map_children": 1,
        },
    )
    view = _view(wf, steps)
    key_of = {s["_id"]: s["step_key"] for s in steps}
    engines = {e["_id"]: e for e in await store.engines.list()}
    counted = 0
    out = []
    order = {k: i for i, k in enumerate(wf["steps"])}  # the workflow's topological order
    for s in sorted(steps, key=lambda s: order.get(s["step_key"], 0)):
        count = s["status"] == "queued" and counted < 20  # positions cost a count each: the first 20
        counted += count
        why = await explain(store, s, engine=engines.get(s["engine"]), key_of=key_of, count_position=count)
        out.append(
            StepOut(
                key=s["step_key"],
                job_id=s["_id"],
                status=s["status"],
                engine=s["engine"],
                operation=s["operation"],
                depends_on=s.get("depends_on") or [],
                started_at=s.get("started_at"),
                completed_at=s.get("completed_at"),
                progress=(s.get("progress") or {}).get("percent", 0.0),
                cancel_reason=s.get("cancel_reason"),
                why=why,
                type=s.get("kind") or "job",
                decision=redact(s["decision"]) if s.get("decision") else None,
                can_decide=s["status"] == "awaiting" and decides(who, {**s, "tenant": wf["tenant"]}),
            )
        )
    view.steps = out
    return view


@router.post("/{workflow_id}/jobs", response_model=Created, dependencies=[strict_query()])
async def add_jobs(workflow_id: str, body: AddSteps, request: Request, who: Principal = Depends(require_principal)):
    require_handlers(body.jobs)
    store = request.app.state.store
    wf = visible(who, await store.workflows.get(workflow_id, steps=True), "workflow", "workflow_id")
    # Before admit, so a refusal costs no token (the store checks again, against the graph it reads).
    validate_steps(
        body.jobs, existing=set(wf["steps"]), cap=request.app.state.settings.workflow_max_steps, tenant=wf["tenant"]
    )
    await admit(request, who, len(body.jobs))
    ids = await store.workflows.add_steps(workflow_id, body.jobs, owner=who.owner)
    metrics.jobs_created(s.engine or FLOW_ENGINE for s in body.jobs)
    wf = await store.workflows.get(workflow_id)
    return Created(id=workflow_id, status=wf["status"], jobs=ids)


@router.post("/{workflow_id}/cancel", response_model=WorkflowOut, dependencies=[strict_query()])
async def cancel(workflow_id: str, request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    visible(who, await store.workflows.get(workflow_id), "workflow", "workflow_id")
    return _view(await store.flow.cancel(workflow_id), None)


@router.post("/{workflow_id}/retry", response_model=Created, dependencies=[strict_query()])
async def retry(workflow_id: str, request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    visible(who, await store.workflows.get(workflow_id), "workflow", "workflow_id")
    jobs = await store.flow.retry(workflow_id)
    wf = await store.workflows.get(workflow_id)
    return Created(id=workflow_id, status=wf["status"], jobs=jobs)
