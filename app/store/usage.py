"""The `usage` collection: what paid services a job's attempts used (`ctx.usage`), one
document per (job, attempt), and its sums on the job document (`usage`).

A usage document: `{_id: "<job>:<attempt>", job_id, attempt, tenant, engine, workflow_id,
owner, day: "YYYY-MM-DD" (UTC, when the attempt ended), tokens_in, tokens_out, cost,
counters: {name: value}}`. An attempt's usage is written once, when it ends (the worker
adds up its calls in memory): an attempt whose worker dies mid-way loses what it had not
written yet (docs/limits.md).

`aggregate` answers `GET /api/v1/usage`: a `$match` on the (tenant, day) index bounds it
to the caller's tenant and the asked days, then one `$group`. `period_cost` is the same
read for one tenant's cost over a budget period (app/store/budgets.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

STANDARD = ("tokens_in", "tokens_out", "cost")
GROUPS = {"tenant": "$tenant", "engine": "$engine", "day": "$day", "job": "$job_id", "workflow": "$workflow_id"}


def _inc(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}" if k in STANDARD else f"{prefix}counters.{k}": v for k, v in values.items()}


class UsageStore:
    def __init__(self, db: AsyncDatabase, jobs_col, clock) -> None:
        self.col = db["usage"]
        self.jobs = jobs_col
        self.clock = clock

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("tenant", ASCENDING), ("day", ASCENDING)], name="tenant_day")
        await self.col.create_index([("day", ASCENDING)], name="day")  # the bootstrap admin's reads

    async def record(self, job: dict, attempt: int, values: dict[str, float]) -> None:
        """Add one attempt's usage (validated by `app.context.check_usage`) to its document
        and to the job's sums."""
        if not values:
            return
        now = self.clock.now()
        await self.col.update_one(
            {"_id": f"{job['_id']}:{attempt}"},
            {
                "$inc": _inc("", values),
                "$setOnInsert": {
                    "job_id": job["_id"],
                    "attempt": attempt,
                    "tenant": job.get("tenant", "default"),
                    "engine": job["engine"],
                    "workflow_id": job.get("workflow_id"),
                    "owner": job.get("owner"),
                    "day": now.date().isoformat(),
                    "at": now,
                },
            },
            upsert=True,
        )
        await self.jobs.update_one({"_id": job["_id"]}, {"$inc": _inc("usage.", values)})

    async def period_cost(self, tenant: str, first: str, last: str) -> float:
        """The tenant's cost over UTC days `first`..`last` (`YYYY-MM-DD`, both included),
        bounded by the (tenant, day) index."""
        rows = await (
            await self.col.aggregate(
                [
                    {"$match": {"tenant": tenant, "day": {"$gte": first, "$lte": last}}},
                    {"$group": {"_id": None, "cost": {"$sum": "$cost"}}},
                ]
            )
        ).to_list(None)
        return float(rows[0]["cost"] or 0) if rows else 0.0

    async def aggregate(
        self,
        group_by: str,
        *,
        tenant: str | None,
        start: date | None = None,
        end: date | None = None,
        engine: str | None = None,
        workflow_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Sums per group, largest cost first. `tenant` None: every tenant's (the admin).
        `start` and `end` are UTC days, both included."""
        match: dict[str, Any] = {}
        if tenant is not None:
            match["tenant"] = tenant
        days: dict[str, str] = {}
        if start is not None:
            days["$gte"] = start.isoformat()
        if end is not None:
            days["$lte"] = end.isoformat()
        if days:
            match["day"] = days
        if engine is not None:
            match["engine"] = engine
        if workflow_id is not None:
            match["workflow_id"] = workflow_id
        key = GROUPS[group_by]
        rows = await (
            await self.col.aggregate(
                [
                    {"$match": match},
                    {
                        "$group": {
                            "_id": key,
                            "attempts": {"$sum": 1},
                            **{f: {"$sum": f"${f}"} for f in STANDARD},
                        }
                    },
                ]
            )
        ).to_list(None)
        # Counter names are the handlers' own, so they are summed per group here rather
        # than named in the pipeline: one more pass over the same matched documents.
        counters = await (
            await self.col.aggregate(
                [
                    {"$match": {**match, "counters": {"$exists": True}}},
                    {"$project": {"g": key, "c": {"$objectToArray": "$counters"}}},
                    {"$unwind": "$c"},
                    {"$group": {"_id": {"g": "$g", "k": "$c.k"}, "v": {"$sum": "$c.v"}}},
                ]
            )
        ).to_list(None)
        by_group: dict[Any, dict[str, float]] = {}
        for c in counters:
            by_group.setdefault(c["_id"].get("g"), {})[c["_id"]["k"]] = c["v"]
        out = [
            {
                "key": r["_id"],
                "attempts": r["attempts"],
                **{f: r.get(f) or 0 for f in STANDARD},
                "counters": by_group.get(r["_id"], {}),
            }
            for r in rows
        ]
        out.sort(key=lambda r: (-r["cost"], str(r["key"])))
        return out
