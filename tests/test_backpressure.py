"""Provider back-pressure against the real server: a handler raising `RateLimited` puts its
job back uncharged and holds its engine (or its tenant's key) for every worker until the
hold ends; "why" and queue status show the hold."""

from __future__ import annotations

import asyncio
import math

import pytest

from app import JobContext, RateLimited, handler
from app.store import why
from app.worker.processor import JobProcessor
from tests.helpers import eventually, wait_status

PUSHED: set[str] = set()


@handler(engine="bp", operation="call")
async def call(ctx: JobContext) -> dict:
    """Pushed back by the "provider" the first time it runs, when asked to."""
    if "retry_after" in ctx.params and ctx.job_id not in PUSHED:
        PUSHED.add(ctx.job_id)
        raise RateLimited(ctx.params["retry_after"], key=ctx.params.get("key"))
    return {"attempt": ctx.attempt}


@pytest.fixture
async def two_workers(store, settings):
    procs = [JobProcessor(store, settings, concurrency=4, engines=["bp"]) for _ in range(2)]
    for p in procs:
        await p.start()
    yield procs
    for p in procs:
        await p.stop(grace=1)


async def _pushed_back(store, job_id: str) -> dict:
    async def check():
        doc = await store.jobs.get(job_id)
        return doc if doc.get("backpressure_count") else None

    return await eventually(check)


async def test_rate_limited_requeues_uncharged_and_holds_every_worker(store, jobs, two_workers, api):
    a = await jobs.queued(engine="bp", operation="call", parameters={"retry_after": 2.0})
    held = await _pushed_back(store, a["_id"])
    note = held["last_backpressure"]
    assert note["key"] is None and note["reason"] == "rate limited by the provider"
    b = await jobs.queued(engine="bp", operation="call", owner="tb/bob")

    # held: neither of the two workers claims b, and why and queue status say so
    engine = await store.engines.get("bp")
    assert engine["held_until"] == note["until"]
    waiting = await store.jobs.get(b["_id"])
    assert waiting["status"] == "queued"
    reasons = (await why.explain(store, waiting))["reasons"]
    hold = next(r for r in reasons if r["reason"] == "held")
    assert hold["key"] is None and hold["until"] == note["until"] and hold["seconds_left"] > 0
    status = (await api.get("/api/v1/jobs/queue/status")).json()
    bp = next(q for q in status["queues"] if q["name"] == "bp")
    assert bp["held_until"] is not None and bp["held_key"] is None

    done_b = await wait_status(store, b["_id"], "completed")
    done_a = await wait_status(store, a["_id"], "completed")
    for done in (done_a, done_b):
        assert done["started_at"] >= note["until"]  # no claim while the hold was on
    # uncharged: the second run is attempt 1, no error recorded, no retry spent
    assert done_a["attempt"] == 1 and done_a["result"] == {"attempt": 1}
    assert not done_a.get("errors") and not done_a.get("retry_count")
    assert done_a["backpressure_count"] == 1


async def test_tenant_key_hold_holds_only_that_tenant(store, jobs, two_workers, api):
    a = await jobs.queued(
        engine="bp", operation="call", owner="ta/alice", parameters={"retry_after": 30, "key": "tenant:ta"}
    )
    note = (await _pushed_back(store, a["_id"]))["last_backpressure"]
    assert note["key"] == "tenant:ta"
    ta = await jobs.queued(engine="bp", operation="call", owner="ta/alice")
    tb = await jobs.queued(engine="bp", operation="call", owner="tb/bob")
    await wait_status(store, tb["_id"], "completed")
    await asyncio.sleep(0.3)
    for j in (a, ta):
        doc = await store.jobs.get(j["_id"])
        assert doc["status"] == "queued"
        hold = next(r for r in (await why.explain(store, doc))["reasons"] if r["reason"] == "held")
        assert hold["key"] == "tenant:ta"
    engine = await store.engines.get("bp")
    assert engine.get("held_until") is None and engine["held_keys"]["tenant:ta"] == note["until"]
    # the admin's queue status shows no engine-wide hold
    bp = next(q for q in (await api.get("/api/v1/jobs/queue/status")).json()["queues"] if q["name"] == "bp")
    assert bp["held_until"] is None


async def test_a_hold_is_only_extended(store, jobs):
    await store.engines.ensure("bp")
    now = store.clock.now()
    from datetime import timedelta

    await store.engines.hold("bp", None, now + timedelta(seconds=30))
    await store.engines.hold("bp", None, now + timedelta(seconds=5))
    held = (await store.engines.get("bp"))["held_until"]
    assert abs((held - now).total_seconds() - 30) < 0.01


@pytest.mark.parametrize(
    "kw",
    [
        {"retry_after": -1},
        {"retry_after": math.nan},
        {"retry_after": "5"},
        {"retry_after": 1, "key": "owner:x"},
        {"retry_after": 1, "key": "tenant:a.b"},
    ],
)
def test_a_bad_rate_limited_is_a_value_error(kw):
    with pytest.raises(ValueError):
        RateLimited(**kw)
