"""The `workflows` collection, and the workflow moves that span it and `jobs`.

A workflow document holds the counters `open`, `n_failed`, `n_cancelled`, kept by `settle`
with one `$inc` per batch. Its DAG, a map `steps.<key> = {job_id, depends_on}` in
topological order, lives in `workflow_graphs` under the same `_id`: a write on SecantusDB
costs in proportion to the document's size (an `$inc` on a workflow holding 1,000 steps
took 9.8 ms, on one holding 10,000 steps 101 ms, against 0.6 ms without them), and the
counters are written once per settled batch while the graph is written only at creation and
by add-jobs. The steps' own documents are the truth: finishing re-counts them before it
trusts `open`, and the move to a terminal status is guarded on `status: "running"`.

Invariant: every terminal transition of a step is followed by `settle(step)`, which the
lifecycle (`app/store/lifecycle.py`) owns: no caller settles by hand. A failed or
cancelled step's terminal write sets the `UNSETTLED` mark and settle clears it, so
maintenance replays any still marked. A completed step is not marked (that would cost every
step a second write); if its worker dies before settling, `repair_stalled` finds the children
still waiting on it once the workflow has been quiet for a while. Either way, a worker dying
at the wrong moment cannot leave a workflow stuck.
"""

from __future__ import annotations

import contextlib
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid

from ..domain.flowsteps import StepType, flow_document
from ..domain.models import tenant_of
from ..domain.states import JobStatus, WorkflowStatus
from ..domain.workflow import StepSpec, WorkflowSpec, validate_steps
from ..errors import InvalidTransition, NotFound
from .enqueue import TxLedger

RUNNING = WorkflowStatus.RUNNING.value


class WorkflowStore:
    def __init__(self, db: AsyncDatabase, settings, clock, jobs, lifecycle, steps) -> None:
        self.col = db["workflows"]
        self.graphs = db["workflow_graphs"]
        self.settings, self.clock = settings, clock
        self.jobs, self.lifecycle, self.steps = jobs, lifecycle, steps  # reads, moves, step moves

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("status", ASCENDING), ("_id", DESCENDING)])
        await self.col.create_index([("status", ASCENDING), ("updated_at", ASCENDING)])  # quiet ones, for repair
        if self.graphs.name not in await self.col.database.list_collection_names():
            # Before the graph had a collection of its own: move it out, once (a scan).
            async for wf in self.col.find({"steps": {"$exists": True}}, {"steps": 1}):
                await self.graphs.replace_one({"_id": wf["_id"]}, {"steps": wf["steps"]}, upsert=True)
                await self.col.update_one({"_id": wf["_id"]}, {"$unset": {"steps": ""}})
            with contextlib.suppress(CollectionInvalid):  # the mark that it ran; racing processes may both try
                await self.col.database.create_collection(self.graphs.name)

    async def get(self, workflow_id: str, steps: bool = False) -> dict:
        """The workflow; with `steps`, its graph too, as `doc["steps"]`."""
        doc = await self.col.find_one({"_id": workflow_id}) if isinstance(workflow_id, str) else None
        if doc is None:
            raise NotFound(f"workflow {workflow_id!r} not found", field="workflow_id")
        if steps:
            doc["steps"] = await self.graph(workflow_id)
        return doc

    async def graph(self, workflow_id: str) -> dict[str, dict]:
        """`{key: {job_id, depends_on}}` in topological order."""
        doc = await self.graphs.find_one({"_id": workflow_id})
        return doc["steps"] if doc else {}

    async def list(
        self, *, status: str | None = None, tenant: str | None = None, after: str | None = None, limit: int = 50
    ) -> tuple[list[dict], str | None]:
        filt: dict[str, Any] = {} if status is None else {"status": str(status)}
        if tenant is not None:
            filt["tenant"] = str(tenant)
        if after:
            filt["_id"] = {"$lt": str(after)}
        docs = await self.col.find(filt).sort("_id", -1).limit(limit + 1).to_list(limit + 1)
        return docs[:limit], (docs[limit - 1]["_id"] if len(docs) > limit else None)

    # --- creation ------------------------------------------------------------------------
    def _step_docs(
        self, wf_id: str, steps: list[StepSpec], ids: dict[str, str], owner: str, first_ord: int = 0
    ) -> list[dict]:
        children: dict[str, list[str]] = {s.key: [] for s in steps}
        for s in steps:
            for d in s.depends_on:
                if d in children:
                    children[d].append(ids[s.key])
        docs = []
        now = self.clock.now()
        for n, s in enumerate(steps, start=first_ord):
            doc = self.lifecycle.build(s, owner, now, workflow_id=wf_id, step_key=s.key, depends_on=list(s.depends_on))
            doc["_id"] = ids[s.key]
            if s.type != StepType.JOB:  # an approval, a signal, a sleep: no handler runs it
                doc.update(flow_document(s))
            # a step with dependencies is born `pending` (new_job_document)
            doc.update(
                parent_ids=[ids[d] for d in s.depends_on],
                waiting_on={p: 1 for p in sorted(ids[d] for d in s.depends_on)},
                dependents=children[s.key],
                ord=n,
            )
            if s.map_over is not None:  # runs once per item when its parents complete (mapsteps.py)
                doc.update(kind="map", map_over=s.map_over)
            docs.append(doc)
        return docs

    async def create(self, spec: WorkflowSpec, owner: str, session=None, tx: TxLedger | None = None) -> dict:
        """Store a workflow, its graph and its steps. With `session` (and the producer's
        `tx`), all of it is written in the caller's transaction: the steps' seqs and markers
        go to `tx` as `Enqueuer.insert` says, and roots of another kind than a job are left
        for `tx.ready`, moved after the commit (a crash in between leaves them pending with
        nothing to wait on, which `WorkflowFlow.repair_stalled` resumes)."""
        order = validate_steps(spec.jobs, cap=self.settings.workflow_max_steps, tenant=tenant_of(owner))
        wf_id = str(ObjectId())
        ids = {s.key: str(ObjectId()) for s in spec.jobs}
        by_key = {s.key: s for s in spec.jobs}
        now = self.clock.now()
        wf = {
            "_id": wf_id,
            "name": spec.name,
            "owner": owner,
            "tenant": tenant_of(owner),
            "status": RUNNING,
            "failure_policy": spec.failure_policy,
            "metadata": spec.metadata,
            "created_at": now,
            "updated_at": now,
            "completed_at": None,
            "total": len(ids),
            "open": len(ids),
            "n_failed": 0,
            "n_cancelled": 0,
        }
        steps = {k: {"job_id": ids[k], "depends_on": by_key[k].depends_on} for k in order}
        await self.graphs.insert_one({"_id": wf_id, "steps": steps}, session=session)  # first: a workflow has its graph
        await self.col.insert_one(wf, session=session)
        docs = self._step_docs(wf_id, [by_key[k] for k in order], ids, owner)
        # A root of another kind than a job (an approval, a sleep) is born pending, and takes
        # its kind's move once stored, as it would when its last parent completed.
        special = [d for d in docs if d.get("kind") and d["status"] == JobStatus.QUEUED.value]
        for d in special:
            d["status"] = JobStatus.PENDING.value
            d.pop("queued_at", None)
        if session is not None:  # an abort undoes all of it: no cleanup of our own
            await self.lifecycle.insert_many(docs, session=session, deferred=tx.markers)
            tx.queued.update(d["engine"] for d in docs if d["status"] == JobStatus.QUEUED.value)
            tx.ready.extend(special)
            return {**wf, "steps": steps}
        try:
            await self.lifecycle.insert_many(docs)
            if special:
                await self.steps.ready(special)
        except BaseException:
            await self.col.update_one(
                {"_id": wf_id}, {"$set": {"status": "failed", "error": "steps could not be stored"}}
            )
            await self.steps.cancel_steps(list(ids.values()), "workflow could not be stored")
            raise
        return {**wf, "steps": steps}

    async def add_steps(
        self, workflow_id: str, steps: list[StepSpec], owner: str, stamp: dict | None = None
    ) -> dict[str, str]:
        """Add steps to an unfinished workflow. New steps may depend on existing ones; a
        completed one counts as satisfied. Races with parents finishing are closed by
        registering the child with its parents first, then re-reading their status.
        `stamp`: fields every new step's document carries (`spawned_by`, app/store/spawn.py)."""
        wf = await self.get(workflow_id, steps=True)
        if wf["status"] != RUNNING:
            raise InvalidTransition(
                f"workflow {workflow_id} is {wf['status']}; steps can only be added while it runs", field="status"
            )
        existing = {k: v["job_id"] for k, v in wf["steps"].items()}
        order = validate_steps(
            steps, existing=set(existing), cap=self.settings.workflow_max_steps, tenant=tenant_of(wf["owner"])
        )
        ids = {**existing, **{s.key: str(ObjectId()) for s in steps}}
        by_key = {s.key: s for s in steps}
        res = await self.col.update_one(
            {"_id": workflow_id, "status": RUNNING}, {"$inc": {"total": len(steps), "open": len(steps)}}
        )
        if not res.modified_count:
            raise InvalidTransition(f"workflow {workflow_id} finished meanwhile", field="status")
        await self.graphs.update_one(
            {"_id": workflow_id},
            {"$set": {f"steps.{k}": {"job_id": ids[k], "depends_on": by_key[k].depends_on} for k in order}},
        )
        docs = self._step_docs(workflow_id, [by_key[k] for k in order], ids, owner, first_ord=wf["total"])
        for d in docs:
            d.update(stamp or {})
        for d in docs:  # parents outside the batch learn of their new child first
            await self.steps.add_dependents([p for p in d["parent_ids"] if p in existing.values()], d["_id"])
        for d in docs:  # insert as pending on every parent, then release the finished ones
            if d["status"] == JobStatus.QUEUED.value:
                d["status"] = JobStatus.PENDING.value
                d.pop("queued_at", None)
            d["waiting_on"] = {p: 1 for p in sorted(d["parent_ids"])}
        await self.lifecycle.insert_many(docs)
        parents = {p for d in docs for p in d["parent_ids"]}
        finished = await self.jobs.completed_among(parents)
        for d in docs:
            done = [p for p in d["parent_ids"] if p in finished]
            if done:
                await self.steps.release_children(done, [d["_id"]])
        roots = [d for d in docs if not d["parent_ids"]]
        if roots:
            await self.steps.ready(roots)
        return {s.key: ids[s.key] for s in steps}
