"""Steps a running step adds to its own workflow (`await ctx.add_steps([...])`,
docs/map-steps.md): validated as `POST /jobs/workflows/{id}/jobs` validates them, added as it
adds them, and waited for by the steps that wait for the one that spawned them.

The spawning step S is running, so every step depending on it is still pending. Before S
can complete, each of S's dependents D (except steps S spawned itself) gets the spawned
steps in its `parent_ids`, `depends_on` and `waiting_on`, and in the graph: D starts only
once S and everything S spawned completed, and sees their results in `ctx.parents`, keyed
by step key.

Invariants:
- Only S's current lease may spawn (read guarded on `{_id, status: "running",
  lease_token}`); a step that lost its lease gets `LeaseLost`.
- A spawned step waits for nothing that waits for S (it may not depend on D, nor on any
  step below D): that would wait forever, so it is refused with a 422-style error naming
  `jobs[i].depends_on`.
- Spawning is idempotent across S's attempts: steps carry `spawned_by: S`, and a key that
  an earlier attempt of S added already is not added again (its id is returned), so a
  re-run after a crash repeats the wiring and nothing else.
- Races with a spawned step finishing are closed as `WorkflowStore.add_steps` closes them:
  D is registered as its dependent first, then its status is re-read, and a completed one
  is released from D's map at once.
"""

from __future__ import annotations

from ..domain.states import JobStatus
from ..domain.workflow import StepSpec, descendants, validate_steps
from ..errors import LeaseLost, ValidationFailed
from .db import find_in

PENDING = JobStatus.PENDING.value


class Spawner:
    def __init__(self, col, settings, workflows, jobs, steps) -> None:
        self.col, self.settings = col, settings
        self.workflows, self.jobs, self.steps = workflows, jobs, steps

    async def add(self, job_id: str, token: str, steps: list[StepSpec]) -> dict[str, str]:
        """Add `steps` to the workflow of running step `job_id` (leased with `token`).
        Returns `{key: job id}`. Raises LeaseLost, ValidationFailed or InvalidTransition
        (the workflow is not running), having added nothing."""
        me = await self.col.find_one(
            {"_id": job_id, "status": JobStatus.RUNNING.value, "lease_token": token},
            {"workflow_id": 1, "step_key": 1, "dependents": 1, "owner": 1},
        )
        if me is None:
            raise LeaseLost(f"job {job_id} is no longer leased with this token", job_id=job_id)
        if not me.get("workflow_id"):
            raise ValidationFailed(
                f"job {job_id} is not a workflow step: only a step can add steps to its workflow", field="workflow_id"
            )
        wf_id, key = me["workflow_id"], me["step_key"]
        graph = await self.workflows.graph(wf_id)
        there = {s.key: graph[s.key]["job_id"] for s in steps if s.key in graph}
        ours = {d["_id"] for d in await find_in(self.col, list(there.values()), {"spawned_by": job_id}, {"_id": 1})}
        again = {k: i for k, i in there.items() if i in ours}  # added by an earlier attempt of this step
        # The same checks as the endpoint, with indices into `steps` as the handler gave them.
        validate_steps(steps, existing=set(graph) - set(again), cap=self.settings.workflow_max_steps)
        mine = {
            d["_id"] for d in await find_in(self.col, me.get("dependents") or [], {"spawned_by": job_id}, {"_id": 1})
        }
        waiters = [d for d in me.get("dependents") or [] if d not in mine]
        below = self._below(graph, [k for k, v in graph.items() if v["job_id"] in set(waiters)])
        for i, s in enumerate(steps):
            for d in s.depends_on:
                if d in below:
                    raise ValidationFailed(
                        f"step {s.key!r} depends on {d!r}, which waits for the steps {key!r} adds: neither could start",
                        field=f"jobs[{i}].depends_on",
                        key=s.key,
                    )
        new = [s for s in steps if s.key not in again]
        ids = dict(again)
        if new:
            ids.update(await self.workflows.add_steps(wf_id, new, me["owner"], stamp={"spawned_by": job_id}))
        await self._wait_for_them(wf_id, graph, waiters, [s.key for s in steps], [ids[s.key] for s in steps])
        return {s.key: ids[s.key] for s in steps}

    @staticmethod
    def _below(graph: dict, roots: list[str]) -> set[str]:
        """`roots` and every step below them."""
        children: dict[str, list[str]] = {}
        for k, v in graph.items():
            for d in v["depends_on"]:
                children.setdefault(d, []).append(k)
        return set(roots) | descendants(children, roots)

    async def _wait_for_them(
        self, wf_id: str, graph: dict, waiters: list[str], keys: list[str], spawned: list[str]
    ) -> None:
        """Each pending waiter also waits for the spawned steps: registered as their
        dependent, then given them as parents, then released from those already completed."""
        live = [d["_id"] for d in await find_in(self.col, waiters, {"status": PENDING}, {"_id": 1})]
        if not live or not spawned:
            return
        for d in live:
            await self.steps.add_dependents(spawned, d)
        for d in live:
            await self.col.update_one(
                {"_id": d, "status": PENDING},
                {
                    "$set": {f"waiting_on.{p}": 1 for p in spawned},
                    "$addToSet": {"parent_ids": {"$each": spawned}, "depends_on": {"$each": keys}},
                },
            )
        key_of = {v["job_id"]: k for k, v in graph.items()}
        await self.workflows.graphs.update_one(
            {"_id": wf_id},
            {"$addToSet": {f"steps.{key_of[d]}.depends_on": {"$each": keys} for d in live if d in key_of}},
        )
        done = sorted(await self.jobs.completed_among(spawned))
        if done:
            await self.steps.release_children(done, live)
