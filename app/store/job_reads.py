"""The read side of `JobStore`: listing with cursor pagination, history and queue figures.

Filters are built here from validated values only, as plain equality, so no client JSON
ever becomes part of a MongoDB filter.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.domain.states import JobStatus
from app.store.engines import DEFAULT_TENANT, band, busy_bands

POSITION_CAP = 1000  # most sequence numbers one position count looks at


class ReadMixin:
    async def list(self, *, status: str | None = None, engine: str | None = None, workflow_id: str | None = None,
                   owner: str | None = None, tenant: str | None = None, after: str | None = None,
                   limit: int = 50) -> tuple[list[dict], str | None]:
        """Newest first. `after` is the `next_cursor` of the previous page."""
        filt: dict[str, Any] = {}
        for key, value in (("status", status), ("engine", engine), ("workflow_id", workflow_id), ("owner", owner),
                           ("tenant", tenant)):
            if value is not None:
                filt[key] = str(value)
        if after is not None:
            filt["_id"] = {"$lt": str(after)}
        docs = await self.col.find(filt).sort("_id", -1).limit(limit + 1).to_list(limit + 1)
        more = len(docs) > limit
        docs = docs[:limit]
        return docs, (docs[-1]["_id"] if more and docs else None)

    async def count_waiting(self, tenant: str) -> int:
        """A tenant's jobs waiting to run (queued, scheduled or pending): a scan, so callers
        cache it."""
        rows = await (await self.col.aggregate([
            {"$match": {"tenant": str(tenant)}},
            {"$group": {"_id": "$status", "n": {"$sum": 1}}},
        ])).to_list(None)
        waiting = {JobStatus.QUEUED.value, JobStatus.SCHEDULED.value, JobStatus.PENDING.value}
        return sum(r["n"] for r in rows if r["_id"] in waiting)

    async def history(self, *, since: datetime | None = None, engine: str | None = None,
                      tenant: str | None = None) -> dict[str, Any]:
        match: dict[str, Any] = {} if tenant is None else {"tenant": str(tenant)}
        if since is not None:
            match["created_at"] = {"$gte": since}
        if engine is not None:
            match["engine"] = str(engine)
        rows = await (await self.col.aggregate([
            {"$match": match},
            {"$group": {"_id": "$status", "n": {"$sum": 1}, "ms": {"$sum": {"$ifNull": ["$execution_time_ms", 0]}},
                        "timed": {"$sum": {"$cond": [{"$eq": ["$status", "completed"]}, 1, 0]}}}},
        ])).to_list(None)
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

    async def oldest_queued_at(self, engine: dict) -> datetime | None:
        """When the longest-waiting queued job of `engine` became queued: the head of each
        band is its oldest (FIFO by seq), so this probes one window per busy band."""
        oldest = None
        for _, p, tenant, lo, hi in busy_bands(engine):
            found, _ = await self._window(engine["_id"], p, tenant, lo, hi, 1, {"queued_at": 1, "seq": 1})
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
        ranges = [(p, tenant, lo, hi) for _, p, tenant, lo, hi in busy_bands(engine) if p < mine[0]]
        ranges.append((*mine, min(cursors.get(band(*mine), 0), job["seq"]), job["seq"]))
        ahead, partial = 0, False
        for p, tenant, lo, hi in ranges:
            start = max(lo, hi - (cap - ahead))  # the numbers nearest the top; older ones may be gone
            partial = partial or start > lo
            if start < hi:
                ahead += await self.col.count_documents({"engine": job["engine"], "status": JobStatus.QUEUED.value,
                                                         "priority": p, "tenant": tenant, "seq": {"$gte": start, "$lt": hi}})
        return ahead, partial
