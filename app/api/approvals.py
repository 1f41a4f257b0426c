"""Steps that wait for people and events (docs/waiting-steps.md): the caller's "Needs
action" inbox (`GET /api/v1/approvals`), an approver's decision (`POST /api/v1/jobs/
workflows/{id}/steps/{key}/approve` and `/reject`), and signals (`POST /api/v1/jobs/
workflows/{id}/signals/{name}`).

Who decides: the approval's `approvers` (users, or roles: at least that role), always of
the workflow's own tenant; with none named, any operator or admin of the tenant. Everyone
else, the bootstrap admin included for another tenant's workflow, is answered 404, as if
there were no such approval. A decision is written to the workflow's tenant's audit log.
A signal may be sent by anyone who may see the workflow.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from ..domain.flowsteps import SIGNAL_PATTERN, may_decide, preview
from ..domain.redact import redact
from ..domain.userjson import UserDict
from ..domain.workflow import KEY_PATTERN
from ..errors import NotFound
from .auth import Principal, audit, require_principal, visible
from .jobs import ID_PATTERN, strict_query
from .schemas import Stamp

inbox = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])
router = APIRouter(prefix="/api/v1/jobs/workflows", tags=["workflows"])

WorkflowId = Path(..., pattern=ID_PATTERN)
StepKey = Path(..., pattern=KEY_PATTERN)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(None, max_length=2000, description="why; kept with the decision")
    payload: UserDict | None = Field(None, description="anything the children should get with the decision")


class Decision(BaseModel):
    decision: str = Field(description="approved or rejected")
    by: str = Field(description="who decided: `<tenant>/<user>`, `admin`, or `system:timeout`")
    at: str = Field(description="when, ISO 8601")
    comment: str | None = None
    payload: dict[str, Any] | None = None


class DecisionOut(BaseModel):
    workflow_id: str
    step_key: str
    job_id: str
    status: str = Field(description="the step's status now: completed (approved) or failed (rejected)")
    decision: Decision


class SignalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: UserDict = Field(default_factory=dict, description="becomes the result of the steps waiting for it")


class SignalOut(BaseModel):
    workflow_id: str
    name: str
    received_at: Stamp
    delivered_to: list[str] = Field(description="keys of the steps it completed now; later ones take it when ready")


class ApprovalOut(BaseModel):
    workflow_id: str
    workflow_name: str
    step_key: str
    job_id: str
    name: str | None = None
    waiting_since: Stamp | None = None
    until: Stamp | None = Field(None, description="when on_timeout applies (no timeout: null)")
    on_timeout: str | None = None
    approvers: list[str]
    parents: dict[str, Any] = Field(description="the results of the steps it depends on, by key (previews)")
    truncated: bool = Field(description="whether a parent's result was cut to preview it")


class ApprovalPage(BaseModel):
    approvals: list[ApprovalOut]


def decides(who: Principal, step: dict) -> bool:
    """Whether `who` may decide this approval step (only an awaiting one is asked)."""
    approvers = (step.get("flow") or {}).get("approvers")
    return step.get("kind") == "approval" and may_decide(who.owner, who.tenant, who.role, approvers, step["tenant"])


@inbox.get("", response_model=ApprovalPage, dependencies=[strict_query()])
async def list_approvals(request: Request, who: Principal = Depends(require_principal)):
    """The approvals waiting for the caller, oldest first, with what each is about: the
    results of the steps it depends on (long values cut: `truncated`)."""
    flows = request.app.state.store.flowsteps
    steps = [s for s in await flows.awaiting_of(who.tenant) if decides(who, s)]
    parents = await flows.parents_results(steps)
    names = await flows.workflow_names([s["workflow_id"] for s in steps])
    out = []
    for s in steps:
        shown, cut = {}, False
        for pid in s.get("parent_ids") or []:
            if pid in parents:
                key, result = parents[pid]
                shown[key], c = preview(redact(result))
                cut |= c
        flow = s.get("flow") or {}
        out.append(
            ApprovalOut(
                workflow_id=s["workflow_id"],
                workflow_name=names.get(s["workflow_id"], ""),
                step_key=s["step_key"],
                job_id=s["_id"],
                waiting_since=s.get("awaiting_since"),
                until=s.get("wait_until"),
                on_timeout=flow.get("on_timeout") if flow.get("timeout_seconds") else None,
                approvers=flow.get("approvers") or [],
                parents=shown,
                truncated=cut,
            )
        )
    return ApprovalPage(approvals=out)


async def _decide(request: Request, who: Principal, workflow_id: str, key: str, body: DecisionIn | None, approve: bool):
    store = request.app.state.store
    wf = await store.workflows.get(workflow_id)
    if wf.get("tenant") != who.tenant:  # another tenant's: as if there were none
        raise NotFound(f"workflow {workflow_id!r} not found", field="workflow_id")
    try:
        step = await store.flowsteps.step(workflow_id, key)
    except NotFound:
        step = None
    if step is None or not decides(who, step):
        raise NotFound(f"workflow {workflow_id} has no approval step {key!r} for you to decide", field="key")
    body = body or DecisionIn()
    verdict = await store.flowsteps.decide_approval(
        step, approve=approve, by=who.owner, comment=body.comment, payload=body.payload
    )
    await audit(
        request,
        who,
        f"approval.{verdict['decision']}",
        f"workflow/{workflow_id}/steps/{key}",
        log_tenant=wf["tenant"],
        job_id=step["_id"],
        comment=body.comment,
    )
    now = await store.jobs.get(step["_id"])
    return DecisionOut(
        workflow_id=workflow_id, step_key=key, job_id=step["_id"], status=now["status"], decision=verdict
    )


@router.post("/{workflow_id}/steps/{key}/approve", response_model=DecisionOut, dependencies=[strict_query()])
async def approve_step(
    request: Request,
    body: DecisionIn | None = None,
    workflow_id: str = WorkflowId,
    key: str = StepKey,
    who: Principal = Depends(require_principal),
):
    """Approve an awaiting approval step: it completes, its result the decision
    `{decision, by, at, comment, payload}`, which its children get in `ctx.parents`.
    404 for anyone who may not decide it; 409 when it does not await a decision."""
    return await _decide(request, who, workflow_id, key, body, approve=True)


@router.post("/{workflow_id}/steps/{key}/reject", response_model=DecisionOut, dependencies=[strict_query()])
async def reject_step(
    request: Request,
    body: DecisionIn | None = None,
    workflow_id: str = WorkflowId,
    key: str = StepKey,
    who: Principal = Depends(require_principal),
):
    """Reject an awaiting approval step: it fails (error code `rejected`), and the
    workflow's failure policy applies. 404 and 409 as for approve."""
    return await _decide(request, who, workflow_id, key, body, approve=False)


@router.post("/{workflow_id}/signals/{name}", response_model=SignalOut, dependencies=[strict_query()])
async def send_signal(
    request: Request,
    body: SignalIn | None = None,
    workflow_id: str = WorkflowId,
    name: str = Path(..., pattern=SIGNAL_PATTERN),
    who: Principal = Depends(require_principal),
):
    """Deliver signal `name` with its payload: the workflow's signal steps of that name
    complete with the payload as their result, now if they await it, else once they do.
    404 when the workflow has no such signal step; 409 when the signal was delivered
    already, or the workflow has finished."""
    store = request.app.state.store
    wf = visible(who, await store.workflows.get(workflow_id), "workflow", "workflow_id")
    out = await store.flowsteps.send_signal(wf, name, (body or SignalIn()).payload, by=who.owner)
    return SignalOut(workflow_id=workflow_id, name=name, **out)
