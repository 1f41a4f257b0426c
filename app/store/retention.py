"""Retention: finished jobs and workflows are deleted once they have been kept long enough
(docs/retention.md). Completed and cancelled ones are kept `retention_completed_seconds`,
failed ones, the dead letter, `retention_failed_seconds`.

- A standalone job gets `expires_at` in the same write that makes it terminal (`expiry`),
  and a retry out of the dead letter removes it. `expires_at` has a *sparse* index, so only
  terminal jobs are in it, and the cleaner's query is a range bounded on both sides over
  that index: its cost follows what has expired, never the size of `jobs`. It is not a TTL
  index on purpose: SecantusDB's TTL sweeper decodes every document of the collection
  under its storage lock every 60 s (measured in docs/retention.md).
- Workflow steps never expire on their own: a workflow and its steps go together, once the
  workflow has been finished for its retention, so no workflow ever points at deleted steps.
  The same sparse index holds, at `UNSETTLED` (before 1970), the failed and cancelled steps
  whose fan-out has not run yet (workflows.py): one index serves both sweeps, told apart by
  range, since every index costs each write on SecantusDB (docs/benchmarks.md).
  Finished workflows are found through the `(status, _id)` index of `workflows` with a
  bounded `_id` range: an ObjectId starts with its creation time, and a workflow finished
  before a cutoff was created before it.

- Events (`EventRetention`) are deleted `event_retention_seconds` after their `at`, oldest
  seq first, by `_id` windows from the log's head: no index on `at` (one more index on
  every event insert) and no TTL index (SecantusDB's sweep, below).

Invariant for workflows: the workflow document is deleted first, guarded on the status and
finish time that were read (a retry in between wins), and a tombstone holding its step ids
is written before that, so a cleaner that dies half-way leaves a tombstone that the next
pass finishes. Any number of processes may run the cleaner at once: every delete is
idempotent and the tombstone's `_id` lets one process at a time take a workflow.
"""

from __future__ import annotations

import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ..domain.states import JobStatus, WorkflowStatus
from .eventpages import last_of

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAILED = JobStatus.FAILED.value
FINISHED_WORKFLOW = tuple(s.value for s in WorkflowStatus if s.terminal)
STALE_TOMBSTONE = timedelta(minutes=5)
LOWEST_ID = "0" * 24  # not "": SecantusDB matches nothing with an empty-string lower bound
UNSETTLED = datetime(1900, 1, 1, tzinfo=UTC)  # `expires_at` of a step awaiting its fan-out


def awaits_fanout(step: dict) -> bool:
    """The step's fan-out is still to run (its `expires_at` is the `UNSETTLED` mark)."""
    at = step.get("expires_at")
    return at is not None and at.replace(tzinfo=UTC) < EPOCH


def keep_seconds(settings, status: str) -> int:
    return settings.retention_failed_seconds if status == FAILED else settings.retention_completed_seconds


def expiry(settings, status: str, now: datetime) -> datetime:
    """When a job that became `status` at `now` is deleted."""
    return now + timedelta(seconds=keep_seconds(settings, status))


class Expiry:
    """What a terminal write sets for retention."""

    def __init__(self, settings) -> None:
        self.settings = settings

    def at(self, status: str, now: datetime) -> datetime:
        return expiry(self.settings, status, now)

    def finished(self, step: bool, status: str, now: datetime) -> dict:
        """What a failed or cancelled job's terminal write sets: a standalone job's expiry,
        or a step's mark that its fan-out is still to run (cleared by `fanout_done`)."""
        return {"expires_at": UNSETTLED if step else self.at(status, now)}


class JobRetention:
    """Deletes expired standalone jobs (the sparse `retention` index of `jobs`)."""

    def __init__(self, col, dedupe) -> None:
        self.col, self.dedupe = col, dedupe

    async def expire_jobs(self, now: datetime, batch: int = 500, budget_seconds: float = 20.0) -> int:
        """Delete standalone jobs whose `expires_at` has passed, with their dedupe entries,
        batch after batch until none is left or `budget_seconds` have gone (the rest waits
        for the next pass), so a backlog of any size drains instead of growing. Each delete
        is guarded on the status read, so a job retried meanwhile stays."""
        deleted = 0
        deadline = time.monotonic() + budget_seconds
        while time.monotonic() < deadline:  # budget 0: nothing this pass
            found = (
                await self.col.find(
                    {"expires_at": {"$gte": EPOCH, "$lt": now}}, {"status": 1, "owner": 1, "dedupe_key": 1}
                )
                .limit(batch)
                .to_list(batch)
            )
            by_status: dict[str, list[str]] = defaultdict(list)
            for d in found:
                by_status[d["status"]].append(d["_id"])
            for status, ids in by_status.items():
                deleted += (await self.col.delete_many({"_id": {"$in": ids}, "status": status})).deleted_count
            for d in found:
                if d.get("dedupe_key"):  # the entry would be stale forever otherwise
                    await self.dedupe.drop(f"{d.get('owner')}:{d['dedupe_key']}", d["_id"])
            if len(found) < batch:
                break
        return deleted


class WorkflowRetention:
    """Deletes finished workflows with their steps and graphs, through tombstones."""

    def __init__(self, workflows, steps) -> None:
        self.workflows, self.steps = workflows, steps
        self.col, self.graphs, self.settings = workflows.col, workflows.graphs, workflows.settings
        self.tombstones = workflows.col.database["workflow_tombstones"]

    async def expire_workflows(self, now: datetime, batch: int = 100, max_pages: int = 10) -> int:
        """Delete workflows finished longer ago than their retention, each with its steps.
        Returns how many workflows were deleted."""
        await self._finish_tombstones(now)
        removed = 0
        for status in FINISHED_WORKFLOW:
            cutoff = now - timedelta(seconds=keep_seconds(self.settings, status))
            bound = str(ObjectId.from_datetime(cutoff))  # created before the cutoff
            for _ in range(max_pages):
                page = (
                    await self.col.find(
                        {"status": status, "_id": {"$gte": LOWEST_ID, "$lt": bound}},
                        {"completed_at": 1, "updated_at": 1, "created_at": 1},
                    )
                    .sort("_id", -1)
                    .limit(batch)
                    .to_list(batch)
                )
                for wf in page:
                    finished = wf.get("completed_at") or wf.get("updated_at") or wf["created_at"]
                    if finished < cutoff:
                        removed += await self._delete_workflow(wf, status, now)
                if len(page) < batch:
                    break
                bound = page[-1]["_id"]  # still running long after it was created: page past it
        return removed

    async def _delete_workflow(self, wf: dict, status: str, now: datetime) -> int:
        if await self.col.find_one({"_id": wf["_id"]}, {"_id": 1}) is None:
            return 0
        ids = [s["job_id"] for s in (await self.workflows.graph(wf["_id"])).values()]
        try:
            await self.tombstones.insert_one({"_id": wf["_id"], "job_ids": ids, "at": now})
        except DuplicateKeyError:
            return 0  # another cleaner is deleting it
        res = await self.col.delete_one({"_id": wf["_id"], "status": status, "completed_at": wf.get("completed_at")})
        if not res.deleted_count:  # retried (or re-finished) meanwhile: keep it
            await self.tombstones.delete_one({"_id": wf["_id"]})
            return 0
        await self._delete_steps(wf["_id"], ids)
        return 1

    async def _delete_steps(self, workflow_id: str, ids: list[str]) -> None:
        """The steps, the graph, then the tombstone."""
        await self.steps.delete_steps(workflow_id, ids)
        await self.graphs.delete_one({"_id": workflow_id})
        await self.tombstones.delete_one({"_id": workflow_id})

    async def _finish_tombstones(self, now: datetime, limit: int = 50) -> None:
        """Finish deletions a cleaner left half-done: steps of a workflow that is gone. A
        tombstone whose workflow still exists is either in progress elsewhere (young) or
        was left by a cleaner that died before its guarded delete (stale: dropped, and the
        workflow is considered again)."""
        for t in await self.tombstones.find({}).limit(limit).to_list(limit):
            if await self.col.find_one({"_id": t["_id"]}, {"_id": 1}) is None:
                await self._delete_steps(t["_id"], t.get("job_ids") or [])
            elif t["at"] < now - STALE_TOMBSTONE:
                await self.tombstones.delete_one({"_id": t["_id"], "at": t["at"]})


class EventRetention:
    """Deletes events older than `event_retention_seconds`, a page at a time (its newest
    event's `at`: app/store/eventpages.py). The log's seqs are dense and each event's `at`
    is its write's time, appended in change order, so what has expired is a prefix of the
    log: read in `_id` windows from its head (`meta.events_head`, the first seq that may
    remain), each a range bounded on both sides, and deleted by range. A page whose `at`
    is out of order waits for the ones before it; one without a date goes with the next
    dated one. Returns the events deleted."""

    HEAD = "events_head"

    def __init__(self, events, settings) -> None:
        self.col, self.settings = events, settings
        self.meta = events.database["meta"]

    async def expire_events(self, now: datetime, batch: int = 1000, budget_seconds: float = 20.0) -> int:
        cutoff = now - timedelta(seconds=int(self.settings.event_retention_seconds))
        head = await self.head()
        deleted, deadline = 0, time.monotonic() + budget_seconds
        while time.monotonic() < deadline:
            window = (
                await self.col.find({"_id": {"$gte": head, "$lt": head + batch}}, {"at": 1, "last": 1})
                .sort("_id", 1)
                .to_list(batch)
            )
            if not window:
                first = await self._first(head)
                if first is None or first == head:
                    break
                head = first
                await self.meta.update_one({"_id": self.HEAD}, {"$set": {"seq": head}}, upsert=True)
                continue
            expired = 0
            for i, e in enumerate(window):
                at = e.get("at")
                if not isinstance(at, datetime):
                    continue  # undated: it goes with the next dated event
                if (at if at.tzinfo else at.replace(tzinfo=UTC)) >= cutoff:
                    break
                expired = i + 1
            if not expired:
                break
            end = last_of(window[expired - 1]) + 1
            res = await self.col.delete_many({"_id": {"$gte": head, "$lt": end}})
            # The events of the pages read, unless the delete found others too (then its count).
            events = sum(last_of(p) - p["_id"] + 1 for p in window[:expired])
            deleted += events if res.deleted_count == expired else res.deleted_count
            head = end
            await self.meta.update_one({"_id": self.HEAD}, {"$max": {"seq": head}}, upsert=True)
            if expired < len(window):
                break
        return deleted

    async def head(self) -> int:
        """The first seq that may remain in the log (0 before any expiry)."""
        return int(((await self.meta.find_one({"_id": self.HEAD})) or {}).get("seq", 0))

    async def _first(self, head: int) -> int | None:
        """The log's first seq when the head mark is not inside it: the log starts later (a
        lost mark, a log seeded from a floor), or earlier (the log was dropped and began
        again, or the mark was restored from elsewhere). None: the log is empty."""
        for side in ({"$gte": head}, {"$lt": head}):
            doc = await self.col.find_one({"_id": side}, {"_id": 1}, sort=[("_id", 1)])
            if doc is not None:
                return doc["_id"]
        return None
