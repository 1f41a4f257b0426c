"""Steps that wait for people, events and time, as the workflow machinery sees them: the
kinds `approval`, `signal` and `sleep` registered with `StepMoves` (what such a step does
when its last parent completed), the promoter's hook for due sleep steps, signals, and the
approvals a tenant has waiting. Every status write goes through `Decisions`
(app/store/decisions.py); this module writes only a workflow's `signals`.

Signals: `signals.<name> = {payload, by, at}` on the workflow document, written once per
workflow and name (a second delivery is a `Conflict`). A signal step reads it when it
starts to await; a delivery decides the steps already awaiting it. Each side writes before
it reads what the other wrote (the step its status, the sender the workflow), so whichever
comes second sees the first: a signal sent at any moment reaches every step waiting for it,
and `decide`'s guard lets only one of two deliveries through.
"""

from __future__ import annotations

from typing import Any

from ..domain.flowsteps import REJECTED, iso
from ..domain.states import JobStatus, WorkflowStatus
from ..errors import Conflict, InvalidTransition, NotFound
from .db import find_in

AWAITING = JobStatus.AWAITING.value
INBOX_FIELDS = {
    "step_key": 1,
    "workflow_id": 1,
    "kind": 1,
    "flow": 1,
    "awaiting_since": 1,
    "wait_until": 1,
    "parent_ids": 1,
    "owner": 1,
    "tenant": 1,
    "status": 1,
}


class FlowSteps:
    def __init__(self, decisions, steps, lifecycle, workflows, jobs, clock) -> None:
        self.decisions, self.steps, self.lifecycle = decisions, steps, lifecycle
        self.workflows, self.jobs, self.clock = workflows, jobs, clock
        self.col = jobs.col

    def register(self) -> None:
        """Wire the kinds into the step moves, and due sleep steps into the promoter."""
        self.steps.kinds.update(approval=self._approval_ready, signal=self._signal_ready, sleep=self._sleep_ready)
        self.lifecycle.wake = self.decisions.wake_due

    async def _approval_ready(self, steps: list[dict], exact: bool) -> int:
        # Its approvers hear of it from the step's `job.awaiting` event (app/notifications/approvals.py).
        return len(await self.decisions.await_steps(steps, exact))

    async def _signal_ready(self, steps: list[dict], exact: bool) -> int:
        ids = await self.decisions.await_steps(steps, exact)
        if ids:
            await self._deliver_kept(ids)
        return len(ids)

    async def _sleep_ready(self, steps: list[dict], exact: bool) -> int:
        return await self.decisions.sleep_steps(steps, exact)

    # --- signals -------------------------------------------------------------------------
    async def _deliver_kept(self, step_ids: list[str]) -> None:
        """Signal steps that just started to await: those whose signal came already take it."""
        docs = await find_in(self.col, step_ids, {"status": AWAITING}, {"workflow_id": 1, "flow": 1})
        by_wf: dict[str, list[dict]] = {}
        for d in docs:
            by_wf.setdefault(d["workflow_id"], []).append(d)
        for wf_id, members in by_wf.items():
            wf = await self.workflows.col.find_one({"_id": wf_id}, {"signals": 1})
            kept = (wf or {}).get("signals") or {}
            for d in members:
                signal = kept.get((d.get("flow") or {}).get("signal"))
                if signal is not None:
                    await self._take(d["_id"], signal["payload"])

    async def _take(self, step_id: str, payload: dict) -> bool:
        try:
            await self.decisions.decide(step_id, result=payload)
            return True
        except InvalidTransition:
            return False  # another delivery (or a cancel) came first

    async def send_signal(self, wf: dict, name: str, payload: dict, by: str) -> dict[str, Any]:
        """Deliver signal `name` to workflow `wf`: kept on the workflow, and given to its
        steps awaiting it now (the others take it when they start to await). `NotFound`
        when no step of the workflow waits for such a signal; `Conflict` when it was
        delivered already, or its steps have all finished; `InvalidTransition` when the
        workflow has finished."""
        wf_id = wf["_id"]
        steps = await self.jobs.steps_of(wf_id, {"kind": 1, "flow": 1, "step_key": 1, "status": 1})
        wanted = [s for s in steps if s.get("kind") == "signal" and (s.get("flow") or {}).get("signal") == name]
        if not wanted:
            raise NotFound(f"workflow {wf_id} has no step waiting for signal {name!r}", field="name")
        if all(JobStatus(s["status"]).terminal for s in wanted):
            raise Conflict(f"no step of workflow {wf_id} waits for signal {name!r} any more", field="name")
        now = self.clock.now()
        field = f"signals.{name}"  # `name` matched SIGNAL_PATTERN and a step's signal
        res = await self.workflows.col.update_one(
            {"_id": wf_id, "status": WorkflowStatus.RUNNING.value, field: {"$exists": False}},
            {"$set": {field: {"payload": payload, "by": by, "at": now}}},
        )
        if not res.modified_count:
            doc = await self.workflows.col.find_one({"_id": wf_id}, {"status": 1, field: 1})
            if doc and (doc.get("signals") or {}).get(name) is not None:
                raise Conflict(f"signal {name!r} was delivered to workflow {wf_id} already", field="name")
            raise InvalidTransition(
                f"workflow {wf_id} is {(doc or {}).get('status', 'gone')}; it takes no more signals", field="status"
            )
        # Read after the write: a step that starts to await from now on finds the signal itself.
        now_awaiting = await find_in(self.col, [s["_id"] for s in wanted], {"status": AWAITING}, {"step_key": 1})
        delivered = [d["step_key"] for d in now_awaiting if await self._take(d["_id"], payload)]
        return {"received_at": now, "delivered_to": sorted(delivered)}

    # --- approvals -----------------------------------------------------------------------
    async def step(self, workflow_id: str, key: str) -> dict:
        """The workflow's step `key` (any kind); `NotFound` naming `key` otherwise."""
        graph = await self.workflows.graph(workflow_id)
        entry = graph.get(key) if isinstance(key, str) else None
        doc = await self.col.find_one({"_id": entry["job_id"]}) if entry else None
        if doc is None:
            raise NotFound(f"workflow {workflow_id} has no step {key!r}", field="key")
        return doc

    async def decide_approval(
        self, step: dict, *, approve: bool, by: str, comment: str | None, payload: dict | None
    ) -> dict:
        """An approver's decision: the approval step completes with it as its result, or
        fails (`rejected`). Returns the decision. `InvalidTransition` when the step does not
        await a decision (not yet ready, or decided already)."""
        verdict = {
            "decision": "approved" if approve else "rejected",
            "by": by,
            "at": iso(self.clock.now()),
            "comment": comment,
            "payload": payload,
        }
        if step["status"] != AWAITING:
            raise InvalidTransition(
                f"step {step['step_key']!r} is {step['status']}; "
                + (
                    "it was decided already"
                    if JobStatus(step["status"]).terminal
                    else "it does not await a decision yet"
                ),
                field="status",
            )
        if approve:
            await self.decisions.decide(step["_id"], result=verdict, decision=verdict)
        else:
            why = f"rejected by {by}" + (f": {comment}" if comment else "")
            await self.decisions.decide(step["_id"], error=(REJECTED, why), decision=verdict)
        return verdict

    async def awaiting_of(self, tenant: str, kind: str = "approval", limit: int = 500) -> list[dict]:
        """The tenant's steps of `kind` that await now, oldest first: found through the
        `(tenant, status, _id)` index of `jobs`, so the cost follows what awaits."""
        docs = (
            await self.col.find({"tenant": str(tenant), "status": AWAITING}, INBOX_FIELDS)
            .sort("_id", 1)
            .limit(limit)
            .to_list(limit)
        )
        return [d for d in docs if d.get("kind") == kind]

    async def parents_results(self, steps: list[dict]) -> dict[str, tuple[str, Any]]:
        """`{parent id: (step key, result)}` of these steps' parents, in one read."""
        return await self.jobs.load_parent_results(steps, {})

    async def workflow_names(self, ids: list[str]) -> dict[str, str]:
        docs = await find_in(self.workflows.col, sorted(set(ids)), None, {"name": 1})
        return {d["_id"]: d.get("name", "") for d in docs}
