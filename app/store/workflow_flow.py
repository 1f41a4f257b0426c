"""How a running workflow moves: `settle` after each finished step (release children,
apply the failure policy, mirror the step's state, finish the workflow), and the user's
cancel and retry. Part of `WorkflowStore`."""

from __future__ import annotations

from pymongo import UpdateOne

from app.domain.states import JobStatus
from app.domain.workflow import descendants
from app.errors import InvalidTransition

RUNNING = "running"
DEPENDENCY_FAILED = "dependency_failed"
DEPENDENCY_CANCELLED = "dependency_cancelled"


class FlowMixin:
    @staticmethod
    def _children(wf: dict) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {k: [] for k in wf["steps"]}
        for k, s in wf["steps"].items():
            for d in s["depends_on"]:
                out.setdefault(d, []).append(k)
        return out

    async def settle(self, job_id: str) -> None:
        """Everything that follows a step reaching a terminal state. Idempotent."""
        job = await self.jobs.col.find_one({"_id": job_id}, {"status": 1, "workflow_id": 1, "step_key": 1, "dependents": 1,
                                                            "fanout_pending": 1})
        if not job or not job.get("fanout_pending") or not job.get("workflow_id"):
            return
        status = JobStatus(job["status"])
        if not status.terminal:
            return
        wf_id, key = job["workflow_id"], job["step_key"]
        if status == JobStatus.COMPLETED:
            await self.jobs.release_children(job_id, job.get("dependents") or [])
        else:
            wf = await self.get(wf_id)
            open_keys = [k for k, s in wf["steps"].items() if s["state"] is None and k != key]
            if status == JobStatus.FAILED and wf["failure_policy"] == "fail_fast":
                targets, reason = open_keys, DEPENDENCY_FAILED
            else:
                targets = [k for k in descendants(self._children(wf), [key]) if wf["steps"][k]["state"] is None]
                reason = DEPENDENCY_FAILED if status == JobStatus.FAILED else DEPENDENCY_CANCELLED
            await self._cancel_keys(wf, targets, reason)
        await self._mirror(wf_id, {key: status.value})
        await self.jobs.fanout_done(job_id)
        await self.finish_if_done(wf_id)

    async def _cancel_keys(self, wf: dict, keys: list[str], reason: str) -> None:
        ids = {wf["steps"][k]["job_id"]: k for k in keys}
        cancelled = await self.jobs.cancel_steps(list(ids), reason)
        if cancelled:
            await self._mirror(wf["_id"], {ids[i]: JobStatus.CANCELLED.value for i in cancelled})
            for i in cancelled:
                await self.jobs.fanout_done(i)

    async def _mirror(self, workflow_id: str, states: dict[str, str]) -> None:
        """Record steps' terminal states. Each write is guarded on the state still being
        unset, so a replayed settle counts nothing twice; `open`, `n_failed` and
        `n_cancelled` are what finishing reads instead of the whole steps map."""
        ops = [UpdateOne({"_id": workflow_id, f"steps.{k}.state": None},
                         {"$set": {f"steps.{k}.state": v},
                          "$inc": {"open": -1, "n_failed": int(v == "failed"), "n_cancelled": int(v == "cancelled")}})
               for k, v in states.items()]
        if ops:
            await self.col.bulk_write(ops, ordered=False)

    async def finish_if_done(self, workflow_id: str) -> str | None:
        wf = await self.col.find_one({"_id": workflow_id}, {"status": 1, "open": 1, "n_failed": 1, "n_cancelled": 1})
        if not wf or wf["status"] != RUNNING or wf.get("open", 1) > 0:
            return None
        final = "failed" if wf.get("n_failed") else "cancelled" if wf.get("n_cancelled") else "completed"
        res = await self.col.update_one({"_id": workflow_id, "status": RUNNING, "open": 0},
                                        {"$set": {"status": final, "completed_at": self.clock.now()}})
        return final if res.modified_count else None

    async def cancel(self, workflow_id: str) -> dict:
        wf = await self.get(workflow_id)
        if wf["status"] != RUNNING:
            raise InvalidTransition(f"workflow {workflow_id} is already {wf['status']}", field="status")
        await self.col.update_one({"_id": workflow_id}, {"$set": {"cancel_requested": True}})
        await self._cancel_keys(wf, [k for k, s in wf["steps"].items() if s["state"] is None], "workflow cancelled")
        await self.finish_if_done(workflow_id)
        return await self.get(workflow_id)

    async def retry(self, workflow_id: str) -> list[str]:
        """Re-run the failed steps and those cancelled because of a failure; completed steps
        and their results stay. Returns the keys that were reset."""
        wf = await self.get(workflow_id)
        if wf["status"] not in ("failed", "cancelled"):
            raise InvalidTransition(f"workflow {workflow_id} is {wf['status']}; only a failed or cancelled one can be retried",
                                    field="status")
        steps = await self.jobs.steps_of(workflow_id, {"status": 1, "cancel_reason": 1, "parent_ids": 1, "step_key": 1,
                                                       "engine": 1, "priority": 1})
        again = [s for s in steps if s["status"] == "failed"
                 or (s["status"] == "cancelled" and s.get("cancel_reason") in (DEPENDENCY_FAILED, DEPENDENCY_CANCELLED))]
        if not again:
            raise InvalidTransition(f"workflow {workflow_id} has no failed steps to retry", field="status")
        res = await self.col.update_one({"_id": workflow_id, "status": wf["status"]}, {
            "$set": {"status": RUNNING, "completed_at": None, "cancel_requested": False,
                     **{f"steps.{s['step_key']}.state": None for s in again}},
            "$inc": {"open": len(again), "n_failed": -sum(s["status"] == "failed" for s in again),
                     "n_cancelled": -sum(s["status"] == "cancelled" for s in again)}})
        if not res.modified_count:
            raise InvalidTransition(f"workflow {workflow_id} changed meanwhile; try again", field="status")
        completed = {s["_id"] for s in steps if s["status"] == "completed"}
        await self.jobs.reset_steps(again, completed)
        return [s["step_key"] for s in again]
