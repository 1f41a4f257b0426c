"""Debounce on submit (`JobSpec.debounce`, docs/limits.md "Debounce"): the `debounce`
collection of key bindings, `{_id: "<tenant>:<key>", job_id}`, and the submit path that
either replaces a waiting job's parameters or opens a new window.

Invariants:
- A key is bound to at most one job, the latest window's. A binding is replaced only
  guarded by the job id it was read with, so of two racing submits one wins and the other
  looks again. The binding is written before its job: a reader that finds a young binding
  (its job id made less than `IN_FLIGHT` ago) without its job waits for the job to land.
  Bindings are never removed on the hot path: one whose job finished or is gone is stale,
  and the next submit with the key takes it over.
- Only a job that is still `scheduled` and never started (`attempt` 0) is changed, and the
  change (`Lifecycle.rewait`) is guarded by exactly that, so a job the promoter or a worker
  took meanwhile is never touched: the submit looks again and finds it started.
- A replacement takes no seq and moves no counter: the job stays `scheduled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from ..domain.models import JobSpec, tenant_of
from ..domain.states import JobStatus
from ..errors import Conflict
from .documents import JobDoc

# Called before a submit writes: `True` for a new job, `False` for a replacement
# (app/admission.py counts a replacement as a request but not as a waiting job).
Admit = Callable[[bool], Awaitable[None]]
TRIES = 5
IN_FLIGHT = 10.0  # seconds a bound job may take to be inserted (its writer died otherwise)


class DebounceStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.col = db["debounce"]

    async def bound(self, key: str) -> str | None:
        doc = await self.col.find_one({"_id": key})
        return doc["job_id"] if doc else None

    async def swap(self, key: str, old: str | None, new: str) -> bool:
        """Bind `key` to `new` if it is still bound to `old` (None: not bound at all)."""
        if old is None:
            try:
                await self.col.insert_one({"_id": key, "job_id": new})
                return True
            except DuplicateKeyError:
                return False
        return bool((await self.col.update_one({"_id": key, "job_id": old}, {"$set": {"job_id": new}})).modified_count)


class Debouncer:
    def __init__(self, lifecycle, bindings: DebounceStore) -> None:
        self.lifecycle, self.bindings = lifecycle, bindings

    async def submit(self, spec: JobSpec, owner: str, admit: Admit | None = None) -> tuple[JobDoc, bool]:
        """Returns `(job, created)`: a new job (a new window), or the waiting job whose
        parameters and `run_at` this submit replaced. Raises Conflict when the key's job has
        started and no follower is allowed, or belongs to another engine or operation."""
        d = spec.debounce
        assert d is not None
        key = f"{tenant_of(owner)}:{d.key}"
        lc = self.lifecycle
        for _ in range(TRIES):
            bound, job = await self._bound_job(key)
            now = lc.clock.now()
            if job is not None and (job["engine"], job["operation"]) != (spec.engine, spec.operation):
                raise Conflict(
                    f"job {bound} holds this debounce key for another engine or operation",
                    field="debounce.key",
                    job_id=bound,
                )
            live = job is not None and not JobStatus(job["status"]).terminal
            if live and job["status"] == JobStatus.SCHEDULED.value and not job.get("attempt"):
                if admit:
                    await admit(False)
                run_at = now + timedelta(seconds=d.seconds)
                deadline = job.get("debounce_deadline")
                if deadline is not None:
                    run_at = min(run_at, deadline.replace(tzinfo=run_at.tzinfo))
                if replaced := await lc.rewait(job["_id"], key, spec.parameters, run_at):
                    return replaced, False
                continue  # promoted, claimed or cancelled meanwhile: look again
            if live and not d.follower:
                raise Conflict(
                    f"job {bound} with this debounce key has started and debounce.follower is false; "
                    "submit again when it has finished",
                    field="debounce.key",
                    job_id=bound,
                    reason="debounce_started",
                )
            # A new window: the key is free, its job finished, or it has started and this
            # submit becomes its one follower.
            doc = lc.build(spec, owner, now)
            if not await self.bindings.swap(key, bound, doc["_id"]):
                continue  # another submit opened a window first: join it
            try:
                if admit:
                    await admit(True)
                await lc.enqueuer.insert([doc])
            except BaseException:
                await self._unbind(key, doc["_id"], bound)
                raise
            return doc, True
        raise Conflict("the debounce key kept changing hands; try again", field="debounce.key")

    async def _bound_job(self, key: str) -> tuple[str | None, JobDoc | None]:
        """The job bound to `key`, waiting for one whose submit is still writing it."""
        while True:
            bound = await self.bindings.bound(key)
            job = await self.lifecycle.col.find_one({"_id": bound}) if bound else None
            if job is not None or bound is None:
                return bound, job
            age = (datetime.now(UTC) - ObjectId(bound).generation_time).total_seconds()
            if age > IN_FLIGHT:
                return bound, None  # gone (retention) or never written: the key is free
            await asyncio.sleep(0.02)

    async def _unbind(self, key: str, ours: str, before: str | None) -> None:
        """A new window that was not written gives the key back to the job it had."""
        if before is None:
            await self.bindings.col.delete_one({"_id": key, "job_id": ours})
        else:
            await self.bindings.swap(key, ours, before)
