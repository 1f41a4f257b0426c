"""The `jobs` collection: insertion, and one guarded function per state transition.

Every transition out of `running` is an `update_one` whose filter is plain equality on
`{_id, status: "running", lease_token}`: a worker that lost its lease matches nothing and
gets `LeaseLost` instead of overwriting the new owner's work. Other transitions are guarded
by the state they start from. The claim machinery lives in `job_claims.py` and the read side
in `job_reads.py`; both are part of `JobStore` and touch no other collection but `engines`.
Operator moves (dead letter, retries, stuck jobs) are in `job_admin.py`; a standalone job's
terminal write sets `expires_at`, which `retention.py` uses to delete it later.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from contextlib import AsyncExitStack
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from app.domain.models import JobSpec, new_job_document
from app.domain.retry import RetryConfig
from app.domain.states import JobStatus
from app.errors import InvalidTransition, LeaseLost, NotFound
from app.settings import Settings
from app.store.job_admin import AdminMixin
from app.store.db import ensure_index
from app.store.engines import DEFAULT_TENANT, band
from app.store.feed import BulkGate
from app.store.job_claims import ClaimMixin
from app.store.job_reads import ReadMixin
from app.store.job_steps import StepMixin
from app.store.retention import UNSETTLED, JobRetentionMixin

RUNNING = JobStatus.RUNNING.value
LEASE_FIELDS = {"lease_owner": "", "lease_token": "", "lease_expires_at": ""}


CLAIM_INDEX = [("engine", ASCENDING), ("status", ASCENDING), ("priority", ASCENDING), ("tenant", ASCENDING),
               ("seq", ASCENDING)]


def new_id() -> str:
    return str(ObjectId())


class JobStore(ClaimMixin, ReadMixin, StepMixin, AdminMixin, JobRetentionMixin):
    def __init__(self, db: AsyncDatabase, settings: Settings, clock, engines, dedupe, gate=None) -> None:
        self.col = db["jobs"]
        self.gate = gate or BulkGate()  # this process's change streams wait out bulk inserts
        self.dedupe = dedupe
        self.settings = settings
        self.clock = clock
        self.engines = engines
        self._spread: dict[str, int] = {}  # per engine: claim contention (job_claims.py)
        self._ahead: dict[tuple[str, str], tuple] = {}  # per band: (cursor, since when, end of our last claim ahead)
        self._default_retry_doc: dict | None = None

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
            await c.update_many({"fanout_pending": True}, {"$set": {"expires_at": UNSETTLED}, "$unset": {"fanout_pending": ""}})
            await c.drop_index("fanout_pending_1")
        # The promoter: only scheduled jobs are in it.
        await c.create_index("run_at", partialFilterExpression={"status": JobStatus.SCHEDULED.value})
        # A workflow's steps. Sparse, not partial: SecantusDB's planner never picks a partial
        # index here. Its keys never change, so only an insert writes to it.
        await ensure_index(c, [("workflow_id", ASCENDING), ("_id", ASCENDING)], sparse=True)
        # Retention: sparse, only terminal standalone jobs are in it (docs/retention.md).
        await self.ensure_retention_index()

    def default_retry(self) -> RetryConfig:
        s = self.settings
        return RetryConfig(
            max_retries=s.retry_max_retries, retry_delay_seconds=s.retry_delay_seconds, max_delay_seconds=s.retry_max_delay_seconds
        )

    # --- insertion -----------------------------------------------------------------------
    async def submit(self, spec: JobSpec, owner: str) -> tuple[dict, bool]:
        """Insert one job. Returns `(job, created)`; `created` is False when a live job with
        the same `dedupe_key` exists, which is returned instead."""
        doc = self.build(spec, owner)
        key = f"{owner}:{spec.dedupe_key}" if spec.dedupe_key else None
        while key:
            bound = await self.dedupe.claim(key, doc["_id"])
            if bound is None:
                break
            existing = await self.col.find_one({"_id": bound})
            if existing is not None and not JobStatus(existing["status"]).terminal:
                return existing, False
            await self.dedupe.drop(key, bound)  # its job finished: the key is free
        try:
            if doc["status"] == JobStatus.QUEUED:
                async with self.engines.enqueue(doc["engine"], band(doc["priority"], doc["tenant"]), 1) as seq:
                    doc["seq"] = seq
                    await self.col.insert_one(doc)
            else:
                await self.engines.ensure(doc["engine"])
                await self.col.insert_one(doc)
        except BaseException:
            if key:
                await self.dedupe.drop(key, doc["_id"])
            raise
        return doc, True

    async def insert_many(self, docs: list[dict]) -> None:
        """Insert new job documents together (`new_job_document` output). Queued ones get
        their seqs with one `$inc` per (engine, band)."""
        groups: dict[tuple[str, str], list[dict]] = {}
        for d in docs:
            if d["status"] == JobStatus.QUEUED:
                groups.setdefault((d["engine"], band(d["priority"], d["tenant"])), []).append(d)
        for engine in {d["engine"] for d in docs} - {e for e, _ in groups}:
            await self.engines.ensure(engine)
        async with AsyncExitStack() as stack:
            for (engine, key), members in groups.items():
                first = await stack.enter_async_context(self.engines.enqueue(engine, key, len(members)))
                for i, d in enumerate(members):
                    d["seq"] = first + i
            async with self.gate.hold(len(docs)):
                await self.col.insert_many(docs, ordered=False)

    def build(self, spec: JobSpec, owner: str, now: datetime | None = None, **kw: Any) -> dict:
        """A new job's document. The default retry policy is dumped once per store: a
        10,000-step workflow builds 10,000 of these in one request."""
        if spec.retry_config is not None:
            retry = spec.retry_config.model_dump()
        else:
            if self._default_retry_doc is None:
                self._default_retry_doc = self.default_retry().model_dump()
            retry = dict(self._default_retry_doc)
        return new_job_document(spec, job_id=new_id(), owner=owner, now=now or self.clock.now(), retry=retry, **kw)

    # --- guarded transitions -------------------------------------------------------------
    async def _leased(self, job_id: str, token: str, update: dict[str, Any]) -> None:
        res = await self.col.update_one({"_id": job_id, "status": RUNNING, "lease_token": token}, update)
        if res.matched_count == 0:
            raise LeaseLost(f"job {job_id} is no longer leased with this token", job_id=job_id)

    async def heartbeat(self, job_id: str, token: str) -> None:
        expires = self.clock.now() + timedelta(seconds=self.settings.lease_seconds)
        await self._leased(job_id, token, {"$set": {"lease_expires_at": expires}})

    async def progress(self, job_id: str, token: str, percent: float, stage: str | None, data: dict) -> None:
        await self._leased(job_id, token, {"$set": {"progress": {"percent": percent, "stage": stage, "data": data}}})

    async def complete(self, job_id: str, token: str, result: Any, execution_ms: int) -> None:
        if await self.complete_many([(job_id, token, result, execution_ms)]):
            raise LeaseLost(f"job {job_id} is no longer leased with this token", job_id=job_id)

    async def complete_many(self, items: list[tuple[str, str, Any, int]]) -> set[str]:
        """running → completed for many jobs, each guarded by its own lease. Returns the ids
        whose lease was lost (nothing was written for them).

        Jobs of one claim share a lease token, so each token's jobs complete in a single
        `update_many` filtered by plain equality on `{status, lease_token}` and `_id $in`,
        whose update pipeline picks each job's own result by its position (`$literal`, so a
        result is never read as an expression). One statement is one commit on the server,
        where a `bulk_write` costs one per job. `finished_token` records which lease finished
        a job, which is how a partial success is told apart from another owner's completion."""
        now = self.clock.now()
        # standalone jobs expire (docs/retention.md); workflow steps go with their workflow
        expires = {"$cond": [{"$eq": [{"$type": "$workflow_id"}, "string"]}, "$$REMOVE",
                             {"$literal": self.expires_at(JobStatus.COMPLETED.value, now)}]}
        groups: dict[str, list[tuple[str, Any, int]]] = {}
        for jid, token, result, ms in items:
            groups.setdefault(token, []).append((jid, result, ms))
        lost: set[str] = set()
        for token, members in groups.items():
            ids = [m[0] for m in members]
            at = {"$indexOfArray": [{"$literal": ids}, "$_id"]}
            res = await self.col.update_many({"_id": {"$in": ids}, "status": RUNNING, "lease_token": token}, [
                {"$set": {"status": JobStatus.COMPLETED.value, "completed_at": now, "finished_token": token,
                          "progress.percent": 100.0, "expires_at": expires,
                          "result": {"$arrayElemAt": [{"$literal": [m[1] for m in members]}, at]},
                          "execution_time_ms": {"$arrayElemAt": [{"$literal": [m[2] for m in members]}, at]}}},
                {"$unset": list(LEASE_FIELDS)},
            ])
            if res.modified_count < len(ids):
                docs = await self.col.find({"_id": {"$in": ids}}, {"finished_token": 1}).to_list(None)
                ours = {d["_id"] for d in docs if d.get("finished_token") == token}
                lost |= set(ids) - ours
        return lost

    async def fail(self, job_id: str, token: str, error: dict, execution_ms: int | None, step: bool = False) -> None:
        """running → failed: a permanent error, or the last attempt failed. `step`: a
        workflow step, whose fan-out is then pending."""
        now = self.clock.now()
        await self._leased(job_id, token, {
            "$set": {"status": JobStatus.FAILED.value, "last_error": error, "completed_at": now,
                     "execution_time_ms": execution_ms,
                     **self.finished_stamp(step, JobStatus.FAILED.value, now)},
            "$push": {"errors": error},
            "$unset": LEASE_FIELDS,
        })

    async def retry(self, job_id: str, token: str, error: dict, delay_seconds: float) -> None:
        """running → scheduled (the promoter queues it when `run_at` is due)."""
        run_at = self.clock.now() + timedelta(seconds=delay_seconds)
        await self._leased(job_id, token, {
            "$set": {"status": JobStatus.SCHEDULED.value, "last_error": error, "run_at": run_at},
            "$push": {"errors": error},
            "$inc": {"retry_count": 1},
            "$unset": LEASE_FIELDS,
        })

    async def release(self, job_id: str, token: str, engine: str, priority: int, tenant: str = DEFAULT_TENANT) -> None:
        """running → queued without counting the attempt (graceful shutdown)."""
        async with self.engines.enqueue(engine, band(priority, tenant), 1) as seq:
            try:
                await self._leased(job_id, token, {
                    "$set": {"status": JobStatus.QUEUED.value, "seq": seq, "queued_at": self.clock.now(), "started_at": None},
                    "$inc": {"attempt": -1},
                    "$unset": LEASE_FIELDS,
                })
            except LeaseLost:
                await self.engines.count_left_queue(engine, 1)
                raise

    async def cancel_running(self, job_id: str, token: str, reason: str, step: bool = False) -> None:
        now = self.clock.now()
        await self._leased(job_id, token, {
            "$set": {"status": JobStatus.CANCELLED.value, "completed_at": now, "cancel_reason": reason,
                     **self.finished_stamp(step, JobStatus.CANCELLED.value, now)},
            "$unset": LEASE_FIELDS,
        })

    async def cancel(self, job_id: str, reason: str = "cancelled by user") -> dict:
        """Cancel a job: at once when it waits, by request when it runs (its worker sees the
        request, signals the handler, and stops it hard after the grace period)."""
        for _ in range(5):
            job = await self.get(job_id)
            status = JobStatus(job["status"])
            if status.terminal:
                raise InvalidTransition(f"job {job_id} is already {status.value}", field="status")
            if status == JobStatus.RUNNING:
                res = await self.col.update_one(
                    {"_id": job_id, "status": RUNNING}, {"$set": {"cancel_requested": True, "cancel_reason": reason}}
                )
            else:
                now = self.clock.now()
                res = await self.col.update_one(
                    {"_id": job_id, "status": status.value},
                    {"$set": {"status": JobStatus.CANCELLED.value, "completed_at": now, "cancel_reason": reason,
                              **self.finished_stamp(bool(job.get("workflow_id")), JobStatus.CANCELLED.value, now)},
                     },
                )
                if res.modified_count and status == JobStatus.QUEUED:
                    await self.engines.count_left_queue(job["engine"], 1)
            if res.modified_count:
                return await self.get(job_id)
        raise InvalidTransition(f"job {job_id} kept changing state; try again", field="status")

    async def cancel_requested(self, job_ids: list[str]) -> set[str]:
        if not job_ids:
            return set()
        docs = await self.col.find({"_id": {"$in": job_ids}, "cancel_requested": True}, {"_id": 1}).to_list(None)
        return {d["_id"] for d in docs}

    async def get(self, job_id: str) -> dict:
        doc = await self.col.find_one({"_id": job_id}) if isinstance(job_id, str) else None
        if doc is None:
            raise NotFound(f"job {job_id!r} not found", field="job_id")
        return doc


def error_entry(code: str, message: str, attempt: int, at: datetime, worker: str | None = None) -> dict:
    return {"code": code, "message": message[:2000], "attempt": attempt, "at": at, "worker": worker}
