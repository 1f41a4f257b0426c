"""The `workers` collection: one document per worker process incarnation.

Fields: `_id`, `host`, `pid`, `kind` (serve or worker), `engines` (None: all), `concurrency`,
`running` and `running_jobs` (ids, as of the last beat), `status` (alive, dead, stopped),
`started_at`, `last_seen`, `expires_at`, and `died_at` once marked dead.

A worker beats every lease/3; `expires_at` is one lease after its last beat, on the database
clock. The rescuer marks a worker whose `expires_at` has passed `dead` (guarded on `alive`),
then drops its engine permits. A worker that finds itself marked dead must abandon its jobs
and register again under a new id: its old permits and leases are gone.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase

from app.settings import Settings

EPOCH = datetime(1970, 1, 1)


class WorkerStore:
    def __init__(self, db: AsyncDatabase, settings: Settings, clock) -> None:
        self.col = db["workers"]
        self.settings = settings
        self.clock = clock

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("status", 1), ("expires_at", 1)])

    def _expiry(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.settings.lease_seconds)

    async def register(self, worker_id: str, *, engines: list[str] | None, concurrency: int, kind: str) -> None:
        now = self.clock.now()
        await self.col.insert_one(
            {
                "_id": worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "kind": kind,
                "engines": engines,
                "concurrency": concurrency,
                "running": 0,
                "running_jobs": [],
                "status": "alive",
                "started_at": now,
                "last_seen": now,
                "expires_at": self._expiry(),
            }
        )

    async def beat(self, worker_id: str, running_jobs: list[str], done_tokens: list[str] = ()) -> bool:
        """Extend the worker's registration and record the jobs it runs; forget the start
        marks of leases whose jobs have all left (`done_tokens`). False means it was
        declared dead."""
        update: dict = {"$set": {"last_seen": self.clock.now(), "expires_at": self._expiry(), "running": len(running_jobs),
                                 "running_jobs": running_jobs}}
        if done_tokens:
            update["$unset"] = {f"started.{t}": "" for t in done_tokens}
        res = await self.col.update_one({"_id": worker_id, "status": "alive"}, update)
        return res.matched_count == 1

    async def mark_started(self, worker_id: str, token: str) -> None:
        """Record, before any handler of a claim runs, that its lease's handlers start. The
        rescuer charges an expired lease's attempt only when this mark exists: a claim
        whose reply was lost, or whose worker died before running it, costs no attempt.
        One small write per claim, not per job."""
        await self.col.update_one({"_id": worker_id}, {"$set": {f"started.{token}": self.clock.now()}})

    async def handler_started(self, worker_id: str | None, token: str) -> bool | None:
        """Whether `worker_id` recorded the start of lease `token`; None when the worker is
        unknown (then the rescuer assumes it started: a poison job must be charged)."""
        doc = await self.col.find_one({"_id": worker_id}, {f"started.{token}": 1}) if worker_id else None
        if doc is None:
            return None
        return token in (doc.get("started") or {})

    async def stop(self, worker_id: str) -> None:
        await self.col.update_one({"_id": worker_id}, {"$set": {"status": "stopped", "last_seen": self.clock.now(),
                                                                "running": 0, "running_jobs": []}})

    async def expired(self, now: datetime) -> list[str]:
        docs = await self.col.find({"status": "alive", "expires_at": {"$gte": EPOCH, "$lt": now}}, {"_id": 1}).to_list(100)
        return [d["_id"] for d in docs]

    async def mark_dead(self, worker_id: str, now: datetime) -> bool:
        res = await self.col.update_one(
            {"_id": worker_id, "status": "alive", "expires_at": {"$lt": now}}, {"$set": {"status": "dead", "died_at": now}}
        )
        return res.modified_count == 1

    async def not_alive(self, worker_ids: list[str]) -> list[str]:
        """Those of `worker_ids` not registered as alive (dead, stopped, or unknown)."""
        if not worker_ids:
            return []
        alive = await self.col.find({"_id": {"$in": worker_ids}, "status": "alive"}, {"_id": 1}).to_list(None)
        return sorted(set(worker_ids) - {d["_id"] for d in alive})

    async def list(self, status: str | None = None, limit: int = 200) -> list[dict]:
        """Newest first; `status` is alive, dead or stopped."""
        return await self.col.find({"status": status} if status else {}).sort("started_at", -1).to_list(limit)

    async def alive_count(self) -> int:
        return await self.col.count_documents({"status": "alive"})
