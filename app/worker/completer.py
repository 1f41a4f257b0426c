"""Batches job completions: the hot path's only per-job write. Completions that finish
within a couple of milliseconds of each other share one `bulk_write`, each still fenced by
its own lease token; a caller whose lease was lost gets `LeaseLost`, as with a single
`complete`."""

from __future__ import annotations

import asyncio
from typing import Any

from app.errors import LeaseLost


class Completer:
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
