"""Stopping background tasks: the one way the service cancels a task and waits for it.

A plain `task.cancel(); await task` can wait forever. A cancel can be lost: Python 3.11's
`asyncio.wait_for` drops one that lands just as the awaited call finishes, and the driver
may turn one into an error that a loop logs and survives. `halt` cancels again each
`retry` seconds until every task has ended, so a stop always returns.

Halts nest (a stopping loop halts its own subtasks in a `finally`), so a halt that is
itself cancelled still sees its tasks end before it passes the cancel on: otherwise an
outer halt's second cancel would leave the inner one's tasks running after the stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def halt(tasks: Iterable[asyncio.Task | None], retry: float = 1.0) -> None:
    """Cancel `tasks` (None entries are skipped) and return once every one has ended;
    raises CancelledError afterwards if the caller was cancelled meanwhile."""
    pending = {t for t in tasks if t is not None and not t.done()}
    interrupted = False
    while pending:
        for t in pending:
            t.cancel()
        try:
            _, pending = await asyncio.wait(pending, timeout=retry)
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
