"""The workflow-step side of `JobStore`: the moves on `jobs` that workflows make.

A step waits in `pending` with `waiting_on`, a map whose keys are the ids of its unfinished
parents: the counter of what it still waits for. When parents complete, their fan-out
`$unset`s their keys in each child's map; a child whose map is empty moves to `queued`,
guarded on `{status: "pending", waiting_on: {}}`, so of several parents finishing at once
exactly one promotes it. Unsetting a key is idempotent, which is what makes a fan-out safe
to replay after a crash (see `unsettled`), and costs the same for a child of 2
parents as for a fan-in of 10,000.
"""

from __future__ import annotations

from typing import Any

from app.domain.states import JobStatus
from app.store.db import chunks, find_in, update_in
from app.store.engines import DEFAULT_TENANT, band
from app.store.retention import EPOCH, UNSETTLED

PENDING = JobStatus.PENDING.value
WAITING = (JobStatus.PENDING.value, JobStatus.SCHEDULED.value, JobStatus.QUEUED.value)


class StepMixin:
    async def release_children(self, parent_ids: list[str], children: list[str]) -> int:
        """The parents completed: unblock their children and queue those with nothing left
        to wait on. Children that waited only on these parents (a fan-out) go straight to
        queued, guarded on the exact map they had; the rest have the parents unset from
        their maps (one write, however many parents finished together) and are queued if
        that emptied them."""
        if not children:
            return 0
        done = set(parent_ids)
        docs = await find_in(self.col, children, {"status": PENDING},
                             {"engine": 1, "priority": 1, "tenant": 1, "ord": 1, "waiting_on": 1})
        direct = [d for d in docs if set(d.get("waiting_on") or {}) <= done]
        moved = await self.queue_ready(direct, exact=True) if direct else 0
        rest = [d["_id"] for d in docs if d not in direct]
        if moved < len(direct):  # a map changed under us: those take the general path
            rest += [d["_id"] for d in direct]
        if rest:
            await update_in(self.col, rest, {"status": PENDING}, {"$unset": {f"waiting_on.{p}": "" for p in parent_ids}})
            ready = await find_in(self.col, rest, {"status": PENDING, "waiting_on": {}},
                                  {"engine": 1, "priority": 1, "tenant": 1, "ord": 1})
            moved += await self.queue_ready(ready) if ready else 0
        return moved

    async def queue_ready(self, steps: list[dict], exact: bool = False) -> int:
        """pending → queued for steps with nothing left to wait on: one `update_many` per
        (engine, band) and chunk of `IN_CHUNK` steps, the seq computed on the server from
        each step's `ord` (its place in the workflow), so a fan-out of thousands is a few
        dozen writes, not thousands. The numbers may be sparse; windows skip gaps."""
        groups: dict[tuple, list[dict]] = {}
        for s in steps:
            waited = tuple(sorted(s.get("waiting_on") or {})) if exact else ()
            groups.setdefault((s["engine"], band(s["priority"], s.get("tenant", DEFAULT_TENANT)), waited), []).append(s)
        moved = 0
        for (engine, key, waited), group in groups.items():
            group.sort(key=lambda m: m["ord"])
            # One enqueue per chunk: the band's cursor waits only for its own chunk, so
            # workers start on the first steps while later chunks are still being written.
            for members in chunks(group):
                lo, span = members[0]["ord"], members[-1]["ord"] - members[0]["ord"] + 1
                async with self.engines.enqueue(engine, key, span, jobs=len(members)) as first:
                    changed = (await self.col.update_many(
                        {"_id": {"$in": [m["_id"] for m in members]}, "status": PENDING, "waiting_on": {p: 1 for p in waited}},
                        [{"$set": {"status": JobStatus.QUEUED.value, "seq": {"$add": [first - lo, "$ord"]},
                                   "queued_at": self.clock.now(), "waiting_on": {"$literal": {}}}}])).modified_count
                await self.engines.count_left_queue(engine, len(members) - changed)
                moved += changed
        return moved

    async def cancel_steps(self, ids: list[str], reason: str) -> list[str]:
        """Cancel these steps if they still wait; ask running ones to stop. Returns the ids
        cancelled here. One `update_many` per (status, engine), so a 10,000-step workflow
        is cancelled in a handful of writes."""
        if not ids:
            return []
        now = self.clock.now()
        found = await find_in(self.col, ids, {"status": {"$in": list(WAITING)}}, {"engine": 1, "status": 1})
        groups: dict[tuple[str, str], list[str]] = {}
        for j in found:
            groups.setdefault((j["status"], j["engine"]), []).append(j["_id"])
        for (status, engine), members in groups.items():
            changed = await update_in(
                self.col, members, {"status": status},
                {"$set": {"status": JobStatus.CANCELLED.value, "completed_at": now, "cancel_reason": reason,
                          "expires_at": UNSETTLED}})
            if status == JobStatus.QUEUED.value:
                await self.engines.count_left_queue(engine, changed)
        await update_in(self.col, ids, {"status": JobStatus.RUNNING.value},
                        {"$set": {"cancel_requested": True, "cancel_reason": reason}})
        mine = await find_in(self.col, [j["_id"] for j in found], {"status": JobStatus.CANCELLED.value, "completed_at": now},
                             {"_id": 1})
        return [d["_id"] for d in mine]

    async def steps_of(self, workflow_id: str, projection: dict | None = None) -> list[dict]:
        return await self.col.find({"workflow_id": workflow_id}, projection).to_list(None)

    async def by_ids(self, ids: list[str], filt: dict | None = None, projection: dict | None = None) -> list[dict]:
        """These jobs (those matching `filt`, a filter built by the store), read in chunks."""
        return await find_in(self.col, ids, filt, projection)

    async def completed_among(self, ids) -> set[str]:
        return {d["_id"] for d in await find_in(self.col, list(ids), {"status": JobStatus.COMPLETED.value}, {"_id": 1})}

    async def delete_steps(self, workflow_id: str, ids: list[str]) -> None:
        """A deleted workflow's steps, by `_id` (index-bounded) in chunks."""
        for part in chunks(ids):
            await self.col.delete_many({"_id": {"$in": part}, "workflow_id": workflow_id})

    async def parent_results(self, job: dict, cache: dict | None = None) -> dict[str, Any]:
        """`{step_key: result}` of the job's parents. A completed step's result never changes
        (a workflow retry re-runs only failed and cancelled steps), so `cache` may keep them:
        in a fan-out every child would otherwise read the same parent. The answer is built
        from what was read too, so a fan-in wider than a bounded cache gets every parent."""
        cache = {} if cache is None else cache
        ids = job.get("parent_ids") or []
        found = {i: cache[i] for i in ids if i in cache}
        found.update(await self.load_parent_results([job], cache))
        return dict(found[i] for i in ids if i in found)

    async def load_parent_results(self, jobs: list[dict], cache: dict) -> dict[str, tuple]:
        """Put the results of these jobs' parents that `cache` lacks into it, in one read,
        and return what was read: a worker calls it for each claimed batch, so 64 children
        of one parent read it once."""
        missing = sorted({i for j in jobs for i in j.get("parent_ids") or [] if i not in cache})
        read = {d["_id"]: (d["step_key"], d.get("result"))
                for d in (await find_in(self.col, missing, None, {"step_key": 1, "result": 1}) if missing else [])}
        for k, v in read.items():  # item by item: a bounded cache evicts in __setitem__
            cache[k] = v
        return read

    async def fanout_done(self, job_ids: list[str]) -> None:
        if job_ids:
            await update_in(self.col, job_ids, {"expires_at": UNSETTLED}, {"$unset": {"expires_at": ""}})

    async def unsettled(self, finished_before, limit: int = 100) -> list[dict]:
        """Finished steps whose fan-out has not run although they finished before
        `finished_before` (their worker died in between); younger ones are left to the
        worker's own settler, so a replay does not race it."""
        # Only `expires_at` in the filter: SecantusDB scans the collection when a query adds
        # a field its index lacks. Marked steps are few; their status is checked here.
        found = await self.col.find({"expires_at": {"$gte": UNSETTLED, "$lt": EPOCH}},
                                    {"completed_at": 1, "status": 1}).limit(limit * 3).to_list(limit * 3)
        return [d for d in found if JobStatus(d["status"]).terminal
                and (not d.get("completed_at") or d["completed_at"] < finished_before)][:limit]

    async def add_dependents(self, parent_ids: list[str], child_id: str) -> None:
        if parent_ids:
            await update_in(self.col, parent_ids, None, {"$addToSet": {"dependents": child_id}})

    async def reset_steps(self, steps: list[dict], completed: set[str]) -> int:
        """failed/cancelled steps back to pending (waiting on their unfinished parents), or
        straight to queued when every parent has completed. Attempts start again."""
        now = self.clock.now()
        ready: list[dict] = []
        moved = 0
        for s in steps:
            waiting = {p: 1 for p in s.get("parent_ids", []) if p not in completed}
            res = await self.col.update_one(
                {"_id": s["_id"], "status": s["status"]},
                {"$set": {"status": PENDING, "waiting_on": waiting, "attempt": 0, "retry_count": 0,
                          "completed_at": None, "started_at": None, "cancel_requested": False, "reset_at": now},
                 "$unset": {"cancel_reason": "", "finished_token": ""}})
            moved += res.modified_count
            if res.modified_count and not waiting:
                ready.append(s)
        if ready:
            await self.queue_ready(ready)
        return moved
