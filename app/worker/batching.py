"""Batching of the per-job writes that follow a handler: completions (`Completer`) and
workflow fan-out (`Settler`). Work that finishes within a couple of milliseconds shares
one round of writes."""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import LeaseLost


class Completer:
    """Completions share one `bulk_write`, each still fenced by its own lease token; a
    caller whose lease was lost gets `LeaseLost`, as with a single `complete`."""

    def __init__(self, store, *, max_batch: int = 64, window: float = 0.002) -> None:
        self.store = store
        self.max_batch = max_batch
        self.window = window
        self._pending: list[tuple[tuple[str, str, Any, int], asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None

    async def complete(self, job_id: str, token: str, result: Any, execution_ms: int) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(((job_id, token, result, execution_ms), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await fut

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch:]
            try:
                lost = await self.store.jobs.complete_many([item for item, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (item, fut) in batch:
                if fut.done():
                    continue
                if item[0] in lost:
                    fut.set_exception(LeaseLost(f"job {item[0]} is no longer leased with this token", job_id=item[0]))
                else:
                    fut.set_result(None)


class Settler:
    """Workflow fan-out after steps finish, off the job's slot and batched, so the steps of
    a wide fan-in release their child with one write. Failures are logged and left to the
    maintenance sweep, which replays any step still marked unsettled (`jobs.unsettled`)."""

    def __init__(self, store, log, *, window: float = 0.003) -> None:
        self.store, self.log, self.window = store, log, window
        self._pending: list[str] = []
        self._flusher: asyncio.Task | None = None

    def add(self, job_id: str) -> None:
        self._pending.append(job_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(self.window)
        while self._pending:
            batch, self._pending = self._pending[:500], self._pending[500:]
            try:
                await self.store.workflows.settle_many(batch)
            except Exception as exc:
                self.log.warning("workflow.settle_failed", jobs=len(batch), error=repr(exc))

    async def drain(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=10)
