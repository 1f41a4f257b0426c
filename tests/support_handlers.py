"""Handlers used only by the tests. Loaded with `--handlers tests.support_handlers`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from app import JobContext, PermanentError, Retry, StepsRejected, handler


@handler(engine="testing", operation="ok")
async def ok(ctx: JobContext) -> dict:
    return {"job": ctx.job_id, "attempt": ctx.attempt, "params": ctx.params}


@handler(engine="testing", operation="flaky")
async def flaky(ctx: JobContext) -> dict:
    """Fails with `code` until attempt `succeed_on`."""
    if ctx.attempt < ctx.params.get("succeed_on", 2):
        raise ConnectionError(f"attempt {ctx.attempt} failed")
    return {"attempt": ctx.attempt}


@handler(engine="testing", operation="permanent")
async def permanent(ctx: JobContext) -> dict:
    raise PermanentError("bad_input", "this can never work")


@handler(engine="testing", operation="retry_after")
async def retry_after(ctx: JobContext) -> dict:
    if ctx.attempt == 1:
        raise Retry(after=ctx.params.get("after", 0.2))
    return {"attempt": ctx.attempt}


@handler(engine="testing", operation="wait_cancel")
async def wait_cancel(ctx: JobContext) -> dict:
    """Cooperative: stops as soon as it sees the cancel signal."""
    await ctx.progress(10, stage="waiting")
    await asyncio.wait_for(ctx.cancelled.wait(), timeout=ctx.params.get("max", 30))
    return {"stopped": True}


@handler(engine="testing", operation="stubborn")
async def stubborn(ctx: JobContext) -> dict:
    """Ignores the cancel signal; only a hard stop ends it."""
    await asyncio.sleep(ctx.params.get("seconds", 30))
    return {"finished": True}


@handler(engine="testing", operation="die")
async def die(ctx: JobContext) -> dict:
    """A poison job: kills the worker process that runs it."""
    os._exit(17)


@handler(engine="ledger", operation="work")
async def work(ctx: JobContext) -> dict:
    """Sleeps, appending start and end lines to a ledger file (one JSON line each), so a test
    can see which process ran what and how many ran at the same time."""
    path = Path(ctx.params["ledger"])
    start = time.time()
    with path.open("a") as f:
        f.write(json.dumps({"job": ctx.job_id, "pid": os.getpid(), "event": "start", "t": start}) + "\n")
    await asyncio.sleep(ctx.params.get("seconds", 0.2))
    with path.open("a") as f:
        f.write(json.dumps({"job": ctx.job_id, "pid": os.getpid(), "event": "end", "t": time.time()}) + "\n")
    return {"pid": os.getpid()}


@handler(engine="testing", operation="collect")
async def collect(ctx: JobContext) -> dict:
    """Returns what it received from its parents, plus its own `value` parameter."""
    return {"value": ctx.params.get("value"), "parents": ctx.parents, "n_parents": len(ctx.parents)}


@handler(engine="testing", operation="fail_unless")
async def fail_unless(ctx: JobContext) -> dict:
    """Fails permanently until the file named by `marker` exists."""
    if not Path(ctx.params["marker"]).exists():
        raise PermanentError("not_yet", "the marker file is missing")
    return {"ok": True}


@handler(engine="testing", operation="uses_secret")
async def uses_secret(ctx: JobContext) -> dict:
    """Proves the handler sees the real secret (outside, it is redacted); logs a line naming it."""
    import logging

    secret = ctx.params["password"]
    logging.getLogger("testing.uses_secret").warning("using the password %s", "(not shown)")
    if ctx.params.get("fail"):
        raise PermanentError("bad_input", "refused")
    return {"length": len(secret), "first": secret[:1]}


@handler(engine="billing", operation="spend")
async def spend(ctx: JobContext) -> dict:
    """Reports `cost` (default none) through `ctx.usage`, as a paid call would (budgets)."""
    if ctx.params.get("cost"):
        await ctx.usage(cost=ctx.params["cost"])
    return {"cost": ctx.params.get("cost", 0)}


@handler(engine="testing", operation="spawn")
async def spawn(ctx: JobContext) -> dict:
    """Adds the steps in `steps` to its workflow (`ctx.add_steps`). With `catch`, a refusal is
    its result (`{"rejected": {field, message}}`) instead of its failure; with `fail_first`,
    its first attempt fails (retryably) after adding them."""
    try:
        ids = await ctx.add_steps(ctx.params["steps"])
    except StepsRejected as exc:
        if not ctx.params.get("catch"):
            raise
        return {"rejected": {"field": exc.field, "message": exc.message}}
    if ctx.params.get("fail_first") and ctx.attempt == 1:
        raise ConnectionError("failed after adding its steps")
    return {"added": ids, "pid": os.getpid()}
