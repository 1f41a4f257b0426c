"""`WorkflowFlow`: how a running workflow moves: `settle` after each finished step (release
children, apply the failure policy, keep the counts, finish the workflow), the repair of
quiet workflows, and the user's cancel and retry. Its collaborators: the workflow store (the
documents and graphs), the job queries, and the step moves."""

from __future__ import annotations

from ..domain.states import JobStatus, WorkflowStatus
from ..domain.workflow import descendants
from ..errors import InvalidTransition
from .retention import awaits_fanout

RUNNING = WorkflowStatus.RUNNING.value
DEPENDENCY_FAILED = "dependency_failed"
DEPENDENCY_CANCELLED = "dependency_cancelled"
WORKFLOW_FAILED = "workflow_failed"  # fail_fast: `workflow_failed: step 'key' failed`


class WorkflowFlow:
    def __init__(self, workflows, jobs, steps, clock) -> None:
        self.workflows, self.jobs, self.steps, self.clock = workflows, jobs, steps, clock
        self.col = workflows.col

    @staticmethod
    def _children(graph: dict) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in graph}
        for k, s in graph.items():
            for d in s["depends_on"]:
                out.setdefault(d, []).append(k)
        return out

    async def settle(self, job_id: str) -> None:
        await self.settle_many([job_id])

    async def settle_many(self, job_ids: list[str]) -> None:
        """Everything that follows steps reaching a terminal state: children released,
        failure policies applied, counts kept, workflows finished. Batched: steps that
        finished together cost one write per kind, not one per step.

        A completed step carries no mark: its worker's settler runs this once, and if that
        worker dies first, `repair_stalled` finds the children still waiting on it. Failed
        and cancelled steps carry the `UNSETTLED` mark from their terminal write until this
        has run, and maintenance replays them."""
        found = await self.jobs.by_ids(
            job_ids, None, {"status": 1, "workflow_id": 1, "step_key": 1, "dependents": 1, "expires_at": 1}
        )
        jobs = [
            j
            for j in found
            if j.get("workflow_id")
            and JobStatus(j["status"]).terminal
            and (j["status"] == JobStatus.COMPLETED.value or awaits_fanout(j))
        ]
        if not jobs:
            return
        done = [j for j in jobs if j["status"] == JobStatus.COMPLETED.value]
        if done:
            children = sorted({c for j in done for c in j.get("dependents") or []})
            await self.steps.release_children([j["_id"] for j in done], children)
        for j in jobs:
            if j["status"] != JobStatus.COMPLETED.value:
                await self._after_failure(j)
        by_wf: dict[str, list[str]] = {}
        for j in jobs:
            by_wf.setdefault(j["workflow_id"], []).append(j["status"])
        for wf_id, statuses in by_wf.items():
            await self._count(wf_id, statuses)
        await self.steps.fanout_done([j["_id"] for j in jobs if awaits_fanout(j)])
        for wf_id in by_wf:
            await self.finish_if_done(wf_id)

    async def _after_failure(self, job: dict) -> None:
        """A step failed or was cancelled: cancel what can no longer run, per the policy."""
        wf = await self.workflows.get(job["workflow_id"])
        key, status = job["step_key"], JobStatus(job["status"])
        open_steps = await self._open_steps(wf["_id"])
        children = self._children(await self.workflows.graph(wf["_id"]))
        below = [k for k in descendants(children, [key]) if k in open_steps]
        reason = DEPENDENCY_FAILED if status == JobStatus.FAILED else DEPENDENCY_CANCELLED
        await self._cancel_keys(wf["_id"], {k: open_steps[k] for k in below}, reason)
        if status == JobStatus.FAILED and wf["failure_policy"] == "fail_fast":
            # the rest did not depend on the failed step: they stop because the workflow failed
            rest = {k: v for k, v in open_steps.items() if k != key and k not in below}
            await self._cancel_keys(wf["_id"], rest, f"{WORKFLOW_FAILED}: step {key!r} failed")

    async def _open_steps(self, workflow_id: str) -> dict[str, str]:
        """`{key: job_id}` of the workflow's unfinished steps."""
        steps = await self.jobs.steps_of(workflow_id, {"step_key": 1, "status": 1})
        return {s["step_key"]: s["_id"] for s in steps if not JobStatus(s["status"]).terminal}

    async def _cancel_keys(self, workflow_id: str, ids_by_key: dict[str, str], reason: str) -> None:
        cancelled = await self.steps.cancel_steps(list(ids_by_key.values()), reason)
        if cancelled:  # guarded on each step's status, so each is counted exactly once
            await self._count(workflow_id, [JobStatus.CANCELLED.value] * len(cancelled))
            await self.steps.fanout_done(cancelled)

    async def _count(self, workflow_id: str, statuses: list[str]) -> None:
        """Count finished steps into the workflow's `open`, `n_failed` and `n_cancelled`.
        One small write per batch. A replayed settle could count a step twice; finishing
        verifies against the steps themselves before it trusts `open`."""
        await self.col.update_one(
            {"_id": workflow_id},
            {
                "$inc": {
                    "open": -len(statuses),
                    "n_failed": statuses.count("failed"),
                    "n_cancelled": statuses.count("cancelled"),
                },
                "$set": {"updated_at": self.clock.now()},
            },
        )

    async def repair_stalled(self, quiet_since, limit: int = 20) -> int:
        """Running workflows with no step counted since `quiet_since`: release children whose
        completed parents never fanned out (their worker died in between), and re-count the
        steps. A scan of the workflow's pending steps, so only for quiet workflows (found by
        the `(status, updated_at)` index), each at most once per quiet period. Returns how many
        children were released."""
        released = 0
        quiet = (
            await self.col.find({"status": RUNNING, "updated_at": {"$lt": quiet_since}}, {"updated_at": 1})
            .limit(limit)
            .to_list(limit)
        )
        for wf in quiet:
            pending = [
                s
                for s in await self.jobs.steps_of(wf["_id"], {"status": 1, "waiting_on": 1, "kind": 1})
                if s["status"] == JobStatus.PENDING.value
            ]
            parents = sorted({p for s in pending for p in s.get("waiting_on") or {}})
            done = sorted(await self.jobs.completed_among(parents))
            if done:
                children = [s["_id"] for s in pending if set(s.get("waiting_on") or {}) & set(done)]
                released += await self.steps.release_children(done, children)
            released += await self.steps.resume(pending)  # empty maps that never moved, half-done kinds
            await self.col.update_one({"_id": wf["_id"]}, {"$set": {"updated_at": self.clock.now()}})
            await self.recount(wf["_id"])
        return released

    async def recount(self, workflow_id: str) -> str | None:
        """Set the counters from the steps themselves, and finish the workflow if it is done."""
        return await self.finish_if_done(workflow_id, verify_always=True)

    async def finish_if_done(self, workflow_id: str, verify_always: bool = False) -> str | None:
        wf = await self.col.find_one({"_id": workflow_id}, {"status": 1, "open": 1})
        if not wf or wf["status"] != RUNNING or (wf.get("open", 1) > 0 and not verify_always):
            return None
        by_status = await self.jobs.status_counts_of(workflow_id)
        still_open = sum(n for s, n in by_status.items() if not JobStatus(s).terminal)
        failed, cancelled = by_status.get("failed", 0), by_status.get("cancelled", 0)
        if still_open:  # the counter drifted (a replayed settle): mend it from the truth
            await self.col.update_one(
                {"_id": workflow_id, "status": RUNNING},
                {"$set": {"open": still_open, "n_failed": failed, "n_cancelled": cancelled}},
            )
            return None
        final = (
            WorkflowStatus.FAILED if failed else WorkflowStatus.CANCELLED if cancelled else WorkflowStatus.COMPLETED
        ).value
        res = await self.col.update_one(
            {"_id": workflow_id, "status": RUNNING},
            {
                "$set": {
                    "status": final,
                    "completed_at": self.clock.now(),
                    "open": 0,
                    "n_failed": failed,
                    "n_cancelled": cancelled,
                }
            },
        )
        return final if res.modified_count else None

    async def cancel(self, workflow_id: str) -> dict:
        wf = await self.workflows.get(workflow_id)
        if wf["status"] != RUNNING:
            raise InvalidTransition(f"workflow {workflow_id} is already {wf['status']}", field="status")
        await self.col.update_one({"_id": workflow_id}, {"$set": {"cancel_requested": True}})
        await self._cancel_keys(workflow_id, await self._open_steps(workflow_id), "workflow cancelled")
        await self.finish_if_done(workflow_id)
        return await self.workflows.get(workflow_id)

    async def retry(self, workflow_id: str) -> dict[str, str]:
        """Re-run the failed steps and those cancelled because of a failure; completed steps
        and their results stay. Returns `{key: job_id}` of the steps that were reset."""
        wf = await self.workflows.get(workflow_id)
        if wf["status"] not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
            raise InvalidTransition(
                f"workflow {workflow_id} is {wf['status']}; only a failed or cancelled one can be retried",
                field="status",
            )
        steps = await self.jobs.steps_of(
            workflow_id,
            {
                "status": 1,
                "cancel_reason": 1,
                "parent_ids": 1,
                "step_key": 1,
                "engine": 1,
                "priority": 1,
                "tenant": 1,
                "lane": 1,
                "ord": 1,
                "kind": 1,
            },
        )
        again = [
            s
            for s in steps
            if s["status"] == "failed"
            or (
                s["status"] == "cancelled"
                and (s.get("cancel_reason") or "").split(":")[0]
                in (DEPENDENCY_FAILED, DEPENDENCY_CANCELLED, WORKFLOW_FAILED)
            )
        ]
        if not again:
            raise InvalidTransition(f"workflow {workflow_id} has no failed steps to retry", field="status")
        res = await self.col.update_one(
            {"_id": workflow_id, "status": wf["status"]},
            {
                "$set": {"status": RUNNING, "completed_at": None, "cancel_requested": False},
                "$inc": {
                    "open": len(again),
                    "n_failed": -sum(s["status"] == "failed" for s in again),
                    "n_cancelled": -sum(s["status"] == "cancelled" for s in again),
                },
            },
        )
        if not res.modified_count:
            raise InvalidTransition(f"workflow {workflow_id} changed meanwhile; try again", field="status")
        completed = {s["_id"] for s in steps if s["status"] == "completed"}
        await self.steps.reset_steps(again, completed)
        return {s["step_key"]: s["_id"] for s in again}
