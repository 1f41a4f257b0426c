"""When maintenance next has something to do, read from the database, and a change stream
that says when that may have moved earlier. Owns no writes.

The due pass (promote scheduled jobs and due sleep steps, time out approval and signal
waits, fire cron ticks) sleeps until `next_due()`; the rescuer until `next_expiry()`.
Invariant: anything that can make a pass due sooner than it last read is a write that
`watch()` reports: a job or step entering `scheduled` or `awaiting` (or its `run_at`
moving), and any change to a schedule. A lease or registration taken after the rescuer's
read expires no sooner than a lease length later, so the rescuer never sleeps longer.
"""

from __future__ import annotations

from datetime import datetime

from pymongo.asynchronous.database import AsyncDatabase

from ..domain.states import JobStatus
from .db import earliest
from .leases import EPOCH

SCHEDULED, AWAITING, RUNNING = JobStatus.SCHEDULED.value, JobStatus.AWAITING.value, JobStatus.RUNNING.value


class DueTimes:
    def __init__(self, db: AsyncDatabase, engines) -> None:
        self.db, self.engines = db, engines
        self.jobs, self.schedules, self.workers = db["jobs"], db["schedules"], db["workers"]

    async def next_due(self, until: datetime) -> datetime | None:
        """The earliest of: a scheduled job's `run_at`, an awaiting step's `wait_until`, an
        unpaused schedule's `next_run_at`, looking no further than `until`. None: nothing
        is due by then. The range is bounded on both sides so that the read matches only
        what is due soon, however many jobs wait further out (DESIGN.md §5)."""
        window = {"$gte": EPOCH, "$lte": until}
        # The partial indexes on `run_at` and `wait_until` (and schedules' (paused,
        # next_run_at)) answer these with one entry each.
        times = [
            await earliest(self.jobs, {"status": SCHEDULED, "run_at": window}, "run_at"),
            await earliest(self.jobs, {"status": AWAITING, "wait_until": window}, "wait_until"),
            await earliest(self.schedules, {"paused": False, "next_run_at": window}, "next_run_at"),
        ]
        return min((t for t in times if t), default=None)

    async def next_expiry(self) -> datetime | None:
        """The earliest expiry of a running job's lease or a live worker's registration."""
        times = [await earliest(self.workers, {"status": "alive", "expires_at": {"$gte": EPOCH}}, "expires_at")]
        for engine in await self.engines.list():
            # Every engine: a dead worker's jobs still run on leases after its permits
            # (the engine's `holds`) were dropped, and those are the leases that matter.
            # Its earliest lease only: one document back, however many jobs run.
            times.append(
                await earliest(
                    self.jobs,
                    {"engine": engine["_id"], "status": RUNNING, "lease_expires_at": {"$gte": EPOCH}},
                    "lease_expires_at",
                )
            )
        return min((t for t in times if t), default=None)

    def watch(self, max_await_ms: int):
        """A change stream of the writes that can make the due pass due sooner."""
        entering = {"$in": [SCHEDULED, AWAITING]}
        return self.db.watch(
            [
                {
                    "$match": {
                        "ns.coll": {"$in": ["jobs", "schedules"]},
                        "operationType": {"$in": ["insert", "update", "replace"]},
                    }
                },
                {
                    "$match": {
                        "$or": [
                            {"ns.coll": "schedules"},
                            {"fullDocument.status": entering},
                            {"updateDescription.updatedFields.status": entering},
                            {"updateDescription.updatedFields.run_at": {"$exists": True}},
                            {"updateDescription.updatedFields.wait_until": {"$exists": True}},
                        ]
                    }
                },
                {"$project": {"_id": 1}},
            ],
            max_await_time_ms=max_await_ms,
        )
