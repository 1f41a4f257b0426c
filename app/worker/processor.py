"""`JobProcessor`: one worker process's slots, permits and loops.

Loops: fetch (here: claim when there are free slots and work, launch, report), and in
`loops.py` the heartbeat, the cancel poll and the wake stream.

Permits: `held[e]` permits of engine `e` are taken in the engine document before claiming;
`busy[e]` of them run jobs. A finished job's permit stays with this worker while it has
more work of that engine and a free slot for it, and goes back as soon as a claim finds
the queue dry, the engine is paused or over its limit, or every slot is busy. Workers do not
take turns on a saturated engine: handing a permit over costs two writes and wakes every
waiting worker, and with twenty workers that churn cost more than the jobs (the chaos
claim race). A worker with no permit watches for releases with a slower stream.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from datetime import UTC, timedelta

from .. import metrics
from ..admission import Admission
from ..errors import LeaseLost
from ..logs import get_logger
from ..store.engines import busy_bands, next_hold_end
from ..tasks import halt
from . import outcome as oc
from .batching import Exits, KeyReturns
from .executor import Execution, ResultCache
from .loops import LoopsMixin, new_worker_id


def has_work(engine: dict, now=None) -> bool:
    """Claimable work: a band with queued jobs, neither paused nor held by back-pressure."""
    return next(busy_bands(engine, now=now), None) is not None


class JobProcessor(LoopsMixin):
    def __init__(
        self,
        store,
        settings,
        *,
        concurrency: int,
        engines: list[str] | None = None,
        kind: str = "worker",
        supervisor: str | None = None,
    ) -> None:
        self.store, self.settings = store, settings
        self.supervisor = supervisor  # the `serve` that started this process, if one did
        self.concurrency = concurrency
        self.only = set(engines) if engines else None
        self.kind = kind
        self.worker_id = new_worker_id()
        self.held: dict[str, int] = defaultdict(int)
        self.busy: dict[str, int] = defaultdict(int)
        self.running: dict[str, Execution] = {}
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # the fetch loop found nothing and waits for a wake-up
        self.busy_since = 0.0
        self.exits = Exits(store)
        self.leases: dict[str, int] = defaultdict(int)  # lease token → its jobs still running here
        self.done_leases: list[str] = []  # their start marks go with the next heartbeat
        self.results = ResultCache(2000)
        self.admission = Admission(store, settings)  # steps handlers add (ctx.add_steps) are admitted here
        self.stopping = False
        self.contended = False  # the last fetch lost candidates to other claimers
        self.starved = False  # the last fetch found work but no free permit
        self.watching = False  # the wake stream is open: the idle poll is only a safety net
        self.hold_ends: list = []  # when the back-pressure holds seen by the last fetch end
        self.key_permits: dict[str, int] = {}  # job id -> the lane whose key permit it holds
        self.key_returns = KeyReturns(store, get_logger("switchyard.worker", worker=self.worker_id))
        self.declared_dead = False  # set by the heartbeat; the fetch loop re-registers between fetches
        self._tasks: list[asyncio.Task] = []
        self._execs: set[asyncio.Task] = set()
        self.log = get_logger("switchyard.worker", worker=self.worker_id)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.clock.sync()
        await self._register()
        for loop in (self._fetch_loop, self._heartbeat_loop, self._cancel_loop, self._wake_loop):
            self._tasks.append(asyncio.create_task(loop(), name=loop.__name__))  # fetch first
        self.log.info("worker.started", concurrency=self.concurrency, engines=sorted(self.only or []) or "all")

    async def _register(self) -> None:
        await self.store.workers.register(
            self.worker_id,
            engines=sorted(self.only) if self.only else None,
            concurrency=self.concurrency,
            kind=self.kind,
            supervisor=self.supervisor,
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop claiming; let running jobs finish within `grace`; release the rest to the
        queue without counting their attempt; return every permit."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.stopping = True
        self.wake.set()
        # let a claim in flight finish and launch its jobs, so none is left leased but unrun
        fetch = self._tasks[0]
        await asyncio.wait([fetch], timeout=10)
        if self._execs:
            self.log.info("worker.draining", running=len(self._execs), grace_seconds=grace)
            await asyncio.wait(self._execs, timeout=grace)
        for ex in list(self.running.values()):
            ex.releasing.set()
        if self._execs:
            await asyncio.wait(self._execs, timeout=10)
        await self.store.lifecycle.drain()
        await halt(self._tasks)
        await self.store.engines.drop_holds(self.worker_id)  # every permit, and our entries
        self.held.clear()
        await self.store.workers.stop(self.worker_id)
        self.log.info("worker.stopped")

    # --- fetching ------------------------------------------------------------------------
    def free_slots(self) -> int:
        return self.concurrency - len(self.running)

    async def _fetch_loop(self) -> None:
        rotation = 0
        while not self.stopping:
            try:
                if self.declared_dead:
                    await self._reincarnate()
                if self.free_slots() <= 0:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                self.wake.clear()
                engines = [e for e in await self.store.engines.list() if self.only is None or e["_id"] in self.only]
                rotation += 1
                claimed = 0
                self.hold_ends = [at for e in engines if (at := next_hold_end(e, self.store.clock.now()))]
                self.contended = self.starved = False
                for i in range(len(engines)):
                    claimed += await self._fetch_engine(engines[(i + rotation) % len(engines)])
                    if self.stopping or self.free_slots() <= 0:
                        break
                await self._trim()
                if not claimed and self.contended:
                    # other claimers took our candidates, and more are queued: try again
                    # shortly, staggered, instead of waiting for a wake-up that may not come
                    await asyncio.sleep(random.uniform(0.005, 0.05))
                elif not claimed:
                    self.idle.set()
                    await _wait(self.wake, self._idle_wait())
                    self.idle.clear()
                    self.busy_since = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blinked: back off and try again
                self.log.warning("worker.fetch_error", error=repr(exc))
                await asyncio.sleep(1)

    def _idle_wait(self) -> float:
        """The poll interval (the safety interval while the wake stream is open), or less
        when a back-pressure hold ends or a rate limit's next token is due sooner: nothing
        wakes workers then, so they look again by themselves."""
        s = self.settings
        wait = max(s.poll_interval_seconds, s.safety_interval_seconds) if self.watching else s.poll_interval_seconds
        if self.hold_ends:
            left = (min(self.hold_ends) - self.store.clock.now()).total_seconds()
            wait = min(wait, max(left, 0.0) + 0.01)
        return wait

    async def _fetch_engine(self, engine: dict) -> int:
        name = engine["_id"]
        idle = self.held[name] - self.busy[name]
        running, limit = engine.get("running", 0), engine["limit"]
        if engine.get("paused") or not has_work(engine, self.store.clock.now()) or (running > limit and idle > 0):
            # (over the limit, after it was lowered: shrink towards it)
            await self._give_back(name, idle)
            return 0
        want = min(self.free_slots(), self.settings.claim_batch)
        rated = bool(engine.get("rate_per_s"))
        if rated:  # one token per start, drawn with the permits it needs (docs/limits.md)
            idle = await self._draw(name, want, idle)
            if not idle:
                return 0
        elif idle < want and running < limit:
            # Look before taking permits: sizes the reservation to the work there is, and a
            # worker that lost the race for the last job leaves without writing anything.
            available = await self.store.claimer.peek(engine, want)
            if available <= idle:
                if not available:
                    await self._give_back(name, idle)
                    return 0
            else:
                take = min(available - idle, limit - running)
                if await self._reserve(name, take):
                    self.held[name] += take
                    idle += take
        n = min(idle, want)
        if n <= 0:  # work, but every permit is taken: a release to a full engine wakes us
            self.starved = True
            return 0
        with metrics.CLAIM_LATENCY.time():
            jobs = await self.store.claimer.claim(engine, self.worker_id, n)
        try:
            await self.store.jobs.load_parent_results(jobs, self.results)
        except Exception as exc:  # the jobs are ours now: each reads its own parents instead
            self.log.warning("worker.parents_read_failed", error=repr(exc))
        if jobs.key_permits:  # each goes back when its job ends (app/store/keylimits.py)
            self.key_permits.update({j["_id"]: j["lane"] for j in jobs if j.get("lane")})
        if jobs and not await self._mark_started(jobs):
            return 0
        for job in jobs:
            self._launch(job)
        if rated and len(jobs) < n:  # a token is spent only by a start
            await self.store.engines.refund(name, n - len(jobs))
        if jobs.dry and len(jobs) < n:  # the queue ran dry: keep no idle permits
            await self._give_back(name, n - len(jobs))
        elif len(jobs) < n:  # lost candidates to other claimers: keep the permits, retry soon
            self.contended = True
        return len(jobs)

    async def _draw(self, engine: str, want: int, idle: int) -> int:
        """A rated engine: draw up to `want` tokens, topping our permits up to cover them
        (app/store/permits.py); how many jobs to claim. With no token the idle permits go
        back and the fetch loop sleeps until the next token is due."""
        try:
            got = await self.store.engines.draw(engine, self.worker_id, want, idle)
        except Exception:
            await self._read_back(engine)
            raise
        took = got["took"] if got else 0
        self.held[engine] += max(0, took - idle)
        if got and took == 0 and got["tokens"] < 1:
            at = got["at"] if got["at"].tzinfo else got["at"].replace(tzinfo=UTC)
            self.hold_ends.append(at + timedelta(seconds=(1 - got["tokens"]) / got["per_s"]))
            await self._give_back(engine, idle)
        elif got and took == 0:  # tokens, but every permit is taken
            self.starved = True
        return took

    async def _read_back(self, engine: str) -> None:
        """After a permit write whose outcome is unknown (a reservation or a draw that may
        have landed, a release that may have): hold exactly what the engine records."""
        holds = await self.store.engines.holds_of(engine, self.worker_id)
        if holds is not None:
            self.held[engine] = holds

    async def _reserve(self, engine: str, n: int) -> bool:
        """Take `n` permits. A reservation whose reply was lost may have landed: our holds as
        the engine records them are then read back, so no permit is held unknowingly."""
        try:
            return await self.store.engines.reserve(engine, self.worker_id, n)
        except Exception:
            await self._read_back(engine)
            raise

    async def _mark_started(self, jobs: list[dict]) -> bool:
        """Record that this claim's handlers start (the rescuer charges an attempt only
        then). If the mark cannot be written the jobs go back unrun, their attempt refunded;
        if even that fails, their leases expire and the rescuer refunds them."""
        token = jobs[0]["lease_token"]
        try:
            await self.store.workers.mark_started(self.worker_id, token)
            return True
        except Exception as exc:
            self.log.warning("worker.start_mark_failed", jobs=len(jobs), error=repr(exc))
        for job in jobs:
            try:
                await self.store.lifecycle.release(job, token)
            except Exception:
                pass
            self._give_back_key(job)
        await self._give_back(jobs[0]["engine"], len(jobs))
        return False

    async def _trim(self) -> None:
        """Idle permits beyond our free slots go back: with every slot busy (say with another
        engine's jobs) they would only keep other workers from this engine."""
        for name in list(self.held):
            surplus = self.held[name] - self.busy[name] - max(0, self.free_slots())
            if surplus > 0:
                await self._give_back(name, surplus)

    def _give_back_key(self, job: dict) -> None:
        """The key permit of a job that ended here goes back with the others of the moment."""
        lane = self.key_permits.pop(job["_id"], None)
        if lane is not None:
            self.key_returns.give(job["engine"], self.worker_id, lane)

    async def _give_back(self, engine: str, n: int) -> None:
        """Invariant: `held` never counts more than the engine records for us, or this
        worker would run jobs on permits another worker has taken."""
        if n > 0:
            try:
                await self.store.engines.release(engine, self.worker_id, n)
            except Exception:
                await self._read_back(engine)
                raise
            self.held[engine] -= n

    # --- executing -----------------------------------------------------------------------
    def _launch(self, job: dict) -> None:
        ex = Execution(self.store, job, self.worker_id, self.settings.cancel_grace_seconds, self.admission)
        self.running[job["_id"]] = ex
        self.leases[ex.token] += 1
        self.busy[job["engine"]] += 1
        task = asyncio.create_task(self._execute(ex), name=f"job-{job['_id']}")
        self._execs.add(task)
        task.add_done_callback(self._execs.discard)

    async def _execute(self, ex: Execution) -> None:
        job = ex.job
        ex.log.info("job.started")
        try:
            if job.get("parent_ids"):
                ex.ctx.parents = await self.store.jobs.parent_results(job, self.results)
            outcome, ms = await ex.run()
            try:  # before the move, so a finished job's document has its usage
                await ex.record_usage()
            except Exception as exc:
                ex.log.warning("job.usage_lost", error=repr(exc))
            status = await oc.apply(self.store, job, ex.token, outcome, ms, self.worker_id, self.exits.leave)
            if status:
                ex.log.info("job.finished", status=status, execution_time_ms=ms)
        except LeaseLost:
            ex.log.warning("job.lease_lost", note="another worker owns this job now; result discarded")
        except Exception as exc:
            ex.log.error("job.report_failed", error=repr(exc))
        finally:
            self.running.pop(job["_id"], None)
            self.leases[ex.token] -= 1
            if self.leases[ex.token] <= 0:
                del self.leases[ex.token]
                self.done_leases.append(ex.token)
            if ex.worker == self.worker_id:  # else its permit died with our old incarnation
                self.busy[job["engine"]] -= 1
                self._give_back_key(job)
            else:
                self.key_permits.pop(job["_id"], None)
            self.wake.set()

    # --- background loops ----------------------------------------------------------------


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
