"""The moves on `jobs` that workflows make: release children whose parents completed,
cancel open steps, reset failed ones for a retry, and the `dependents` and fan-out marks.

A step waits in `pending` with `waiting_on`, a map whose keys are the ids of its unfinished
parents: the counter of what it still waits for. When parents complete, their fan-out
`$unset`s their keys in each child's map; a child whose map is empty moves to `queued`,
guarded on `{status: "pending", waiting_on: {}}`, so of several parents finishing at once
exactly one promotes it. Unsetting a key is idempotent, which is what makes a fan-out safe
to replay after a crash (see `unsettled`), and costs the same for a child of 2
parents as for a fan-in of 10,000.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..domain import states
from ..domain.states import JobStatus
from .db import chunks, find_in, update_in
from .documents import BAND_FIELDS
from .retention import UNSETTLED

PENDING = JobStatus.PENDING.value
WAITING = tuple(s.value for s in states.WAITING)


READY_FIELDS = {**BAND_FIELDS, "ord": 1, "kind": 1}  # what `ready` needs of a step


class StepMoves:
    def __init__(self, col, clock, enqueuer, expiry) -> None:
        self.col, self.clock, self.enqueuer, self.expiry = col, clock, enqueuer, expiry
        # What a step of each non-job kind does when nothing is left to wait on (app/store/
        # flowsteps.py and friends register here); a job step is queued.
        self.kinds: dict[str, Callable[[list[dict], bool], Awaitable[int]]] = {}
        # What a kind does to finish a move its process died in the middle of (a map step's
        # expansion, app/store/mapsteps.py), given its pending steps of a quiet workflow.
        self.resumers: dict[str, Callable[[list[dict]], Awaitable[int]]] = {}

    async def ready(self, steps: list[dict], exact: bool = False) -> int:
        """Steps with nothing left to wait on (guarded as `Enqueuer.ready` guards them): a job
        step is queued; a step of another `kind` (an approval, a signal, a sleep, a map)
        takes its kind's move. Returns how many moved."""
        by_kind: dict[str, list[dict]] = {}
        for st in steps:
            by_kind.setdefault(st.get("kind") or "job", []).append(st)
        moved = 0
        for kind, group in by_kind.items():
            if kind == "job":
                moved += await self.enqueuer.ready(group, exact=exact)
            else:
                moved += await self.kinds[kind](group, exact)
        return moved

    async def resume(self, pending: list[dict]) -> int:
        """Pending steps of a quiet workflow (`WorkflowFlow.repair_stalled`): those whose map
        is empty but that never took their move (their process died between the `$unset`
        and the move) take it now; those of a kind with a resumer are handed to it."""
        stalled = [s["_id"] for s in pending if not s.get("waiting_on")]
        found = await find_in(self.col, stalled, {"status": PENDING, "waiting_on": {}}, READY_FIELDS)
        moved = await self.ready(found) if found else 0
        for kind, resume in self.resumers.items():
            mine = [s for s in pending if s.get("kind") == kind and s.get("waiting_on")]
            moved += await resume(mine) if mine else 0
        return moved

    # --- a map step's own ends (app/store/mapsteps.py), each guarded on its kind and map --
    async def join(self, step_id: str, guard: dict, result: list) -> bool:
        """pending → completed: a map step whose mapped children all completed (or that had
        no items) takes the list of their results, in item order. The caller settles it."""
        res = await self.col.update_one(
            {"_id": step_id, "status": PENDING, **guard},
            {
                "$set": {
                    "status": JobStatus.COMPLETED.value,
                    "result": result,
                    "completed_at": self.clock.now(),
                    "progress.percent": 100.0,
                    "waiting_on": {},
                }
            },
        )
        return bool(res.modified_count)

    async def refuse(self, step_id: str, guard: dict, error: dict) -> bool:
        """pending → failed: a map step whose parent's result has no list to map at its
        path, or a longer one than the cap. Marked unsettled; the caller settles it."""
        now = self.clock.now()
        res = await self.col.update_one(
            {"_id": step_id, "status": PENDING, **guard},
            {
                "$set": {
                    "status": JobStatus.FAILED.value,
                    "last_error": error,
                    "completed_at": now,
                    **self.expiry.finished(True, JobStatus.FAILED.value, now),
                },
                "$push": {"errors": error},
            },
        )
        return bool(res.modified_count)

    async def release_children(self, parent_ids: list[str], children: list[str]) -> int:
        """The parents completed: unblock their children and queue those with nothing left
        to wait on. Children that waited only on one of these parents (a fan-out) go
        straight to queued, guarded on the exact map they had, chunk by chunk, so workers
        start on the first while later ones are read; the rest have the parents unset from
        their maps (one write, however many parents finished together) and are queued if
        that emptied them. A fan-in's wide map is never read here: the direct children are
        found by their map's value, not by reading every child's map."""
        if not children:
            return 0
        one = [{p: 1} for p in dict.fromkeys(parent_ids)]
        direct_filter = {"status": PENDING, "waiting_on": one[0] if len(one) == 1 else {"$in": one}}

        def read(part: list[str]) -> asyncio.Task:
            return asyncio.ensure_future(find_in(self.col, part, direct_filter, {**READY_FIELDS, "waiting_on": 1}))

        parts = list(chunks(children))
        moved, rest = 0, []
        # The next chunk is read while this one is queued: the queueing is the slow half.
        ahead = read(parts[0])
        try:
            for i, part in enumerate(parts):
                direct = await ahead
                if i + 1 < len(parts):
                    ahead = read(parts[i + 1])
                n = await self.ready(direct, exact=True) if direct else 0
                moved += n
                found = {d["_id"] for d in direct}
                # a map changed under us: those take the general path too (guarded on pending)
                rest += [c for c in part if c not in found or n < len(direct)]
        finally:
            ahead.cancel()
        if rest:
            await update_in(
                self.col, rest, {"status": PENDING}, {"$unset": {f"waiting_on.{p}": "" for p in parent_ids}}
            )
            ready = await find_in(
                self.col,
                rest,
                {"status": PENDING, "waiting_on": {}},
                READY_FIELDS,
            )
            moved += await self.ready(ready) if ready else 0
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
                self.col,
                members,
                {"status": status},
                {
                    "$set": {
                        "status": JobStatus.CANCELLED.value,
                        "completed_at": now,
                        "cancel_reason": reason,
                        "expires_at": UNSETTLED,
                    }
                },
            )
            if status == JobStatus.QUEUED.value:
                await self.enqueuer.left(engine, changed)
        await update_in(
            self.col,
            ids,
            {"status": JobStatus.RUNNING.value},
            {"$set": {"cancel_requested": True, "stop_reason": reason}},  # see Lifecycle.cancel
        )
        mine = await find_in(
            self.col, [j["_id"] for j in found], {"status": JobStatus.CANCELLED.value, "completed_at": now}, {"_id": 1}
        )
        return [d["_id"] for d in mine]

    async def delete_steps(self, workflow_id: str, ids: list[str]) -> None:
        """A deleted workflow's steps, by `_id` (index-bounded) in chunks."""
        for part in chunks(ids):
            await self.col.delete_many({"_id": {"$in": part}, "workflow_id": workflow_id})

    async def fanout_done(self, job_ids: list[str]) -> None:
        if job_ids:
            await update_in(self.col, job_ids, {"expires_at": UNSETTLED}, {"$unset": {"expires_at": ""}})

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
            waiting = {p: 1 for p in sorted(s.get("parent_ids", [])) if p not in completed}
            res = await self.col.update_one(
                {"_id": s["_id"], "status": s["status"]},
                {
                    "$set": {
                        "status": PENDING,
                        "waiting_on": waiting,
                        "attempt": 0,
                        "retry_count": 0,
                        "completed_at": None,
                        "started_at": None,
                        "cancel_requested": False,
                        "reset_at": now,
                    },
                    "$unset": {"cancel_reason": "", "stop_reason": "", "finished_token": ""},
                },
            )
            moved += res.modified_count
            if res.modified_count and not waiting:
                ready.append(s)
        if ready:
            await self.ready(ready)
        return moved
