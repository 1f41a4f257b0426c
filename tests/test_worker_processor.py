"""`JobProcessor` and `Maintenance` in this process, against the real server: running,
retries, timeouts, cancellation, pause/resume, limits and graceful shutdown."""

from __future__ import annotations

import asyncio
import json
from itertools import pairwise

from app.domain.retry import RetryConfig
from app.worker.processor import JobProcessor
from tests.helpers import eventually, wait_status


async def test_runs_a_job_to_completion(worker, jobs, store):
    job = await jobs.queued(parameters={"n": 1})
    done = await wait_status(store, job["_id"], "completed")
    assert done["result"] == {"job": job["_id"], "attempt": 1, "params": {"n": 1}}
    assert done["started_at"] and done["completed_at"] and done["execution_time_ms"] >= 0
    assert done["progress"]["percent"] == 100
    engine = await store.engines.get("testing")
    await eventually(lambda: _idle(store, "testing"))
    assert engine["queued"] == 0


async def _idle(store, engine):
    doc = await store.engines.get(engine)
    return doc.get("running", 0) == 0


async def test_retries_until_success(worker, jobs, store):
    job = await jobs.queued(operation="flaky", parameters={"succeed_on": 3})
    done = await wait_status(store, job["_id"], "completed")
    assert done["attempt"] == 3 and done["retry_count"] == 2
    assert [e["code"] for e in done["errors"]] == ["ConnectionError", "ConnectionError"]


async def test_backoff_gaps_grow_and_respect_the_base(worker, jobs, store):
    cfg = RetryConfig(max_retries=2, retry_delay_seconds=0.3, max_delay_seconds=10)
    job = await jobs.queued(operation="flaky", parameters={"succeed_on": 9}, retry_config=cfg)
    dead = await wait_status(store, job["_id"], "failed")
    at = [e["at"] for e in dead["errors"]]
    assert len(at) == 3 and dead["last_error"]["message"].endswith("(no attempts left: 3/3)")
    gaps = [(b - a).total_seconds() for a, b in pairwise(at)]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3  # at least half of 0.3 * 2**n (equal jitter)


async def test_retry_on_errors_limits_what_retries(worker, jobs, store):
    cfg = RetryConfig(max_retries=3, retry_delay_seconds=0.01, retry_on_errors=["TIMEOUT"])
    job = await jobs.queued(operation="flaky", parameters={"succeed_on": 2}, retry_config=cfg)
    dead = await wait_status(store, job["_id"], "failed")
    assert dead["attempt"] == 1 and dead["last_error"]["code"] == "ConnectionError"


async def test_permanent_error_fails_at_once(worker, jobs, store):
    job = await jobs.queued(operation="permanent")
    dead = await wait_status(store, job["_id"], "failed")
    assert dead["attempt"] == 1 and dead["last_error"]["code"] == "bad_input"


async def test_handler_retry_after(worker, jobs, store):
    job = await jobs.queued(operation="retry_after", parameters={"after": 0.4})
    done = await wait_status(store, job["_id"], "completed")
    assert done["attempt"] == 2 and done["errors"][0]["code"] == "retry"
    assert (done["started_at"] - done["errors"][0]["at"]).total_seconds() >= 0.4


async def test_timeout_is_a_failed_attempt(worker, jobs, store):
    cfg = RetryConfig(max_retries=1, retry_delay_seconds=0.01)
    job = await jobs.queued(operation="stubborn", parameters={"seconds": 30}, timeout_seconds=0.3, retry_config=cfg)
    dead = await wait_status(store, job["_id"], "failed")
    assert [e["code"] for e in dead["errors"]] == ["timeout", "timeout"]


async def test_cancel_a_cooperative_running_job(worker, jobs, store):
    job = await jobs.queued(operation="wait_cancel")
    await wait_status(store, job["_id"], "running")
    await store.lifecycle.cancel(job["_id"])
    done = await wait_status(store, job["_id"], "cancelled")
    assert "early" in done["cancel_reason"] or done["cancel_reason"] == "cancelled by user"


async def test_cancel_a_stubborn_job_stops_it_after_the_grace(worker, jobs, store):
    job = await jobs.queued(operation="stubborn", parameters={"seconds": 60})
    await wait_status(store, job["_id"], "running")
    await store.lifecycle.cancel(job["_id"])
    done = await wait_status(store, job["_id"], "cancelled", timeout=10)
    assert "grace" in done["cancel_reason"]


async def test_pause_and_resume(worker, jobs, store):
    await store.engines.set_paused("testing", True)
    job = await jobs.queued()
    await asyncio.sleep(1.0)
    assert (await store.jobs.get(job["_id"]))["status"] == "queued"
    await store.engines.set_paused("testing", False)
    await wait_status(store, job["_id"], "completed")


async def test_limit_holds_and_can_change_while_running(worker, jobs, store, tmp_path):
    ledger = tmp_path / "ledger.jsonl"
    ids = [
        (await jobs.queued(engine="ledger", operation="work", parameters={"ledger": str(ledger), "seconds": 0.3}))[
            "_id"
        ]
        for _ in range(6)
    ]
    await wait_status(store, ids[0], {"running", "completed"})
    await store.engines.set_limit("ledger", 3)
    more = [
        (await jobs.queued(engine="ledger", operation="work", parameters={"ledger": str(ledger), "seconds": 0.3}))[
            "_id"
        ]
        for _ in range(6)
    ]
    for i in ids + more:
        await wait_status(store, i, "completed")
    peak = peak_concurrency(ledger)
    assert peak == 3  # never more than the limit, and the raised limit was used


def peak_concurrency(ledger) -> int:
    events = [json.loads(line) for line in ledger.read_text().splitlines()]
    events.sort(key=lambda e: (e["t"], 0 if e["event"] == "end" else 1))
    live = peak = 0
    for e in events:
        live += 1 if e["event"] == "start" else -1
        peak = max(peak, live)
    return peak


async def test_graceful_stop_releases_without_counting(store, settings, jobs):
    proc = JobProcessor(store, settings, concurrency=2)
    await proc.start()
    job = await jobs.queued(operation="stubborn", parameters={"seconds": 60})
    await wait_status(store, job["_id"], "running")
    await proc.stop(grace=0.2)
    back = await store.jobs.get(job["_id"])
    assert back["status"] == "queued" and back["attempt"] == 0
    await store.numbers.flush()
    engine = await store.engines.get("testing")
    assert engine.get("running", 0) == 0 and engine["queued"] == 1


async def test_delayed_job_waits_for_its_time(worker, jobs, store):
    job = await jobs.queued(delay_seconds=0.6)
    assert job["status"] == "scheduled"
    done = await wait_status(store, job["_id"], "completed")
    assert (done["started_at"] - done["created_at"]).total_seconds() >= 0.6


async def test_engines_filter_limits_what_a_worker_takes(store, settings, jobs):
    only_ledger = JobProcessor(store, settings, concurrency=2, engines=["ledger"])
    await only_ledger.start()
    try:
        job = await jobs.queued()  # engine "testing"
        await asyncio.sleep(1.0)
        assert (await store.jobs.get(job["_id"]))["status"] == "queued"
    finally:
        await only_ledger.stop(grace=0.5)


async def test_idle_permits_beyond_free_slots_go_back(store, settings):
    """A worker whose slots are all busy keeps no idle permit of an engine: it could not use
    it, and another worker could."""
    proc = JobProcessor(store, settings, concurrency=2)
    await store.engines.ensure("ledger")
    await store.engines.set_limit("ledger", 5)
    assert await store.engines.reserve("ledger", proc.worker_id, 3)
    proc.held["ledger"], proc.busy["ledger"] = 3, 1
    proc.running = {"a": None, "b": None}  # both slots busy (one with another engine's job)
    await proc._trim()
    engine = await store.engines.get("ledger")
    assert proc.held["ledger"] == 1 and engine["running"] == 1 and engine["holds"][proc.worker_id] == 1
    proc.running = {"a": None}  # a slot frees up: the one busy permit stays, nothing else moves
    await proc._trim()
    assert proc.held["ledger"] == 1 and (await store.engines.get("ledger"))["running"] == 1
