"""Operator moves on `jobs`: the dead letter (list it, retry one job, retry by filter) and
resetting stuck jobs. `JobAdmin`, with the lifecycle as its collaborator for every move.

Invariants:
- A retry is one `update_one` guarded on `{_id, status}` as read (`failed` or `cancelled`),
  so two operators retrying the same job, or a retry racing the retention cleaner, move it
  once. The job gets a fresh attempt budget (`attempt`, `retry_count` back to 0); its
  `errors` history and `last_error` stay.
- A retried job re-enters `queued` through `Enqueuer.move`, which takes its seq and counts
  it in the engine's `queued` counter, and gives the count back for a write that matched
  nothing, so the counter keeps matching the jobs.
- Workflow steps are not retried here: their workflow's counters and dependents would
  disagree. `WorkflowStore.retry` re-runs a workflow's failed steps together.

Finding failed jobs: per tenant through `(tenant, status, _id)`, sorted and limited on the
server, so a page's cost follows the page and the tenant's dead letter, never `jobs`.
"""

from __future__ import annotations

from datetime import datetime

from ..domain import states
from ..domain.retry import RetryConfig
from ..domain.states import JobStatus
from ..errors import Conflict, InvalidTransition

FAILED = JobStatus.FAILED.value
RETRYABLE = tuple(s.value for s in states.RETRYABLE)
ROW = {
    "engine": 1,
    "priority": 1,
    "tenant": 1,
    "lane": 1,
    "operation": 1,
    "status": 1,
    "owner": 1,
    "completed_at": 1,
    "workflow_id": 1,
    "dedupe_key": 1,
    "last_error.code": 1,
}


class JobAdmin:
    def __init__(self, col, engines, enqueuer, lifecycle, queries, dedupe, clock) -> None:
        self.col, self.engines, self.enqueuer, self.lifecycle = col, engines, enqueuer, lifecycle
        self.queries, self.dedupe, self.clock = queries, dedupe, clock

    def _failed_filter(
        self,
        *,
        engine: str | None,
        operation: str | None,
        error_code: str | None,
        failed_after: datetime | None = None,
        failed_before: datetime | None = None,
    ) -> dict:
        """The dead letter's filter, from validated values only, as plain equality."""
        filt: dict = {"status": FAILED}
        for key, value in (("engine", engine), ("operation", operation), ("last_error.code", error_code)):
            if value is not None:
                filt[key] = str(value)
        if failed_after is not None or failed_before is not None:
            filt["completed_at"] = {k: v for k, v in (("$gte", failed_after), ("$lt", failed_before)) if v is not None}
        return filt

    async def dead_letter(
        self,
        *,
        engine: str | None = None,
        operation: str | None = None,
        error_code: str | None = None,
        tenant: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> tuple[list[dict], str | None]:
        """Failed jobs, newest first; `after` is the previous page's `next_cursor`. Sorted
        and limited on the server, per tenant (`JobQueries.page`)."""
        return await self.queries.page(
            self._failed_filter(engine=engine, operation=operation, error_code=error_code),
            tenant=tenant,
            after=after,
            limit=limit,
        )

    async def retry_job(self, job_id: str) -> dict:
        """failed | cancelled → queued, with a fresh attempt budget. Raises NotFound,
        Conflict (a workflow step; a live job holds its dedupe key) or InvalidTransition."""
        job = await self.queries.get(job_id)
        if job.get("workflow_id"):
            raise Conflict(
                f"job {job_id} is step {job.get('step_key')!r} of workflow {job['workflow_id']}; "
                "retry the workflow instead",
                field="workflow_id",
                workflow_id=job["workflow_id"],
            )
        if job["status"] not in RETRYABLE:
            raise InvalidTransition(
                f"job {job_id} is {job['status']}; only failed or cancelled jobs can be retried", field="status"
            )
        await self._rebind_dedupe(job)
        if not await self._requeue_fresh([job]):
            raise InvalidTransition(f"job {job_id} changed meanwhile; try again", field="status")
        return await self.queries.get(job_id)

    async def retry_failed(
        self,
        *,
        engine: str | None = None,
        operation: str | None = None,
        error_code: str | None = None,
        failed_after: datetime | None = None,
        failed_before: datetime | None = None,
        limit: int = 100,
    ) -> dict:
        """Retry up to `limit` failed standalone jobs matching the filters, oldest first.
        Steps are counted and their workflows named, not retried."""
        filt = self._failed_filter(
            engine=engine,
            operation=operation,
            error_code=error_code,
            failed_after=failed_after,
            failed_before=failed_before,
        )
        rows: list[dict] = []
        after = None
        while True:  # the matches in pages, oldest first; only small projections are held
            page, after = await self.queries.page(
                filt, tenant=None, after=after, limit=1000, newest=False, projection=ROW
            )
            rows += page
            if after is None:
                break
        steps = [r for r in rows if r.get("workflow_id")]
        chosen, blocked = [], 0
        for r in (r for r in rows if not r.get("workflow_id")):
            if len(chosen) >= limit:
                break
            try:
                await self._rebind_dedupe(r)
                chosen.append(r)
            except Conflict:
                blocked += 1
        retried = await self._requeue_fresh(chosen) if chosen else 0
        return {
            "retried": retried,
            "matched": len(rows) - len(steps),
            "skipped_dedupe": blocked,
            "skipped_steps": len(steps),
            "workflow_ids": sorted({r["workflow_id"] for r in steps}),
        }

    async def _rebind_dedupe(self, job: dict) -> None:
        """A retried job takes its dedupe key back, unless another live job holds it."""
        if not job.get("dedupe_key"):
            return
        key = f"{job.get('owner')}:{job['dedupe_key']}"
        for _ in range(5):
            bound = await self.dedupe.claim(key, job["_id"])
            if bound is None or bound == job["_id"]:
                return
            other = await self.col.find_one({"_id": bound}, {"status": 1}) if bound else None
            if other is not None and not JobStatus(other["status"]).terminal:
                raise Conflict(f"job {bound} with the same dedupe_key is live", field="dedupe_key", job_id=bound)
            await self.dedupe.drop(key, bound)
        raise Conflict("the dedupe_key kept changing hands; try again", field="dedupe_key")

    async def _requeue_fresh(self, jobs: list[dict]) -> int:
        """The `retry` move: terminal jobs back to queued with a fresh attempt budget, each
        guarded on the status it was read in. Returns how many moved."""
        now = self.clock.now()
        return await self.enqueuer.move(
            jobs,
            {"status": None},
            {
                "$set": {
                    "attempt": 0,
                    "retry_count": 0,
                    "run_at": None,
                    "started_at": None,
                    "completed_at": None,
                    "execution_time_ms": None,
                    "result": None,
                    "cancel_requested": False,
                    "retried_at": now,
                    "progress": {"percent": 0.0, "stage": None, "data": {}},
                },
                "$unset": {"expires_at": "", "cancel_reason": "", "stop_reason": "", "finished_token": ""},
                "$inc": {"manual_retries": 1},
            },
        )

    async def reset_stuck(
        self, now: datetime, *, engine: str | None = None, dry_run: bool = False, limit: int = 1000
    ) -> list[dict]:
        """Running jobs whose lease has expired, handed to the rescuer now: requeued with the
        attempt counted, or failed when no attempts are left. Returns one entry per job with
        `new_status` ("" when it moved on meanwhile; what would happen under `dry_run`)."""
        out = []
        for job in await self.queries.expired_leases(now, limit):
            if engine is not None and job["engine"] != engine:
                continue
            if dry_run:
                last = job.get("attempt", 1) >= RetryConfig(**job["retry_config"]).max_attempts
                status = FAILED if last else JobStatus.QUEUED.value
            else:
                status = await self.lifecycle.rescue(job, now)
            out.append(
                {
                    "job_id": job["_id"],
                    "engine": job["engine"],
                    "workflow_id": job.get("workflow_id"),
                    "lease_owner": job.get("lease_owner"),
                    "lease_expires_at": job.get("lease_expires_at"),
                    "attempt": job.get("attempt", 1),
                    "new_status": status,
                }
            )
        return out
