"""Map steps (docs/map-steps.md): a step with `map_over` runs once per item of a list in its
parent's result, and completes with the list of its children's results, in item order.

Owns the two moves a map step takes through `StepMoves.kinds`, and their repair:
- `kind: "map"`, once its last parent completed (`expand`): the list is read from the
  parent's result (app/domain/mapover.py). No list there, or a longer one than the cap: the
  step fails (`refuse`). An empty list: it completes at once with `[]` (`join`). Otherwise
  one guarded write claims the expansion: the step becomes `kind: "map_join"`, pending on N
  new child ids it records in order (`map_children`, also added to its `parent_ids` and its
  `depends_on` as `key[i]`). Then the children are made: counted into the workflow,
  registered in its graph, and inserted `queued` with one `insert_many` and one seq `$inc`
  per band, however many there are.
- `kind: "map_join"`, once its last child completed (`finish`): it completes with the list of
  their results (`join`), or fails if that list would not fit in a document.

Invariants:
- Exactly one process expands a map step: the claim is guarded on `{status: "pending",
  kind: "map", waiting_on: <the map read>}`, as `Enqueuer.ready` guards a job step.
- Everything after the claim can be redone from the step's document alone (the child ids
  are recorded by the claim; the items are re-read from the parent's result, which never
  changes), and is idempotent: the workflow's counters are guarded by a per-map mark
  (`mapped.<step id>`), the graph is `$set`, only missing children are inserted. So a
  process that dies half-way leaves a map step that `resume` finishes once the workflow is
  quiet (`WorkflowFlow.repair_stalled`).
- A mapped child is an ordinary step: it depends on the map step's parents (completed, so it
  is queued at once), its one dependent is the map step, and the failure policy treats it as
  any other step (the graph says the map step depends on it).
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId

from ..domain.mapover import NotMappable, child_key, resolve, split
from ..domain.models import JobSpec
from ..domain.retry import RetryConfig
from ..domain.states import JobStatus, WorkflowStatus
from .db import find_in
from .documents import bson_size, error_entry

MAP, JOIN = "map", "map_join"
PENDING = JobStatus.PENDING.value
# A job document must stay under MongoDB's 16 MiB; a handler's result is capped the same
# way (app/worker/outcome.py MAX_RESULT_BYTES).
MAX_JOIN_BYTES = 12 * 1024 * 1024
FIELDS = {
    "engine": 1,
    "operation": 1,
    "parameters": 1,
    "priority": 1,
    "name": 1,
    "retry_config": 1,
    "timeout_seconds": 1,
    "owner": 1,
    "workflow_id": 1,
    "step_key": 1,
    "depends_on": 1,
    "parent_ids": 1,
    "map_over": 1,
    "map_children": 1,
    "map_ord": 1,
    "kind": 1,
}


def _guard(step: dict, exact: bool, kind: str) -> dict:
    """What a move of a ready map step is guarded on: its kind, and the map it was read with
    (`exact`, a fan-out's direct child) or an empty one."""
    return {"kind": kind, "waiting_on": {p: 1 for p in step.get("waiting_on") or {}} if exact else {}}


class MapSteps:
    def __init__(self, col, settings, clock, workflows, lifecycle, steps) -> None:
        self.col, self.settings, self.clock = col, settings, clock
        self.workflows, self.lifecycle, self.steps = workflows, lifecycle, steps
        steps.kinds[MAP] = self.expand
        steps.kinds[JOIN] = self.finish
        steps.resumers[JOIN] = self.resume

    # --- kind "map": the parent completed ------------------------------------------------
    async def expand(self, steps: list[dict], exact: bool) -> int:
        moved = 0
        for s in steps:
            moved += await self._expand(s["_id"], _guard(s, exact, MAP))
        return moved

    async def _expand(self, step_id: str, guard: dict) -> int:
        m = await self.col.find_one({"_id": step_id, "status": PENDING, **guard}, FIELDS)
        if m is None:
            return 0
        key = m["step_key"]
        source = await find_in(
            self.col, m.get("parent_ids") or [], {"step_key": split(m["map_over"])[0]}, {"result": 1}
        )
        if not source:
            return 0
        try:
            items = resolve(m["map_over"], source[0].get("result"), self.settings.map_cap())
        except NotMappable as exc:
            return await self._refuse(m, guard, exc.code, f"step {key!r}: {exc.message}")
        if not items:
            return await self._join(m, guard, [])
        wf = await self.workflows.col.find_one({"_id": m["workflow_id"]}, {"total": 1})
        total, cap = (wf or {}).get("total", 0), self.settings.workflow_max_steps
        if total + len(items) > cap:
            return await self._refuse(
                m,
                guard,
                "map_too_large",
                f"step {key!r}: map_over {m['map_over']!r} is a list of {len(items)} items; the workflow would have "
                f"{total + len(items)} steps, at most {cap}",
            )
        ids = [str(ObjectId()) for _ in items]
        keys = [child_key(key, i) for i in range(len(items))]
        claim = {
            "kind": JOIN,
            "waiting_on": {c: 1 for c in ids},
            "map_children": ids,
            "map_ord": total,  # the children's `ord`s follow the workflow's steps
            "parent_ids": [*m["parent_ids"], *ids],
            "depends_on": [*m["depends_on"], *keys],
        }
        res = await self.col.update_one({"_id": step_id, "status": PENDING, **guard}, {"$set": claim})
        if not res.modified_count:
            return 0  # another process expanded it, or it was cancelled meanwhile
        await self._make_children({**m, **claim}, items, fresh=True)
        return 1

    async def _make_children(self, m: dict, items: list, fresh: bool) -> None:
        """Count, register and insert the children the claim recorded (those missing, unless
        `fresh`), then make sure the map step still waits for them."""
        wf_id, ids = m["workflow_id"], m["map_children"]
        keys = [child_key(m["step_key"], i) for i in range(len(ids))]
        mark = f"mapped.{m['_id']}"
        now = self.clock.now()
        res = await self.workflows.col.update_one(
            {"_id": wf_id, "status": WorkflowStatus.RUNNING.value, mark: None},
            {"$inc": {"total": len(ids), "open": len(ids)}, "$set": {mark: len(ids), "updated_at": now}},
        )
        if not res.modified_count and await self.workflows.col.find_one({"_id": wf_id, mark: len(ids)}) is None:
            return  # the workflow finished meanwhile (so the map step was cancelled): no children
        declared = [d for d in m["depends_on"] if d not in set(keys)]
        parents = [p for p in m["parent_ids"] if p not in set(ids)]
        # One merge of the graph's `steps` on the server: a `$set` of N dotted paths cost
        # SecantusDB 2.1 s for 1,000 children, the merge a few ms. The map step's own entry is
        # rewritten whole: its parents have completed, so nothing else writes it any more.
        entries = {k: {"job_id": c, "depends_on": declared} for k, c in zip(keys, ids, strict=True)}
        entries[m["step_key"]] = {"job_id": m["_id"], "depends_on": [*declared, *keys]}
        await self.workflows.graphs.update_one(
            {"_id": wf_id}, [{"$set": {"steps": {"$mergeObjects": ["$steps", {"$literal": entries}]}}}]
        )
        have = set() if fresh else {d["_id"] for d in await find_in(self.col, ids, None, {"_id": 1})}
        template = self.lifecycle.build(
            JobSpec(
                engine=m["engine"],
                operation=m["operation"],
                priority=m["priority"],
                name=m.get("name"),
                timeout_seconds=m.get("timeout_seconds"),
                retry_config=RetryConfig(**m["retry_config"]) if m.get("retry_config") else None,
            ),
            m["owner"],
            now,
            workflow_id=wf_id,
        )
        params = m.get("parameters") or {}
        docs = [
            {
                **template,
                "_id": c,
                "parameters": {**params, "item": item, "index": i},
                "step_key": keys[i],
                "depends_on": declared,
                "parent_ids": parents,
                "waiting_on": {},
                "dependents": [m["_id"]],
                "ord": m.get("map_ord", 0) + i,
                "map_of": m["_id"],
            }
            for i, (c, item) in enumerate(zip(ids, items, strict=True))
            if c not in have
        ]
        if docs:
            await self.lifecycle.insert_many(docs)
        # The map step was cancelled while its children were made (a fail_fast elsewhere, a
        # user): they go too. (A cancel that read the open steps before the insert and
        # cancels the map step after this read misses them: they run, and the workflow still
        # ends once they finish.)
        now_m = await self.col.find_one({"_id": m["_id"]}, {"status": 1, "cancel_reason": 1})
        if now_m is not None and now_m["status"] != PENDING:
            reason = now_m.get("cancel_reason") or f"map step {m['step_key']!r} is {now_m['status']}"
            await self.lifecycle.settle_now(await self.steps.cancel_steps(ids, reason))

    # --- kind "map_join": the last child completed ---------------------------------------
    async def finish(self, steps: list[dict], exact: bool) -> int:
        moved = 0
        for s in steps:
            guard = _guard(s, exact, JOIN)
            m = await self.col.find_one(
                {"_id": s["_id"], "status": PENDING, **guard}, {"map_children": 1, "step_key": 1}
            )
            if m is None:
                continue
            ids = m.get("map_children") or []
            kids = {d["_id"]: d for d in await find_in(self.col, ids, None, {"status": 1, "result": 1})}
            if any((kids.get(c) or {}).get("status") != JobStatus.COMPLETED.value for c in ids):
                continue  # not every child completed (a retry reset one meanwhile): not ready
            results = [kids[c].get("result") for c in ids]
            size = bson_size(results)
            if size > MAX_JOIN_BYTES:
                moved += await self._refuse(
                    m,
                    guard,
                    "map_results_too_large",
                    f"step {m['step_key']!r}: its {len(ids)} children's results add up to {size} bytes; "
                    f"a map step's result may hold at most {MAX_JOIN_BYTES}",
                )
            else:
                moved += await self._join(m, guard, results)
        return moved

    # --- repair --------------------------------------------------------------------------
    async def resume(self, steps: list[dict]) -> int:
        """Map steps of a quiet workflow whose children are not all there: their process
        died between the claim and the insert. Returns how many were finished here."""
        done = 0
        for s in steps:
            m = await self.col.find_one({"_id": s["_id"], "status": PENDING, "kind": JOIN}, FIELDS)
            ids = (m or {}).get("map_children") or []
            if not ids or len(await find_in(self.col, ids, None, {"_id": 1})) == len(ids):
                continue
            source = await find_in(self.col, m["parent_ids"], {"step_key": split(m["map_over"])[0]}, {"result": 1})
            items = resolve(m["map_over"], source[0].get("result"), len(ids)) if source else []
            if len(items) != len(ids):
                continue  # cannot happen: a completed result never changes
            await self._make_children(m, items, fresh=False)
            done += 1
        return done

    # --- the two ends --------------------------------------------------------------------
    async def _join(self, m: dict, guard: dict, result: list[Any]) -> int:
        if not await self.steps.join(m["_id"], guard, result):
            return 0
        await self.lifecycle.settle_now([m["_id"]])
        return 1

    async def _refuse(self, m: dict, guard: dict, code: str, message: str) -> int:
        error = error_entry(code, message, 0, self.clock.now())
        if not await self.steps.refuse(m["_id"], guard, error):
            return 0
        await self.lifecycle.settle_now([m["_id"]])
        return 1
