"""The `workers` collection: one document per worker process incarnation.

Fields: `_id`, `host`, `pid`, `kind` (serve or worker), `engines` (None: all), `concurrency`,
`running` and `running_jobs` (ids, as of the last beat), `status` (alive, dead, stopped),
`started_at`, `last_seen`, `expires_at`, and `died_at` once marked dead.

A worker beats every lease/3; `expires_at` is one lease after its last beat, on the database
clock. The rescuer marks a worker whose `expires_at` has passed `dead` (guarded on `alive`),
then drops its engine permits. A worker that finds itself marked dead must abandon its jobs
and register again under a new id: its old permits and leases are gone.

A `switchyard serve` supervising worker processes keeps one record of `kind` supervisor
(status `supervising`, then `stopped`): `children` (pids), `restarts`, `restarting` (children
waiting out a back-off), `last_exit` ({pid, code, at}), beating like a worker. Its children
register with `supervisor` set to its id. The worker views (`list`, `alive_count`) leave
supervisor records out.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from pymongo.asynchronous.database import AsyncDatabase

from ..settings import Settings

EPOCH = datetime(1970, 1, 1)
SUPERVISOR = "supervisor"


class WorkerStore:
    def __init__(self, db: AsyncDatabase, settings: Settings, clock) -> None:
        self.col = db["workers"]
        self.settings = settings
        self.clock = clock

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("status", 1), ("expires_at", 1)])

    def _expiry(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.settings.lease_seconds)

    async def register(
        self, worker_id: str, *, engines: list[str] | None, concurrency: int, kind: str, supervisor: str | None = None
    ) -> None:
        now = self.clock.now()
        await self.col.insert_one(
            {
                **({"supervisor": supervisor} if supervisor else {}),
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
        update: dict = {
            "$set": {
                "last_seen": self.clock.now(),
                "expires_at": self._expiry(),
                "running": len(running_jobs),
                "running_jobs": running_jobs,
            }
        }
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
        await self.col.update_one(
            {"_id": worker_id},
            {"$set": {"status": "stopped", "last_seen": self.clock.now(), "running": 0, "running_jobs": []}},
        )

    async def expired(self, now: datetime) -> list[str]:
        docs = await self.col.find({"status": "alive", "expires_at": {"$gte": EPOCH, "$lt": now}}, {"_id": 1}).to_list(
            100
        )
        return [d["_id"] for d in docs]

    async def mark_dead(self, worker_id: str, now: datetime) -> bool:
        res = await self.col.update_one(
            {"_id": worker_id, "status": "alive", "expires_at": {"$lt": now}},
            {"$set": {"status": "dead", "died_at": now}},
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
        query = {"status": status} if status else {"kind": {"$ne": SUPERVISOR}}
        return await self.col.find(query).sort("started_at", -1).to_list(limit)

    async def alive_count(self) -> int:
        return await self.col.count_documents({"status": "alive"})

    # --- a supervisor of worker processes (app/worker/supervisor.py) ----------------------
    async def exited(self, pid: int, since: datetime) -> list[dict]:
        """Mark dead, at once, the live registrations of process `pid` on this host started
        since `since`: its supervisor saw it exit, so no lease has to run out first. Returns
        the registrations it marked (with their `running_jobs`)."""
        now = self.clock.now()
        found = await self.col.find(
            {"host": socket.gethostname(), "pid": pid, "status": "alive", "started_at": {"$gte": since}}
        ).to_list(None)
        marked = []
        for doc in found:
            res = await self.col.update_one(
                {"_id": doc["_id"], "status": "alive"}, {"$set": {"status": "dead", "died_at": now}}
            )
            if res.modified_count:
                marked.append(doc)
        return marked

    async def supervise(self, supervisor_id: str, *, processes: int, concurrency: int) -> None:
        now = self.clock.now()
        await self.col.insert_one(
            {
                "_id": supervisor_id,
                "kind": SUPERVISOR,
                "status": "supervising",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "processes": processes,
                "concurrency": concurrency,
                "children": [],
                "restarts": 0,
                "restarting": 0,
                "last_exit": None,
                "started_at": now,
                "last_seen": now,
                "expires_at": self._expiry(),
            }
        )

    async def supervisor_beat(
        self, supervisor_id: str, *, children: list[int], restarting: int, exit_: dict | None = None
    ) -> None:
        """Record the children's pids and how many wait out a back-off; `exit_` ({pid, code})
        records one more restart."""
        update: dict = {
            "$set": {
                "children": children,
                "restarting": restarting,
                "last_seen": self.clock.now(),
                "expires_at": self._expiry(),
            }
        }
        if exit_ is not None:
            update["$set"]["last_exit"] = {**exit_, "at": self.clock.now()}
            update["$inc"] = {"restarts": 1}
        await self.col.update_one({"_id": supervisor_id}, update)

    async def unsupervise(self, supervisor_id: str) -> None:
        await self.col.update_one(
            {"_id": supervisor_id},
            {"$set": {"status": "stopped", "children": [], "restarting": 0, "last_seen": self.clock.now()}},
        )

    async def summary(self) -> dict:
        """For /health: worker registrations `alive` and `dead` (all time), and over the
        supervisors still beating, children `restarting` (waiting out a back-off), `restarts`
        so far and the latest `last_exit`."""
        now = self.clock.now()
        sups = await self.col.find({"kind": SUPERVISOR, "status": "supervising", "expires_at": {"$gte": now}}).to_list(
            None
        )
        exits = [s["last_exit"] for s in sups if s.get("last_exit")]
        return {
            "alive": await self.alive_count(),
            "dead": await self.col.count_documents({"status": "dead"}),
            "restarting": sum(s.get("restarting", 0) for s in sups),
            "restarts": sum(s.get("restarts", 0) for s in sups),
            "last_exit": max(exits, key=lambda e: e["at"]) if exits else None,
        }
