"""Maintenance that any number of processes may run at once, because every move it makes
is guarded: the promoter (scheduled → queued when due), the rescuer (expired leases, dead
workers and their permits), the orphan sweeper (queued jobs a claimer's cursor passed), and
the cron scheduler (app/worker/scheduler.py).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from app import metrics
from app.logs import get_logger, job_logger
from app.worker.scheduler import Scheduler


class Maintenance:
    def __init__(self, store, settings) -> None:
        self.store, self.settings = store, settings
        self.log = get_logger("switchyard.maintenance")
        self._tasks: list[asyncio.Task] = []
        self.scheduler = Scheduler(store, settings)

    async def start(self) -> None:
        s = self.settings
        for fn, every in ((self.promote, s.promote_interval_seconds),
                          (self.rescue, min(1.0, s.lease_seconds / 4)),
                          (self.sweep_orphans, 2.0),
                          (self.settle_steps, 2.0),
                          (self.repair_workflows, 10.0),
                          (self.expire, s.retention_interval_seconds),
                          (self.run_schedules, s.schedule_interval_seconds)):
            self._tasks.append(asyncio.create_task(self._every(fn, every), name=fn.__name__))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _every(self, fn, seconds: float) -> None:
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("maintenance.error", task=fn.__name__, error=repr(exc))
            await asyncio.sleep(seconds)

    async def run_schedules(self) -> int:
        """Fire due cron ticks (app/worker/scheduler.py)."""
        return await self.scheduler.tick()

    async def promote(self) -> int:
        n = await self.store.jobs.promote_due(self.store.clock.now())
        if n:
            self.log.debug("maintenance.promoted", jobs=n)
        return n

    async def rescue(self) -> int:
        """Dead workers first (their permits come back), then jobs whose lease expired."""
        now = await self.store.clock.sync()
        for worker in await self.store.workers.expired(now):
            if await self.store.workers.mark_dead(worker, now):
                permits = await self.store.engines.drop_holds(worker)
                self.log.warning("maintenance.worker_dead", dead_worker=worker, permits_returned=permits)
        # Permits a dead worker took after it was marked dead (a reservation in flight at
        # the time) would otherwise never come back.
        holders = {w for e in await self.store.engines.list() for w in (e.get("holds") or {})}
        for worker in await self.store.workers.not_alive(sorted(holders)):
            if permits := await self.store.engines.drop_holds(worker):
                self.log.warning("maintenance.late_permits_returned", dead_worker=worker, permits_returned=permits)
        rescued = 0
        for job in await self.store.jobs.expired_leases(now):
            status = await self.store.jobs.rescue(job, now)
            if status:
                rescued += 1
                metrics.job_rescued(job["engine"], status)
                if status == "failed" and job.get("workflow_id"):
                    await self.store.workflows.settle(job["_id"])
                job_logger(job).warning("job.rescued", new_status=status, lease_owner=job.get("lease_owner"))
        return rescued

    async def sweep_orphans(self) -> int:
        moved = 0
        for engine in await self.store.engines.list():
            moved += await self.store.jobs.requeue_orphans(engine)
        if moved:
            self.log.info("maintenance.orphans_requeued", jobs=moved)
        return moved

    async def settle_steps(self) -> int:
        """Replay the fan-out of finished workflow steps whose worker died before it ran."""
        stragglers = await self.store.jobs.unsettled(self.store.clock.now() - timedelta(seconds=10))
        if stragglers:
            await self.store.workflows.settle_many([j["_id"] for j in stragglers])
        return len(stragglers)

    async def expire(self) -> int:
        """Retention (docs/retention.md): delete finished jobs and workflows kept long enough."""
        now = self.store.clock.now()
        jobs = await self.store.jobs.expire_jobs(now)
        workflows = await self.store.workflows.expire_workflows(now)
        if jobs or workflows:
            self.log.info("maintenance.expired", jobs=jobs, workflows=workflows)
        return jobs + workflows

    async def repair_workflows(self) -> int:
        """Workflows quiet for 30 s: release children of completed steps whose worker died
        before their fan-out, and re-count."""
        released = await self.store.workflows.repair_stalled(self.store.clock.now() - timedelta(seconds=30))
        if released:
            self.log.warning("maintenance.workflow_children_released", jobs=released)
        return released
