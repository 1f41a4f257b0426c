"""Quarantine (app/worker/quarantine.py): an attempt whose predecessor's worker died runs in
a child process. These run on a worker in this test process, so a quarantine that failed
to isolate `os._exit` would take the test run down with it."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta

import pytest

from app import JobContext, handler
from app.domain.retry import RetryConfig
from app.worker import quarantine
from app.worker.maintenance import Maintenance
from app.worker.processor import JobProcessor
from tests.helpers import wait_status


@handler(engine="testing", operation="local_only")
async def local_only(ctx: JobContext) -> dict:
    """Registered by this test module only: a quarantine child cannot find it."""
    return {"pid": os.getpid()}


async def suspect(store, jobs, **kw) -> dict:
    """A queued job whose last attempt's lease ran out (its worker 'died')."""
    kw.setdefault("retry_config", RetryConfig(max_retries=2, retry_delay_seconds=0.05))
    kw.setdefault("engine", "testing")
    await store.engines.set_paused(kw["engine"], True)  # a worker already running must not take it first
    try:
        job = await jobs.running(**kw)
        later = store.clock.now() + timedelta(seconds=60)
        (expired,) = await store.jobs.expired_leases(later)
        assert await store.lifecycle.rescue(expired, later) == "queued"
    finally:
        await store.engines.set_paused(kw["engine"], False)
    return await store.jobs.get(job["_id"])


@pytest.fixture
async def start(store, settings):
    """Starts a worker (and maintenance, which promotes retries) once the suspects exist."""
    running = []

    async def go() -> JobProcessor:
        maint, proc = Maintenance(store, settings), JobProcessor(store, settings, concurrency=4)
        await maint.start()
        await proc.start()
        running.extend([proc, maint])
        return proc

    yield go
    for p in running:
        await (p.stop(grace=1) if isinstance(p, JobProcessor) else p.stop())


def test_a_job_is_suspect_once_a_worker_died_running_it():
    assert not quarantine.is_suspect({"errors": [{"code": "ConnectionError"}]})
    assert quarantine.is_suspect({"errors": [{"code": "lease_expired"}, {"code": "ConnectionError"}]})
    assert quarantine.is_suspect({"errors": [{"code": "HandlerCrashed"}]})


async def test_a_crash_in_quarantine_fails_the_attempt_not_the_worker(store, jobs, start):
    job = await suspect(store, jobs, operation="die")
    await start()
    dead = await wait_status(store, job["_id"], "failed", timeout=60)
    assert [e["code"] for e in dead["errors"]] == ["lease_expired", "HandlerCrashed", "HandlerCrashed"]
    assert "exit code 17" in dead["last_error"]["message"]
    healthy = await jobs.queued(operation="ok")  # and this process's worker still works
    await wait_status(store, healthy["_id"], "completed", timeout=30)


async def test_results_and_errors_come_back_from_the_child(store, jobs, start):
    ok = await suspect(store, jobs, operation="ok", parameters={"n": 1})
    await start()
    done = await wait_status(store, ok["_id"], "completed", timeout=60)
    assert done["result"] == {"job": ok["_id"], "attempt": 2, "params": {"n": 1}}
    perm = await suspect(store, jobs, operation="permanent")
    failed = await wait_status(store, perm["_id"], "failed", timeout=60)
    assert failed["last_error"]["code"] == "bad_input" and failed["attempt"] == 2  # permanent: no retry
    flaky = await suspect(store, jobs, operation="flaky", parameters={"succeed_on": 3})
    back = await wait_status(store, flaky["_id"], "completed", timeout=60)
    assert [e["code"] for e in back["errors"]] == ["lease_expired", "ConnectionError"]  # class name kept


async def test_progress_and_cancel_cross_the_pipe(store, jobs, start):
    job = await suspect(store, jobs, operation="wait_cancel")
    await start()
    for _ in range(200):
        doc = await store.jobs.get(job["_id"])
        if (doc.get("progress") or {}).get("stage") == "waiting":
            break
        await asyncio.sleep(0.1)
    assert doc["progress"]["percent"] == 10 and doc["status"] == "running"
    await store.lifecycle.cancel(job["_id"])
    done = await wait_status(store, job["_id"], "cancelled", timeout=30)
    assert "grace" not in done["cancel_reason"]  # it saw ctx.cancelled: not stopped by force


async def test_a_timeout_kills_the_child(store, jobs, start):
    job = await suspect(
        store,
        jobs,
        operation="stubborn",
        parameters={"seconds": 60},
        timeout_seconds=2,
        retry_config=RetryConfig(max_retries=1, retry_delay_seconds=0.05),
    )
    await start()
    dead = await wait_status(store, job["_id"], "failed", timeout=60)
    assert dead["last_error"]["code"] == "timeout"


async def test_a_handler_outside_any_module_runs_in_process(store, jobs, start):
    job = await suspect(store, jobs, operation="local_only")
    await start()
    done = await wait_status(store, job["_id"], "completed", timeout=60)
    assert done["result"] == {"pid": os.getpid()}


async def test_a_child_does_not_outlive_its_worker(db_url, store, jobs, tmp_path):
    """SIGKILL a worker while a quarantined attempt runs: the child exits too, instead of
    running on unsupervised while the job is rescued and run again elsewhere."""
    import json
    import signal

    from tests.procs import start_worker, stop

    ledger = tmp_path / "ledger.jsonl"
    job = await suspect(
        store, jobs, engine="ledger", operation="work", parameters={"ledger": str(ledger), "seconds": 60}
    )
    proc = start_worker(db_url, store.db.name, concurrency=1)
    try:
        for _ in range(300):
            if ledger.exists() and ledger.read_text().strip():
                break
            await asyncio.sleep(0.1)
        child = json.loads(ledger.read_text().splitlines()[0])["pid"]
        assert child != proc.pid and (await store.jobs.get(job["_id"]))["status"] == "running"
        stop(proc, signal.SIGKILL)
        for _ in range(100):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            await asyncio.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            raise AssertionError("the quarantined child outlived its worker")
    finally:
        stop(proc, signal.SIGKILL)
