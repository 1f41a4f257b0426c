"""The job lifecycle: the named, guarded primitives that move a job between states, one per
move of `app.domain.states.MOVES`, and what a terminal move implies.

With `enqueue.py` (entering `queued`) and `steps.py` (the moves of workflow steps), this is
the only code that writes a job's `status` (tests/test_domain_states.py checks it).

Invariants:
- Every move out of `running` is fenced by the lease token: its filter is plain equality
  on `{_id, status: "running", lease_token}`, so a worker that lost its lease matches
  nothing and gets `LeaseLost` instead of overwriting the new owner's work. A terminal
  move stamps `finished_token`, which tells a write whose reply was lost (ours, landed)
  apart from another owner's.
- A move guarded by the state read raises `InvalidTransition` when it matches nothing.
- A workflow step's terminal move is followed by its settle (`settles.py`: at once, or
  batched for the worker's exits).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from ..domain.models import JobSpec, new_job_document
from ..domain.retry import RetryConfig
from ..domain.states import JobStatus
from ..errors import InvalidTransition, LeaseLost, NotFound
from .documents import BAND_FIELDS, LEASE_FIELDS, JobDoc, bson_size, by_size, error_entry, is_step
from .retention import Expiry
from .settles import Settles

EPOCH = datetime(1970, 1, 1)
RUNNING = JobStatus.RUNNING.value
UNSET_LEASE = {f: "" for f in LEASE_FIELDS}
EXIT_TARGETS = {
    "complete": JobStatus.COMPLETED,
    "fail": JobStatus.FAILED,
    "backoff": JobStatus.SCHEDULED,
    "stop": JobStatus.CANCELLED,
}


@dataclass
class Exit:
    """One lease holder's move out of `running` (not `release`, which takes a seq)."""

    job: JobDoc
    token: str
    move: str  # complete | fail | backoff | stop
    result: Any = None
    error: dict | None = None
    execution_ms: int | None = None
    run_at: datetime | None = None  # backoff: when to run again, counted from the failure
    reason: str = ""


class Lifecycle:
    def __init__(
        self,
        col,
        settings,
        clock,
        engines,
        enqueuer,
        dedupe,
        workers,
        settle: Callable[[list[str]], Awaitable[None]],
        expiry: Expiry,
    ) -> None:
        self.col, self.settings, self.clock = col, settings, clock
        self.engines, self.enqueuer, self.dedupe, self.workers = engines, enqueuer, dedupe, workers
        self.settles, self.expiry = Settles(settle), expiry
        self._default_retry_doc: dict | None = None
        # Due sleep steps complete instead of queueing (`wake`, app/store/decisions.py;
        # wired by app/store/flowsteps.py). Until it is wired they are left scheduled.
        self.wake: Callable[[list[JobDoc], datetime], Awaitable[int]] | None = None
        from .debounce import Debouncer, DebounceStore

        self.debouncer = Debouncer(self, DebounceStore(col.database))

    # --- (new) → pending | scheduled | queued --------------------------------------------
    def default_retry(self) -> RetryConfig:
        s = self.settings
        return RetryConfig(
            max_retries=s.retry_max_retries,
            retry_delay_seconds=s.retry_delay_seconds,
            max_delay_seconds=s.retry_max_delay_seconds,
        )

    def build(self, spec: JobSpec, owner: str, now: datetime | None = None, **kw: Any) -> JobDoc:
        """A new job's document. The default retry policy is dumped once: a 10,000-step
        workflow builds 10,000 of these in one request."""
        if spec.retry_config is not None:
            retry = spec.retry_config.model_dump()
        else:
            if self._default_retry_doc is None:
                self._default_retry_doc = self.default_retry().model_dump()
            retry = dict(self._default_retry_doc)
        return new_job_document(
            spec, job_id=str(ObjectId()), owner=owner, now=now or self.clock.now(), retry=retry, **kw
        )

    async def submit(self, spec: JobSpec, owner: str, admit=None) -> tuple[JobDoc, bool]:
        """Insert one job. Returns `(job, created)`; `created` is False when a live job with
        the same `dedupe_key` exists, which is returned instead, or when a waiting debounced
        job took this submit's parameters (debounce.py; `admit(new)` is called before it writes)."""
        if spec.debounce is not None:
            return await self.debouncer.submit(spec, owner, admit)
        [(job, created)] = await self.submit_many([spec], owner)
        return job, created

    async def submit_many(
        self, specs: list[JobSpec], owner: str, session=None, deferred: list | None = None
    ) -> list[tuple[JobDoc, bool]]:
        """Insert jobs (no debounce) with one `insert_many`, one seq `$inc` per band. Returns
        `(job, created)` in order; a spec whose `dedupe_key` is bound to a live job gets that
        job, `created` False. Keys are bound before the insert and let go if it fails.
        `session` and `deferred`: in the caller's transaction (`Enqueuer.insert`)."""
        out: list[tuple[JobDoc, bool]] = []
        new: list[JobDoc] = []
        bound_keys: list[tuple[str, str]] = []
        mine: dict[str, JobDoc] = {}  # keys bound by this call: a repeat is a hit on its job
        try:
            for spec in specs:
                doc = self.build(spec, owner)
                key = f"{owner}:{spec.dedupe_key}" if spec.dedupe_key else None
                existing = mine.get(key) if key in mine else await self._bind(key, doc["_id"], session) if key else None
                if existing is not None:
                    out.append((existing, False))
                    continue
                if key:
                    bound_keys.append((key, doc["_id"]))
                    mine[key] = doc
                out.append((doc, True))
                new.append(doc)
            if new:
                await self.enqueuer.insert(new, session=session, deferred=deferred)
        except BaseException:
            if session is None:  # (in a transaction, its abort lets them go)
                for key, job_id in bound_keys:
                    await self.dedupe.drop(key, job_id)
            raise
        return out

    async def _bind(self, key: str, job_id: str, session=None) -> JobDoc | None:
        """Bind a dedupe key to `job_id`, or return the live job it is bound to."""
        while True:
            bound = await self.dedupe.claim(key, job_id, session)
            if bound is None or bound == job_id:
                return None
            existing = await self.col.find_one({"_id": bound}, session=session)
            if existing is not None and not JobStatus(existing["status"]).terminal:
                return existing
            await self.dedupe.drop(key, bound, session)  # its job finished: the key is free

    # --- scheduled → scheduled: a debounced job's new parameters and start --------------
    async def rewait(self, job_id: str, key: str, parameters: dict, run_at: datetime) -> JobDoc | None:
        """Give a waiting debounced job the latest submit's parameters and `run_at`, guarded
        by its status and key: only while it is `scheduled` and has never started. Not a
        status write, and no seq: it stays where it is. Returns the job as changed, or None."""
        return await self.col.find_one_and_update(
            {"_id": job_id, "status": JobStatus.SCHEDULED.value, "attempt": 0, "debounce_key": key},
            {"$set": {"parameters": parameters, "run_at": run_at}},
            return_document=ReturnDocument.AFTER,
        )

    async def insert_many(self, docs: list[JobDoc], session=None, deferred: list | None = None) -> None:
        await self.enqueuer.insert(docs, session=session, deferred=deferred)

    # --- queued → running ----------------------------------------------------------------
    async def take(self, ids: list[str], stamp: dict[str, Any]) -> int:
        """The claim's write: queued → running for those of `ids` still queued, stamped with
        one lease (`stamp`); the attempt is charged here. Not a retryable write: after an
        error the claimer reads back by the lease token (`Claimer.claim`)."""
        res = await self.col.update_many(
            {"_id": {"$in": ids}, "status": JobStatus.QUEUED.value},
            {"$set": {**stamp, "status": RUNNING}, "$inc": {"attempt": 1}},
        )
        return res.modified_count

    # --- the lease holder ----------------------------------------------------------------
    async def _leased(self, job_id: str, token: str, update: dict[str, Any]) -> None:
        res = await self.col.update_one({"_id": job_id, "status": RUNNING, "lease_token": token}, update)
        if res.matched_count == 0:
            raise LeaseLost(f"job {job_id} is no longer leased with this token", job_id=job_id)

    async def heartbeat(self, job_id: str, token: str) -> None:
        expires = self.clock.now() + timedelta(seconds=self.settings.lease_seconds)
        await self._leased(job_id, token, {"$set": {"lease_expires_at": expires}})

    async def progress(self, job_id: str, token: str, percent: float, stage: str | None, data: dict) -> None:
        await self._leased(job_id, token, {"$set": {"progress": {"percent": percent, "stage": stage, "data": data}}})

    async def leave_running(self, exits: list[Exit]) -> set[str]:
        """running → completed | failed | scheduled | cancelled for many jobs, each fenced by
        its own lease. Returns the ids whose lease was lost (nothing was written for them).

        Completions of one claim share a token and complete in one `update_many` whose
        pipeline picks each job's result by its position (`$literal`, so a result is never
        read as an expression): one statement is one commit on the server, where a
        `bulk_write` costs one per job. Other exits go in one `bulk_write`. Every exit stamps
        `finished_token`, so after a lost reply a replay tells its own landed write apart
        from another owner's move."""
        now = self.clock.now()
        lost: set[str] = set()
        by_token: dict[str, list[Exit]] = {}
        others: list[Exit] = []
        for e in exits:
            (by_token.setdefault(e.token, []) if e.move == "complete" else others).append(e)
        expires = {
            "$cond": [
                {"$eq": [{"$type": "$workflow_id"}, "string"]},
                "$$REMOVE",
                {"$literal": self.expiry.at(JobStatus.COMPLETED.value, now)},
            ]
        }
        runs = [run for members in by_token.values() for run in by_size(members, lambda m: bson_size(m.result))]
        for members in runs:
            token = members[0].token
            ids = [m.job["_id"] for m in members]
            at = {"$indexOfArray": [{"$literal": ids}, "$_id"]}
            res = await self.col.update_many(
                {"_id": {"$in": ids}, "status": RUNNING, "lease_token": token},
                [
                    {
                        "$set": {
                            "status": JobStatus.COMPLETED.value,
                            "completed_at": now,
                            "finished_token": token,
                            "progress.percent": 100.0,
                            "expires_at": expires,
                            "result": {"$arrayElemAt": [{"$literal": [m.result for m in members]}, at]},
                            "execution_time_ms": {
                                "$arrayElemAt": [{"$literal": [m.execution_ms for m in members]}, at]
                            },
                        }
                    },
                    {"$unset": list(LEASE_FIELDS)},
                ],
            )
            if res.modified_count < len(ids):
                lost |= await self._not_ours(members)
        if others:
            ops = [
                UpdateOne({"_id": e.job["_id"], "status": RUNNING, "lease_token": e.token}, self._exit_update(e, now))
                for e in others
            ]
            res = await self.col.bulk_write(ops, ordered=False)
            if res.modified_count < len(ops):
                lost |= await self._not_ours(others)
        self.settle_later(
            [
                e.job["_id"]
                for e in exits
                if is_step(e.job) and e.job["_id"] not in lost and EXIT_TARGETS[e.move].terminal
            ]
        )
        return lost

    def _exit_update(self, e: Exit, now: datetime) -> dict[str, Any]:
        target = EXIT_TARGETS[e.move]
        update: dict[str, Any] = {"$set": {"status": target.value, "finished_token": e.token}, "$unset": UNSET_LEASE}
        if e.error is not None:
            update["$set"]["last_error"] = e.error
            update["$push"] = {"errors": e.error}
        if target == JobStatus.SCHEDULED:
            update["$set"]["run_at"] = e.run_at or now
            update["$inc"] = {"retry_count": 1}
            return update
        update["$set"].update(
            completed_at=now,
            execution_time_ms=e.execution_ms,
            **self.expiry.finished(is_step(e.job), target.value, now),
        )
        if target == JobStatus.CANCELLED:
            update["$set"]["cancel_reason"] = e.reason
        return update

    async def _not_ours(self, exits: list[Exit]) -> set[str]:
        docs = await self.col.find({"_id": {"$in": [e.job["_id"] for e in exits]}}, {"finished_token": 1}).to_list(None)
        ours = {(d["_id"], d.get("finished_token")) for d in docs}
        return {e.job["_id"] for e in exits if (e.job["_id"], e.token) not in ours}

    async def complete(self, job: JobDoc, token: str, result: Any, execution_ms: int) -> None:
        await self.leave(Exit(job, token, "complete", result=result, execution_ms=execution_ms))

    async def fail(self, job: JobDoc, token: str, error: dict, execution_ms: int | None) -> None:
        await self.leave(Exit(job, token, "fail", error=error, execution_ms=execution_ms))

    async def backoff(self, job: JobDoc, token: str, error: dict, delay_seconds: float) -> None:
        run_at = self.clock.now() + timedelta(seconds=delay_seconds)
        await self.leave(Exit(job, token, "backoff", error=error, run_at=run_at))

    async def stop(self, job: JobDoc, token: str, reason: str, execution_ms: int | None = None) -> None:
        await self.leave(Exit(job, token, "stop", reason=reason, execution_ms=execution_ms))

    async def leave(self, e: Exit) -> None:
        if await self.leave_running([e]):
            raise LeaseLost(f"job {e.job['_id']} is no longer leased with this token", job_id=e.job["_id"])

    async def release(self, job: JobDoc, token: str) -> None:
        """running → queued without charging the attempt (shutdown, or a claim whose
        handler could not be started)."""
        moved = await self.enqueuer.move(
            [job],
            {"status": RUNNING, "lease_token": token},
            {"$set": {"started_at": None}, "$inc": {"attempt": -1}, "$unset": UNSET_LEASE},
        )
        if not moved:
            raise LeaseLost(f"job {job['_id']} is no longer leased with this token", job_id=job["_id"])

    async def hold(self, job: JobDoc, token: str, note: dict[str, Any]) -> None:
        """running → queued without charging the attempt: the provider pushed back
        (`RateLimited`), and the engine or key is held meanwhile (`EngineStore.hold`). Not an
        error: `errors` and `retry_count` stay as they were; `last_backpressure` keeps the
        note (when, until when, the key, the reason) and `backpressure_count` counts them."""
        moved = await self.enqueuer.move(
            [job],
            {"status": RUNNING, "lease_token": token},
            {
                "$set": {"started_at": None, "last_backpressure": note},
                "$inc": {"attempt": -1, "backpressure_count": 1},
                "$unset": UNSET_LEASE,
            },
        )
        if not moved:
            raise LeaseLost(f"job {job['_id']} is no longer leased with this token", job_id=job["_id"])

    # --- users ---------------------------------------------------------------------------
    async def cancel(self, job_id: str, reason: str = "cancelled by user") -> JobDoc:
        """pending | scheduled | queued → cancelled at once; a running job is asked to stop
        (its worker signals the handler, and stops it hard after the grace period). A
        cancelled step is settled before this returns: its dependents are cancelled too."""
        for _ in range(5):
            job = await self.col.find_one({"_id": job_id})
            if job is None:
                raise NotFound(f"job {job_id!r} not found", field="job_id")
            status = JobStatus(job["status"])
            if status.terminal:
                raise InvalidTransition(f"job {job_id} is already {status.value}", field="status")
            if status == JobStatus.RUNNING:
                # The reason waits under its own name: the exit writes `cancel_reason`, and a
                # field set to the value it already has is not in the change (nor the event).
                update = {"$set": {"cancel_requested": True, "stop_reason": reason}}
            else:
                now = self.clock.now()
                update = {
                    "$set": {
                        "status": JobStatus.CANCELLED.value,
                        "completed_at": now,
                        "cancel_reason": reason,
                        **self.expiry.finished(is_step(job), JobStatus.CANCELLED.value, now),
                    }
                }
            if await self._landed_once({"_id": job_id, "status": status.value}, update):
                if status == JobStatus.QUEUED:
                    await self.enqueuer.left(job["engine"], 1)
                if status != JobStatus.RUNNING and is_step(job):
                    await self.settle_now([job_id])
                return await self.col.find_one({"_id": job_id})
        raise InvalidTransition(f"job {job_id} kept changing state; try again", field="status")

    async def _landed_once(self, guard: dict[str, Any], update: dict[str, Any]) -> bool:
        """A guarded `update_one`, and after a lost reply a read that tells whether it landed
        (the document then holds every value the update set)."""
        try:
            return bool((await self.col.update_one(guard, update)).modified_count)
        except PyMongoError:
            doc = await self.col.find_one({"_id": guard["_id"]}, list(update["$set"]))
            if doc is None or any(doc.get(k) != v for k, v in update["$set"].items()):
                raise
            return True

    # --- maintenance ---------------------------------------------------------------------
    async def promote_due(self, now: datetime, limit: int = 500) -> int:
        """scheduled → queued for every job whose `run_at` has come; a due sleep step is
        never queued: it completes (`wake`)."""
        due = (
            await self.col.find(
                {"status": JobStatus.SCHEDULED.value, "run_at": {"$gte": EPOCH, "$lte": now}},
                {**BAND_FIELDS, "kind": 1, "run_at": 1},
            )
            .limit(limit)
            .to_list(limit)
        )
        sleeping = [d for d in due if d.get("kind") == "sleep"]
        woke = await self.wake(sleeping, now) if sleeping and self.wake else 0
        due = [d for d in due if d.get("kind") != "sleep"]
        return woke + (await self.enqueuer.move(due, {"status": JobStatus.SCHEDULED.value}, {}) if due else 0)

    async def reseq(self, stray: list[JobDoc]) -> int:
        """queued → queued with a fresh seq: orphans below their band's cursor (a writer died
        mid-enqueue). The old seq is part of the guard, so a job claimed meanwhile stays."""
        n = await self.enqueuer.move(stray, {"status": JobStatus.QUEUED.value, "seq": None}, {})
        await self.enqueuer.left(stray[0]["engine"], n)  # they were counted as queued already
        return n

    async def rescue(self, job: JobDoc, now: datetime) -> str:
        """running with an expired lease → queued, or failed when no attempts are left.
        A job whose handler never started (its worker recorded no start for the lease) goes
        back to queued with the attempt refunded. Returns the new status, or "" if the job
        moved on meanwhile. A failed step is settled here."""
        started = await self.workers.handler_started(job.get("lease_owner"), job["lease_token"])
        attempt = job.get("attempt", 1)
        # the exact expiry read: a heartbeat that renewed the lease meanwhile wins
        guard = {
            "_id": job["_id"],
            "status": RUNNING,
            "lease_token": job["lease_token"],
            "lease_expires_at": job["lease_expires_at"],
        }
        if started is False:
            error, update = None, {"$inc": {"attempt": -1}, "$unset": UNSET_LEASE}
        else:
            error = error_entry(
                "lease_expired",
                f"lease expired on attempt {attempt} (worker {job.get('lease_owner')} stopped or stalled)",
                attempt,
                now,
                job.get("lease_owner"),
            )
            update = {
                "$set": {"last_error": error},
                "$push": {"errors": error},
                "$inc": {"retry_count": 1},
                "$unset": UNSET_LEASE,
            }
            if attempt >= RetryConfig(**job["retry_config"]).max_attempts:
                error["message"] += f"; no attempts left ({attempt}/{RetryConfig(**job['retry_config']).max_attempts})"
                update["$set"].update(
                    status=JobStatus.FAILED.value,
                    completed_at=now,
                    **self.expiry.finished(is_step(job), JobStatus.FAILED.value, now),
                )
                del update["$inc"]
                if not (await self.col.update_one(guard, update)).modified_count:
                    return ""
                if is_step(job):
                    await self.settle_now([job["_id"]])
                return JobStatus.FAILED.value
        # Win the job before taking a number: every process's rescuer may race for it, and
        # each number taken holds the band's cursor back (an in-flight marker) until it lands.
        mark = uuid.uuid4().hex
        if not (await self.col.update_one(guard, {"$set": {"lease_token": mark}})).modified_count:
            return ""
        moved = await self.enqueuer.move([job], {"status": RUNNING, "lease_token": mark}, update)
        return JobStatus.QUEUED.value if moved else ""

    # --- consequences of terminal moves (settles.py) ------------------------------------
    async def settle_now(self, step_ids: list[str]) -> None:
        await self.settles.now(step_ids)

    def settle_later(self, step_ids: list[str]) -> None:
        self.settles.later(step_ids)

    async def drain(self) -> None:
        """Wait for batched settles (shutdown, tests)."""
        await self.settles.drain()
