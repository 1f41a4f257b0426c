"""`Settles`: what a step's terminal move implies for its workflow, run at once or batched.

Invariant: every terminal move of a workflow step is followed by its settle (children
released, the failure policy applied, counts kept; `WorkflowFlow.settle_many`). The lifecycle
calls `now` where the caller waits for the consequences (a user's cancel, the rescuer) and
`later` for a worker's exits, batched off the job's slot so the steps of a wide fan-in that
finish together release their child with one write. A settle that fails, or whose process
dies first, is replayed by maintenance: failed and cancelled steps carry the `UNSETTLED` mark
until settled, and a completed step's waiting children are found by `repair_stalled`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..logs import get_logger

WINDOW = 0.003  # seconds a batch waits for more steps
BATCH = 500


class Settles:
    def __init__(self, settle: Callable[[list[str]], Awaitable[None]]) -> None:
        self._settle = settle
        self._pending: list[str] = []
        self._flusher: asyncio.Task | None = None

    async def now(self, step_ids: list[str]) -> None:
        if step_ids:
            await self._settle(step_ids)

    def later(self, step_ids: list[str]) -> None:
        if step_ids:
            self._pending += step_ids
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(WINDOW)
        while self._pending:
            batch, self._pending = self._pending[:BATCH], self._pending[BATCH:]
            try:
                await self._settle(batch)
            except Exception as exc:  # maintenance replays it
                get_logger("switchyard.settles").warning("workflow.settle_failed", jobs=len(batch), error=repr(exc))

    async def drain(self) -> None:
        """Wait for batched settles (shutdown, tests)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=10)
