"""Maintenance: the promoter (scheduled → queued when due; a due sleep step completes), the
timeouts of approval and signal steps, the rescuer (expired leases,
dead workers and their permits), the orphan sweeper (queued jobs a claimer's cursor passed),
workflow repair, retention and the cron scheduler (app/worker/scheduler.py).

Every move it makes is guarded, so any number of processes could run it at once; one
process of the deployment does, under the `maintenance` lease (app/leadership.py), because
twenty processes each polling every loop cost the server more than the jobs did (the chaos
claim race). The lease is short (half the job lease, at most 15 s), so when its holder dies another
process takes over before the dead holder's job leases have run out.

At rest it sends next to nothing (docs/deployment.md, "At rest"): the due pass sleeps until
the earliest due time the database holds, woken early by a change stream of the writes that
can bring it forward (app/store/due.py); the rescuer sleeps until the earliest lease or
registration can expire; the safety nets run every `safety_interval_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

from .. import metrics
from ..leadership import Singleton
from ..logs import job_logger
from ..store import quirks
from ..tasks import halt
from .scheduler import Scheduler


class Maintenance(Singleton):
    lease = "maintenance"

    def __init__(self, store, settings) -> None:
        super().__init__(store, lease_seconds=max(1.0, min(15.0, settings.lease_seconds / 2)))
        self.settings = settings
        self.scheduler = Scheduler(store, settings)
        self._runner: asyncio.Task | None = None

    async def start(self) -> None:
        self._runner = asyncio.create_task(self.run(), name="maintenance")

    async def stop(self) -> None:
        self.stopping = True
        await halt([self._runner])

    async def lead(self, state: dict) -> None:
        s = self.settings
        self.log.info("maintenance.leading", holder=self.holder)
        tasks = [
            asyncio.create_task(self._due_loop(), name="due"),
            asyncio.create_task(self._rescue_loop(), name="rescue"),
        ] + [
            asyncio.create_task(self._every(fn, every), name=fn.__name__)
            for fn, every in (
                # Safety nets: each repairs what a process that died mid-move left behind,
                # which the live paths never leave (queued jobs below a claim cursor,
                # fan-outs older than 10 s, workflows quiet for 30 s).
                (self.safety_pass, s.safety_interval_seconds),
                (self.reconcile, s.reconcile_interval_seconds),
                (self.expire, s.retention_interval_seconds),
            )
        ]
        try:
            while await self.keep():
                await asyncio.sleep(self.renew_in() + 0.01)
            self.log.info("maintenance.deposed", holder=self.holder)
        finally:
            await halt(tasks)

    async def _every(self, fn, seconds: float) -> None:
        while True:
            await self._guarded(fn)
            await asyncio.sleep(seconds)

    async def _guarded(self, fn, *args):
        try:
            return await fn(*args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.warning("maintenance.error", task=fn.__name__, error=repr(exc))
            return None

    async def safety_pass(self) -> None:
        """The safety nets, one after the other, sharing one read of the engines."""
        engines = await self.store.engines.list()
        await self._guarded(self.sweep_orphans, engines)
        await self._guarded(self.return_late_permits, engines)
        await self._guarded(self.settle_steps)
        await self._guarded(self.repair_workflows)

    async def due_pass(self) -> None:
        """Everything that waits on a time: jobs and sleep steps due, waits timed out, cron ticks."""
        for fn in (self.promote, self.expire_waits, self.run_schedules):
            await self._guarded(fn)

    async def _due_loop(self) -> None:
        """Read the earliest due time the database holds; when it has come, run the due
        pass (and read again: a pass that hit its batch limit leaves more due at once),
        else sleep until it, or until the due stream reports a write that may be due
        sooner (app/store/due.py). Two passes or reads are at least
        `promote_interval_seconds` apart; without change streams that is their cadence."""
        s = self.settings
        self.due_soon, self.due_watched = asyncio.Event(), False
        watcher = asyncio.create_task(self._watch_due(), name="due-watch")
        try:
            while True:
                started = time.monotonic()
                self.due_soon.clear()
                wait = s.safety_interval_seconds if self.due_watched else s.promote_interval_seconds
                try:
                    now = self.store.clock.now()
                    nxt = await self.store.due.next_due(now + timedelta(seconds=wait))
                    left = None if nxt is None else (nxt - now).total_seconds()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.log.warning("maintenance.error", task="next_due", error=repr(exc))
                    left = 0.0  # unknown: run the pass, as a poll would
                if left is not None and left <= 0:
                    await self.due_pass()
                else:
                    await _wait(self.due_soon, wait if left is None else min(wait, left))
                await asyncio.sleep(max(0.0, started + s.promote_interval_seconds - time.monotonic()))
        finally:
            await halt([watcher])

    async def _watch_due(self) -> None:
        # A getMore waits up to 10 s for a change; on SecantusDB any write answers it, so
        # round trips are spaced there (quirks.wake_spacing), as the workers' wake streams are.
        wait_ms = min(10_000, self.settings.db_timeout_ms // 2)
        while True:
            try:
                async with await self.store.due.watch(wait_ms) as stream:
                    self.due_watched = True
                    self.due_soon.set()  # anything written before the stream opened
                    while True:
                        asked = time.monotonic()
                        if await stream.try_next() is not None:
                            self.due_soon.set()
                        spacing = max(quirks.wake_spacing(self.store.secantus), self.settings.promote_interval_seconds)
                        if self.store.secantus:
                            await asyncio.sleep(max(0.0, spacing - (time.monotonic() - asked)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no change streams here: the due pass polls
                self.due_watched = False
                self.log.debug("maintenance.due_watch_error", error=repr(exc))
                await asyncio.sleep(self.settings.safety_interval_seconds)

    async def _rescue_loop(self) -> None:
        """The rescuer runs when the earliest lease or registration has expired, read from
        the database; a lease or registration taken after that read expires no sooner than
        a lease length later, so the loop reads again at least that often."""
        s = self.settings
        while True:
            try:
                nxt = await self.store.due.next_expiry()
                left = None if nxt is None else (nxt - await self.store.clock.fresh()).total_seconds()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("maintenance.error", task="next_expiry", error=repr(exc))
                left = 0.0  # unknown: rescue, as a poll would
            if left is not None and left <= 0:
                await self._guarded(self.rescue)  # then read again, after the shortest gap
            wait = min(s.lease_seconds, s.safety_interval_seconds)
            await asyncio.sleep(
                max(min(wait, left + 0.05) if left is not None else wait, min(1.0, s.lease_seconds / 4))
            )

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
        now = await self.store.clock.fresh()
        for worker in await self.store.workers.expired(now):
            if await self.store.workers.mark_dead(worker, now):
                permits = await self.store.engines.drop_holds(worker)
                self.log.warning("maintenance.worker_dead", dead_worker=worker, permits_returned=permits)
        await self.return_late_permits()
        rescued = 0
        for job in await self.store.jobs.expired_leases(now):
            status = await self.store.lifecycle.rescue(job, now)
            if status:
                rescued += 1
                metrics.job_rescued(job["engine"], status)
                job_logger(job).warning("job.rescued", new_status=status, lease_owner=job.get("lease_owner"))
        return rescued

    async def return_late_permits(self, engines: list[dict] | None = None) -> int:
        """Permits a dead worker took after it was marked dead (a reservation in flight at
        the time) would otherwise never come back."""
        returned = 0
        engines = await self.store.engines.list() if engines is None else engines
        holders = {w for e in engines for w in (e.get("holds") or {})}
        for worker in await self.store.workers.not_alive(sorted(holders)):
            if permits := await self.store.engines.drop_holds(worker):
                returned += permits
                self.log.warning("maintenance.late_permits_returned", dead_worker=worker, permits_returned=permits)
        return returned

    async def reconcile(self) -> int:
        """Re-derive the engines' counters from the jobs and correct any drift."""
        fixed = await self.store.engines.reconcile(self.store.jobs.count_queued)
        for c in fixed:
            metrics.COUNTER_CORRECTIONS.labels(c["engine"], c["counter"]).inc()
            self.log.warning("engine.counter_corrected", **c)
        return len(fixed)

    async def sweep_orphans(self, engines: list[dict] | None = None) -> int:
        moved = 0
        for engine in await self.store.engines.list() if engines is None else engines:
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
        """Retention (docs/retention.md): delete finished jobs and workflows kept long enough,
        and events older than their retention."""
        now, done = self.store.clock.now(), {}
        for part, expire in (
            ("jobs", self.store.job_retention.expire_jobs),
            ("workflows", self.store.workflow_retention.expire_workflows),
            ("events", self.store.event_retention.expire_events),
        ):
            try:  # each on its own: one that fails waits for the next pass, the others go on
                done[part] = await expire(now)
            except Exception as exc:
                self.log.warning("maintenance.expire_failed", part=part, error=repr(exc))
        if any(done.values()):
            self.log.info("maintenance.expired", **done)
        return sum(done.values())

    async def repair_workflows(self) -> int:
        """Workflows quiet for 30 s: release children of completed steps whose worker died
        before their fan-out, and re-count."""
        released = await self.store.flow.repair_stalled(self.store.clock.now() - timedelta(seconds=30))
        if released:
            self.log.warning("maintenance.workflow_children_released", jobs=released)
        return released


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(seconds, 0.0))
