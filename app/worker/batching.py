"""Batching of the per-job writes that follow a handler (`Exits`, and `KeyReturns` for the
key permits of per-key limits): work that finishes within a couple of milliseconds shares
one round of writes. The workflow settles that follow are batched by the lifecycle itself
(`Lifecycle.settle_later`)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

from ..errors import LeaseLost
from ..store.lifecycle import Exit


class Exits:
    """Moves out of running from many slots share one `Lifecycle.leave_running`, each still
    fenced by its own lease token; a caller whose lease was lost gets `LeaseLost`, as with
    a single move."""

    def __init__(self, store, *, max_batch: int = 64, window: float = 0.002) -> None:
        self.store = store
        self.max_batch = max_batch
        self.window = window
        self._pending: list[tuple[Exit, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def leave(self, e: Exit) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((e, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            try:
                lost = await self.store.lifecycle.leave_running([e for e, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for e, fut in batch:
                if fut.done():
                    continue
                if e.job["_id"] in lost:
                    fut.set_exception(
                        LeaseLost(f"job {e.job['_id']} is no longer leased with this token", job_id=e.job["_id"])
                    )
                else:
                    fut.set_result(None)


class KeyReturns:
    """Key permits of ended jobs go back in one write per engine for everything that ended
    within `window` (app/store/keylimits.py): 10 ms, longer than the exits' 2 ms, since a
    permit back a few ms later only delays the next start of a key at its cap, while each
    write costs every claimer of the engine (its document is the one they all update). A write that fails leaves the permits with
    this worker, as a failed release of engine permits does: `drop_holds` returns them when
    it exits or is declared dead."""

    def __init__(self, store, log, *, window: float = 0.01) -> None:
        self.store, self.log, self.window = store, log, window
        self._pending: dict[tuple[str, str], Counter] = defaultdict(Counter)  # (engine, worker) -> lanes
        self._flusher: asyncio.Task | None = None

    def give(self, engine: str, worker: str, lane: int) -> None:
        self._pending[(engine, worker)][lane] += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        while self._pending:
            (engine, worker), lanes = self._pending.popitem()
            try:
                await self.store.engines.keys.release(engine, worker, dict(lanes))
            except Exception as exc:
                self.log.warning(
                    "worker.key_release_failed", engine=engine, permits=sum(lanes.values()), error=repr(exc)
                )

    async def flush(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
