"""Handlers for `scripts/chaos`, loaded by the serve and worker processes it starts with
`--handlers chaos_handlers` (scripts/ is on their PYTHONPATH).

Every run appends two JSON lines to the ledger named by `CHAOS_LEDGER`: `start` when the
handler begins and `end` when it returns, raises or is stopped. Each line carries the job
id, attempt, lease token, pid and the time. A run killed by SIGKILL has a start and no end.
Each line is one `os.write` on an `O_APPEND` descriptor, so lines from many processes
never interleave.

`CHAOS_CLOCK_SKEW` (seconds) is the offset the harness gave this process's clock through
libfaketime; it is recorded with each line so the checker can put all lines on one clock
(the raw local time is kept as `t_local`, which shows the skew really was in effect).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time

from app import JobContext, handler

_fds: dict[str, int] = {}
SKEW = float(os.environ.get("CHAOS_CLOCK_SKEW", "0") or 0)


def _owner() -> int:
    """The worker process that holds the lease: this one, or, in a quarantine child, the
    worker that forked it (the child exits when that worker dies)."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getpid()


def _write(ctx: JobContext, event: str, **extra) -> None:
    path = os.environ.get("CHAOS_LEDGER")
    if not path:
        return
    fd = _fds.get(path)
    if fd is None:
        fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    local = time.time()
    line = {
        "job": ctx.job_id,
        "attempt": ctx.attempt,
        "token": ctx.lease_token,
        "pid": os.getpid(),
        "owner": _owner(),
        "engine": ctx.engine,
        "event": event,
        "t": local - SKEW,
        **extra,
    }
    if SKEW:
        line["t_local"] = local
    os.write(fd, (json.dumps(line) + "\n").encode())


async def _run(ctx: JobContext, body) -> dict:
    _write(ctx, "start", parents=sorted(ctx.parents) if ctx.workflow_id else None)
    outcome = "error"
    try:
        result = await body()
        outcome = "ok"
        return {"token": ctx.lease_token, "pid": os.getpid(), "attempt": ctx.attempt, **(result or {})}
    except asyncio.CancelledError:
        outcome = "stopped"
        raise
    finally:
        _write(ctx, "end", outcome=outcome)


@handler(engine="chaos", operation="work")
async def work(ctx: JobContext) -> dict:
    """Sleeps `seconds`; with `fail_before` = n, raises a retryable error on attempts < n."""

    async def body():
        await asyncio.sleep(float(ctx.params.get("seconds", 0.05)))
        if ctx.attempt < int(ctx.params.get("fail_before", 0)):
            raise ConnectionError(f"injected failure on attempt {ctx.attempt}")
        return None

    return await _run(ctx, body)


@handler(engine="chaos", operation="die")
async def die(ctx: JobContext) -> dict:
    """A poison job: kills the worker process that runs it."""
    _write(ctx, "start")
    os._exit(17)


@handler(engine="chaos", operation="step")
async def step(ctx: JobContext) -> dict:
    """A workflow step: records which parents' results it received, so the checker can
    compare them with the DAG. With `emit` = n it returns `items`, a list of n numbers, for
    a map step to map over; a mapped child returns its `index` and `item`, so the checker
    can see the map step's result is in item order."""

    async def body():
        await asyncio.sleep(float(ctx.params.get("seconds", 0.05)))
        out = {"key": ctx.params.get("key"), "parents": sorted(ctx.parents)}
        if "emit" in ctx.params:
            out["items"] = list(range(int(ctx.params["emit"])))
        if "index" in ctx.params:
            out.update(index=ctx.params["index"], item=ctx.params.get("item"))
        return out

    return await _run(ctx, body)
