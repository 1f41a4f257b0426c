"""The `jobs` collection's indexes and its read side: one job, listing with cursor
pagination, history, queue figures, a workflow's steps and their results, and the jobs
maintenance looks for. Moves are in `lifecycle.py`, `enqueue.py` and `steps.py`; claims in
`claimer.py`.

Filters are built here from validated values only, as plain equality, so no client JSON
ever becomes part of a MongoDB filter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING

from ..domain.states import JobStatus
from ..errors import NotFound
from .db import IN_CHUNK, ensure_index, find_in
from .engines import DEFAULT_TENANT, band, band_floor, busy_bands
from .retention import EPOCH, UNSETTLED

POSITION_CAP = 1000  # most sequence numbers one position count looks at
CLAIM_INDEX = [
    ("engine", ASCENDING),
    ("status", ASCENDING),
    ("priority", ASCENDING),
    ("tenant", ASCENDING),
    ("seq", ASCENDING),
]
RESCUE_FIELDS = {
    "engine": 1,
    "priority": 1,
    "tenant": 1,
    "lane": 1,
    "attempt": 1,
    "retry_config": 1,
    "lease_owner": 1,
    "lease_token": 1,
    "lease_expires_at": 1,
    "workflow_id": 1,
}


def dense(ids: list[str]) -> bool:
    """Sorted ObjectId strings from one process in one second whose counters span at most
    twice their number: no more than that many ids lie between the first and the last."""
    prefix = ids[0][:18]
    if len(ids[0]) != 24 or any(len(i) != 24 or i[:18] != prefix for i in ids):
        return False
    try:
        return int(ids[-1][18:], 16) - int(ids[0][18:], 16) < 2 * len(ids)
    except ValueError:
        return False


class JobQueries:
    def __init__(self, col, settings, engines, claimer=None) -> None:
        self.col, self.settings, self.engines = col, settings, engines
        self.claimer = claimer  # its claim windows answer `oldest_queued_at`

    async def ensure_indexes(self) -> None:
        """Few indexes on purpose: each one costs every transition a write on SecantusDB
        (measured in docs/claiming.md). Everything else is found through these."""
        c = self.col
        # The claim window of one band (priority, tenant); its (engine, status) prefix also
        # finds running jobs for the rescuer.
        await c.create_index(CLAIM_INDEX)
        old = [("engine", 1), ("status", 1), ("priority", 1), ("seq", 1)]
        for name, info in (await c.index_information()).items():
            if [(k, int(v)) for k, v in info["key"]] == old:  # before per-tenant bands: upgrade once
                await c.update_many({"tenant": {"$exists": False}}, {"$set": {"tenant": DEFAULT_TENANT}})
                await c.drop_index(name)
        if "fanout_pending_1" in await c.index_information():  # before the mark moved into retention's index
            await c.update_many(
                {"fanout_pending": True}, {"$set": {"expires_at": UNSETTLED}, "$unset": {"fanout_pending": ""}}
            )
            await c.drop_index("fanout_pending_1")
        # A tenant's jobs by status, newest first: the quota's waiting count, lists and history
        # (a read per status, merged), the dead letter.
        await c.create_index([("tenant", ASCENDING), ("status", ASCENDING), ("_id", ASCENDING)])
        # Schema 3 and 4 had a `(tenant, _id)` index for lists; it cost every transition a
        # write on SecantusDB, and no query of this version uses it.
        if "tenant_1__id_1" in await c.index_information():
            await c.drop_index("tenant_1__id_1")
        # The promoter: only scheduled jobs are in it.
        await c.create_index("run_at", partialFilterExpression={"status": JobStatus.SCHEDULED.value})
        # A workflow's steps. Sparse, not partial: SecantusDB's planner never picks a partial
        # index here. Its keys never change, so only an insert writes to it.
        await ensure_index(c, [("workflow_id", ASCENDING), ("_id", ASCENDING)], sparse=True)
        # Retention: sparse, only terminal standalone jobs are in it (docs/retention.md).
        await self.col.create_index("expires_at", sparse=True, name="retention")

    async def tenants(self) -> list[str]:
        """Every tenant that has jobs: a `distinct` over the `(tenant, status, _id)` index (on
        MongoDB a DISTINCT_SCAN, one key per tenant)."""
        return sorted(str(t) for t in await self.col.distinct("tenant"))

    async def page(
        self,
        filt: dict[str, Any],
        *,
        tenant: str | None,
        after: str | None = None,
        limit: int = 50,
        newest: bool = True,
        projection: dict | None = None,
    ) -> tuple[list[dict], str | None]:
        """One page of jobs matching `filt` (a filter the store built), ordered by `_id`
        (creation) on the server; `after` is the previous page's `next_cursor`.

        A page is always read per tenant and status, so `(tenant, status, _id)` bounds it
        and sorts it, and the pages are merged: a tenant's list over every status costs one
        bounded read per status, and the deployment admin's one per tenant and status,
        never a scan of `jobs` sorted in memory. No `(tenant, _id)` index: on SecantusDB
        every index costs every transition a write (5-7 % of the drain, measured
        2026-12-02), and lists are not hot."""
        scopes = [tenant] if tenant is not None else await self.tenants()
        statuses = [filt["status"]] if "status" in filt else [s.value for s in JobStatus]
        rows: list[dict] = []
        for t, status in ((t, s) for t in scopes for s in statuses):
            f = {**filt, "tenant": str(t), "status": status}
            if after is not None:
                f["_id"] = {"$lt" if newest else "$gt": str(after)}
            rows += (
                await self.col.find(f, projection).sort("_id", -1 if newest else 1).limit(limit + 1).to_list(limit + 1)
            )
        rows.sort(key=lambda d: d["_id"], reverse=newest)
        return rows[:limit], (rows[limit - 1]["_id"] if len(rows) > limit else None)

    async def list(
        self,
        *,
        status: str | None = None,
        engine: str | None = None,
        workflow_id: str | None = None,
        owner: str | None = None,
        tenant: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict], str | None]:
        """Newest first. `after` is the `next_cursor` of the previous page."""
        filt = {
            key: str(value)
            for key, value in (("status", status), ("engine", engine), ("workflow_id", workflow_id), ("owner", owner))
            if value is not None
        }
        return await self.page(filt, tenant=tenant, after=after, limit=limit)

    async def count_waiting(self, tenant: str) -> int:
        """A tenant's jobs waiting to run (queued, scheduled or pending): one count per
        status over the `(tenant, status, _id)` index, so its cost follows the tenant's
        waiting jobs, never the collection. Callers cache it."""
        return sum(
            [
                await self.col.count_documents({"tenant": str(tenant), "status": s.value})
                for s in (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.PENDING)
            ]
        )

    async def history(
        self, *, since: datetime | None = None, engine: str | None = None, tenant: str | None = None
    ) -> dict[str, Any]:
        """Counts by status of the jobs created since `since`. A job's `_id` is an ObjectId,
        whose leading seconds are its creation time, so `since` is a range on `_id`: with a
        tenant, one read per status over `(tenant, status, _id)` bounds it to that tenant's
        jobs of the window."""
        match: dict[str, Any] = {} if tenant is None else {"tenant": str(tenant)}
        if since is not None:
            match["_id"] = {"$gte": str(ObjectId.from_datetime(since))}
        if engine is not None:
            match["engine"] = str(engine)
        group = {"$group": {"_id": "$status", "n": {"$sum": 1}, "ms": {"$sum": {"$ifNull": ["$execution_time_ms", 0]}}}}
        matches = [match] if tenant is None else [{**match, "status": s.value} for s in JobStatus]
        rows = []
        for m in matches:
            rows += await (await self.col.aggregate([{"$match": m}, group])).to_list(None)
        counts = {s.value: 0 for s in JobStatus}
        completed_ms = 0
        for r in rows:
            counts[r["_id"]] = r["n"]
            if r["_id"] == JobStatus.COMPLETED.value:
                completed_ms = r["ms"]
        done, failed = counts["completed"], counts["failed"]
        return {
            "total": sum(counts.values()),
            "counts": counts,
            "success_rate": (done / (done + failed)) if done + failed else None,
            "avg_execution_time_ms": (completed_ms / done) if done else None,
        }

    async def tenant_counts(self, tenant: str) -> dict[str, dict[str, int]]:
        """`{engine: {"queued": n, "running": m}}` of one tenant's jobs, through the
        `(tenant, status, _id)` index: its cost follows the tenant's queued and running
        jobs (bounded by its quota and the limits), never other tenants'."""
        out: dict[str, dict[str, int]] = {}
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            rows = await (
                await self.col.aggregate(
                    [
                        {"$match": {"tenant": str(tenant), "status": status.value}},
                        {"$group": {"_id": "$engine", "n": {"$sum": 1}}},
                    ]
                )
            ).to_list(None)
            for r in rows:
                out.setdefault(r["_id"], {"queued": 0, "running": 0})[status.value] = r["n"]
        return out

    async def oldest_queued_at(self, engine: dict, tenant: str | None = None) -> datetime | None:
        """When the longest-waiting queued job of `engine` (of `tenant`'s, if given) became
        queued: the head of each band is its oldest (FIFO by seq), so this probes one window
        per busy band."""
        oldest = None
        for _, p, band_tenant, lo, hi in busy_bands(engine, paused_too=True):
            if tenant is not None and band_tenant != tenant:
                continue
            found, _ = await self.claimer.window(engine["_id"], p, band_tenant, lo, hi, 1, {"queued_at": 1, "seq": 1})
            if found and found[0].get("queued_at") and (oldest is None or found[0]["queued_at"] < oldest):
                oldest = found[0]["queued_at"]
        return oldest

    async def count_queued(self, engine: str) -> int:
        """Exact, but its cost grows with the queue; the status endpoints use the counter."""
        return await self.col.count_documents({"engine": engine, "status": JobStatus.QUEUED.value})

    async def queue_position(self, job: dict, cap: int = POSITION_CAP) -> tuple[int, bool] | None:
        """How many queued jobs of the same engine are ahead of this one, and whether that is
        only a lower bound. Ahead: every queued job of a higher priority, and those of its own
        band (priority and tenant) between the band's cursor and its seq; other tenants' jobs
        of the same priority share the slots with it rather than go first. Each count covers
        a seq range of at most `cap` numbers, since on SecantusDB a count fetches every
        document it matches under the server's lock: a status poll of the last job of a
        10,000-job queue would otherwise hold up every other client."""
        if job.get("status") != JobStatus.QUEUED.value:
            return None
        engine = await self.engines.get(job["engine"])
        mine = (job["priority"], job.get("tenant", DEFAULT_TENANT))
        cursors = engine.get("cursor") or {}
        ranges = [(p, tenant, lo, hi) for _, p, tenant, lo, hi in busy_bands(engine, paused_too=True) if p < mine[0]]
        own = band(*mine, job.get("lane", 0))
        ranges.append((*mine, min(cursors.get(own, band_floor(own)), job["seq"]), job["seq"]))
        ahead, partial = 0, False
        for p, tenant, lo, hi in ranges:
            start = max(lo, hi - (cap - ahead))  # the numbers nearest the top; older ones may be gone
            partial = partial or start > lo
            if start < hi:
                ahead += await self.col.count_documents(
                    {
                        "engine": job["engine"],
                        "status": JobStatus.QUEUED.value,
                        "priority": p,
                        "tenant": tenant,
                        "seq": {"$gte": start, "$lt": hi},
                    }
                )
        return ahead, partial

    async def steps_of(self, workflow_id: str, projection: dict | None = None) -> list[dict]:
        return await self.col.find({"workflow_id": workflow_id}, projection).to_list(None)

    async def status_counts_of(self, workflow_id: str) -> dict[str, int]:
        """`{status: steps}` of a workflow, counted on the server (the workflow index bounds
        the `$match`): one small answer, not every step's status."""
        rows = await (
            await self.col.aggregate(
                [{"$match": {"workflow_id": workflow_id}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
            )
        ).to_list(None)
        return {r["_id"]: r["n"] for r in rows}

    async def by_ids(self, ids: list[str], filt: dict | None = None, projection: dict | None = None) -> list[dict]:
        """These jobs (those matching `filt`, a filter built by the store), read in chunks."""
        return await find_in(self.col, ids, filt, projection)

    async def completed_among(self, ids) -> set[str]:
        return {d["_id"] for d in await find_in(self.col, list(ids), {"status": JobStatus.COMPLETED.value}, {"_id": 1})}

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
        workflows = {j.get("workflow_id") for j in jobs}
        if len(missing) > IN_CHUNK and len(workflows) == 1 and dense(missing):
            # A wide fan-in's parents were numbered together: one index-bounded range read
            # of the workflow's steps, at most twice as many as wanted, not a read per chunk.
            found = await self.col.find(
                {"workflow_id": workflows.pop(), "_id": {"$gte": missing[0], "$lte": missing[-1]}},
                {"step_key": 1, "result": 1},
            ).to_list(None)
            wanted = set(missing)
            found = [d for d in found if d["_id"] in wanted]
        else:
            found = await find_in(self.col, missing, None, {"step_key": 1, "result": 1}) if missing else []
        read = {d["_id"]: (d["step_key"], d.get("result")) for d in found}
        for k, v in read.items():  # item by item: a bounded cache evicts in __setitem__
            cache[k] = v
        return read

    async def unsettled(self, finished_before, limit: int = 100) -> list[dict]:
        """Finished steps whose fan-out has not run although they finished before
        `finished_before` (their worker died in between); younger ones are left to the
        worker's own settler, so a replay does not race it."""
        # Only `expires_at` in the filter: SecantusDB scans the collection when a query adds
        # a field its index lacks. Marked steps are few; their status is checked here.
        found = (
            await self.col.find({"expires_at": {"$gte": UNSETTLED, "$lt": EPOCH}}, {"completed_at": 1, "status": 1})
            .limit(limit * 3)
            .to_list(limit * 3)
        )
        return [
            d
            for d in found
            if JobStatus(d["status"]).terminal and (not d.get("completed_at") or d["completed_at"] < finished_before)
        ][:limit]

    async def expired_leases(self, now: datetime, limit: int = 100) -> list[dict]:
        """Running jobs whose lease has passed, found per engine through the claim index's
        (engine, status) prefix: running jobs are few (bounded by the limits)."""
        out: list[dict] = []
        for engine in await self.engines.list():
            running = await self.col.find(
                {"engine": engine["_id"], "status": JobStatus.RUNNING.value}, RESCUE_FIELDS
            ).to_list(None)
            out += [j for j in running if j.get("lease_expires_at") and j["lease_expires_at"] < now]
        return out[:limit]

    async def leased_by(self, worker_id: str) -> list[dict]:
        """Running jobs leased to `worker_id`, through the same (engine, status) prefix."""
        out: list[dict] = []
        for engine in await self.engines.list():
            out += await self.col.find(
                {"engine": engine["_id"], "status": JobStatus.RUNNING.value, "lease_owner": worker_id}, RESCUE_FIELDS
            ).to_list(None)
        return out

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        return set(await self.cancel_reasons(job_ids))

    async def cancel_reasons(self, job_ids: list[str]) -> dict[str, str | None]:
        """`{job_id: reason}` of these running jobs that were asked to stop."""
        if not job_ids:
            return {}
        docs = await self.col.find(
            {"_id": {"$in": job_ids}, "cancel_requested": True}, {"_id": 1, "stop_reason": 1}
        ).to_list(None)
        return {d["_id"]: d.get("stop_reason") for d in docs}

    async def get(self, job_id: str) -> dict:
        doc = await self.col.find_one({"_id": job_id}) if isinstance(job_id, str) else None
        if doc is None:
            raise NotFound(f"job {job_id!r} not found", field="job_id")
        return doc
