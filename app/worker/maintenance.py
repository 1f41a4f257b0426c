"""Maintenance: the promoter (scheduled → queued when due; a due sleep step completes), the
timeouts of approval and signal steps, the rescuer (expired leases,
dead workers and their permits), the orphan sweeper (queued jobs a claimer's cursor passed),
workflow repair, retention and the cron scheduler (app/worker/scheduler.py).

Every move it makes is guarded, so any number of processes could run it at once; one
process of the deployment does, under the `maintenance` lease (app/leadership.py), because
twenty processes each polling every loop cost the server more than the jobs did (the chaos
claim race). The lease is short (at most the job lease), so when its holder dies another
process takes over before the dead holder's job leases have run out.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from .. import metrics
from ..leadership import Singleton
from ..logs import job_logger
from .scheduler import Scheduler


class Maintenance(Singleton):
    lease = "maintenance"

    def __init__(self, store, settings) -> None:
        super().__init__(store, lease_seconds=max(1.0, min(10.0, settings.lease_seconds)))
        self.settings = settings
        self.scheduler = Scheduler(store, settings)
        self._runner: asyncio.Task | None = None

    async def start(self) -> None:
        self._runner = asyncio.create_task(self.run(), name="maintenance")

    async def stop(self) -> None:
        self.stopping = True
        if self._runner:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    async def lead(self, state: dict) -> None:
        s = self.settings
        self.log.info("maintenance.leading", holder=self.holder)
        tasks = [
            asyncio.create_task(self._every(fn, every), name=fn.__name__)
            for fn, every in (
                (self.promote, s.promote_interval_seconds),
                (self.expire_waits, max(0.2, s.promote_interval_seconds)),
                (self.rescue, min(1.0, s.lease_seconds / 4)),
                (self.sweep_orphans, 2.0),
                (self.settle_steps, 2.0),
                (self.repair_workflows, 10.0),
                (self.reconcile, s.reconcile_interval_seconds),
                (self.expire, s.retention_interval_seconds),
                (self.run_schedules, s.schedule_interval_seconds),
            )
        ]
        try:
            while await self.keep():
                await asyncio.sleep(self.lease_seconds / 6)
            self.log.info("maintenance.deposed", holder=self.holder)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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
        n = await self.store.lifecycle.promote_due(self.store.clock.now())
        if n:
            self.log.debug("maintenance.promoted", jobs=n)
        return n

    async def expire_waits(self) -> int:
        """Approval and signal steps whose `timeout_seconds` passed: their `on_timeout`
        applies (app/store/decisions.py). Due sleep steps wake in `promote`."""
        n = await self.store.decisions.expire_due(self.store.clock.now())
        if n:
            self.log.info("maintenance.waits_timed_out", steps=n)
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
            status = await self.store.lifecycle.rescue(job, now)
            if status:
                rescued += 1
                metrics.job_rescued(job["engine"], status)
                job_logger(job).warning("job.rescued", new_status=status, lease_owner=job.get("lease_owner"))
        return rescued

    async def reconcile(self) -> int:
        """Re-derive the engines' counters from the jobs and correct any drift."""
        fixed = await self.store.engines.reconcile(self.store.jobs.count_queued)
        for c in fixed:
            metrics.COUNTER_CORRECTIONS.labels(c["engine"], c["counter"]).inc()
            self.log.warning("engine.counter_corrected", **c)
        return len(fixed)

    async def sweep_orphans(self) -> int:
        moved = 0
        for engine in await self.store.engines.list():
            moved += await self.store.claimer.requeue_orphans(engine)
        if moved:
            self.log.info("maintenance.orphans_requeued", jobs=moved)
        return moved

    async def settle_steps(self) -> int:
        """Replay the fan-out of finished workflow steps whose worker died before it ran."""
        stragglers = await self.store.jobs.unsettled(self.store.clock.now() - timedelta(seconds=10))
        if stragglers:
            await self.store.flow.settle_many([j["_id"] for j in stragglers])
        return len(stragglers)

    async def expire(self) -> int:
        """Retention (docs/retention.md): delete finished jobs and workflows kept long enough."""
        now = self.store.clock.now()
        jobs = await self.store.job_retention.expire_jobs(now)
        workflows = await self.store.workflow_retention.expire_workflows(now)
        if jobs or workflows:
            self.log.info("maintenance.expired", jobs=jobs, workflows=workflows)
        return jobs + workflows

    async def repair_workflows(self) -> int:
        """Workflows quiet for 30 s: release children of completed steps whose worker died
        before their fan-out, and re-count."""
        released = await self.store.flow.repair_stalled(self.store.clock.now() - timedelta(seconds=30))
        if released:
            self.log.warning("maintenance.workflow_children_released", jobs=released)
        return released
