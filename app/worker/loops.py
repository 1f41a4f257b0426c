"""The background loops of a `JobProcessor` besides fetching: the heartbeat (its
registration, its jobs' leases, the clock; being declared dead and coming back), the cancel
poll (only while jobs run) and the wake stream on `engines` (with the fetch loop's poll
interval as the fallback when the stream is down). Part of `JobProcessor`."""

from __future__ import annotations

import asyncio
import time
import uuid

from ..errors import LeaseLost
from ..logs import get_logger
from ..store import quirks


def new_worker_id() -> str:
    return "w" + uuid.uuid4().hex[:15]


class LoopsMixin:
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.store.clock.fresh()
                done, self.done_leases = self.done_leases, []
                try:
                    alive = await self.store.workers.beat(self.worker_id, list(self.running), done)
                except Exception:
                    self.done_leases += done
                    raise
                if not alive:
                    await self._declared_dead()
                    continue
                for job_id, ex in list(self.running.items()):
                    try:
                        await self.store.lifecycle.heartbeat(job_id, ex.token)
                    except LeaseLost:
                        ex.lost.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("worker.heartbeat_error", error=repr(exc))

    async def _declared_dead(self) -> None:
        """We stalled past our lease and the rescuer gave our jobs and permits away. Stop
        our executions at once; the fetch loop comes back as a new worker between two
        fetches, so no fetch in flight mixes permits of the old identity with the new."""
        if not self.declared_dead:
            self.log.error("worker.declared_dead", running=len(self.running))
        self.declared_dead = True
        for ex in self.running.values():
            ex.lost.set()
        self.wake.set()

    async def _reincarnate(self) -> None:
        # Jobs a fetch launched after we were declared dead run on permits of the old
        # identity, which maintenance drops: stop them too (their leases go back by expiry).
        for ex in self.running.values():
            ex.lost.set()
        self.held.clear()
        self.busy.clear()
        self.worker_id = new_worker_id()
        self.log = get_logger("switchyard.worker", worker=self.worker_id)
        await self._register()
        self.declared_dead = False

    async def _cancel_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25 if self.running else 1.0)
            if not self.running:
                continue
            try:
                for job_id, reason in (await self.store.jobs.cancel_reasons(list(self.running))).items():
                    ex = self.running.get(job_id)
                    if ex and not ex.cancel_requested.is_set():
                        ex.log.info("job.cancel_signalled")
                        ex.cancel_reason = reason or ex.cancel_reason
                        ex.cancel_requested.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("worker.cancel_poll_error", error=repr(exc))

    async def _wake_loop(self) -> None:
        """Watch `engines` only while this worker is idle. A change stream costs the server a
        round trip for every write anywhere, and a busy worker claims again by itself; the
        stream closes after a second of being busy and reopens when the worker idles. While
        it is open, each round trip waits up to 10 s on the server for a change, so an idle
        worker sends one `getMore` per 10 s (on MongoDB; on SecantusDB any write answers it),
        and the fetch loop's own look is only a safety net (`_idle_wait`)."""
        wait_ms = min(10_000, self.settings.db_timeout_ms // 2)
        while True:
            await self.idle.wait()
            try:
                async with await self.store.engines.watch(wait_ms) as stream:
                    self.watching = True
                    self.wake.set()  # anything that landed before the stream was open
                    pace = quirks.wake_pace(self.store.secantus)
                    while self.idle.is_set() or time.monotonic() - self.busy_since < 1.0:
                        asked = time.monotonic()
                        changed = await stream.try_next() is not None
                        if changed:
                            self.wake.set()
                        # A change wakes us at once; the next round trip waits out the pace
                        # (quirks.wake_pace). A starved worker waits for a permit, not for
                        # work, and spaces them widely.
                        pace.done(int(changed), time.monotonic() - asked)
                        if self.starved:
                            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - asked)))
                        else:
                            await pace.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no change streams here: polling covers it
                self.log.debug("worker.watch_error", error=repr(exc))
                await asyncio.sleep(2)
            finally:
                self.watching = False
