"""Real worker processes against the real server: the global per-engine limit, SIGKILL
recovery, a poison job that kills one worker and then fails in quarantine, and SIGTERM
hand-back."""

from __future__ import annotations

import asyncio
import os
import signal

from app.domain.retry import RetryConfig
from tests.helpers import eventually, wait_status
from tests.procs import start_worker, stop
from tests.test_worker_processor import peak_concurrency


async def submit_ledger(jobs, ledger, n, seconds=0.3, **kw):
    return [
        (
            await jobs.queued(
                engine="ledger", operation="work", parameters={"ledger": str(ledger), "seconds": seconds}, **kw
            )
        )["_id"]
        for _ in range(n)
    ]


async def test_limit_holds_across_three_processes(db_url, store, jobs, tmp_path):
    # The limit is above one process's slots, so only several processes together reach it.
    await store.engines.set_limit("ledger", 5)
    ledger = tmp_path / "ledger.jsonl"
    ids = await submit_ledger(jobs, ledger, 20)
    procs = [start_worker(db_url, store.db.name, concurrency=4) for _ in range(3)]
    try:
        for i in ids:
            await wait_status(store, i, "completed", timeout=60)
    finally:
        for p in procs:
            stop(p)
    pids = {j["result"]["pid"] for j in [await store.jobs.get(i) for i in ids]}
    assert len(pids) >= 2  # the work really was shared
    assert peak_concurrency(ledger) <= 5  # never exceeded
    assert (await store.engines.get("ledger")).get("running", 0) == 0


async def test_sigkill_loses_nothing_and_leaks_no_permit(db_url, store, jobs, tmp_path):
    await store.engines.set_limit("ledger", 4)
    ledger = tmp_path / "ledger.jsonl"
    ids = await submit_ledger(jobs, ledger, 8, seconds=3)
    victim = start_worker(db_url, store.db.name, concurrency=4)

    async def four_started():
        # Their handlers have started (the ledger's start lines come after the start mark): a
        # kill between a claim and its mark is refunded without an error, which is not this test.
        docs = [await store.jobs.get(i) for i in ids]
        starts = ledger.read_text().count('"start"') if ledger.exists() else 0
        return sum(d["status"] == "running" for d in docs) == 4 and starts == 4

    await eventually(four_started, timeout=30)
    stop(victim, signal.SIGKILL)
    engine = await store.engines.get("ledger")
    assert engine["running"] == 4  # the dead worker's permits are still held...
    survivor = start_worker(db_url, store.db.name, concurrency=4)
    try:
        done = [await wait_status(store, i, "completed", timeout=60) for i in ids]
    finally:
        stop(survivor)
    rescued = [d for d in done if any(e["code"] == "lease_expired" for e in d.get("errors", []))]
    assert len(rescued) == 4 and all(d["attempt"] == 2 for d in rescued)
    assert peak_concurrency(ledger) <= 4 + 4  # the killed four never wrote their end lines
    engine = await store.engines.get("ledger")
    assert engine.get("running", 0) == 0 and not engine.get("holds")  # ...and came back


async def test_poison_job_kills_one_worker_then_fails_in_quarantine(db_url, store, jobs):
    """The first attempt kills its worker; the later ones run quarantined in a child
    process (app/worker/quarantine.py), so they cost no worker and no lease wait."""
    poison = await jobs.queued(operation="die", retry_config=RetryConfig(max_retries=2, retry_delay_seconds=0.05))
    healthy = await jobs.queued(operation="ok")
    deaths = 0
    proc = start_worker(db_url, store.db.name, concurrency=2)
    try:
        for _ in range(400):
            if (await store.jobs.get(poison["_id"]))["status"] == "failed":
                break
            if proc.poll() is not None:  # a supervisor restarts crashed workers
                deaths += 1
                proc = start_worker(db_url, store.db.name, concurrency=2)
            await asyncio.sleep(0.1)
        dead = await wait_status(store, poison["_id"], "failed", timeout=5)
        await wait_status(store, healthy["_id"], "completed", timeout=30)
        assert proc.poll() is None  # the worker that ran the quarantined attempts is alive
    finally:
        stop(proc)
    assert dead["attempt"] == 3 and deaths == 1
    assert [e["code"] for e in dead["errors"]] == ["lease_expired", "HandlerCrashed", "HandlerCrashed"]
    assert "exit code 17" in dead["last_error"]["message"]


async def test_sigterm_hands_running_jobs_back(db_url, store, jobs):
    job = await jobs.queued(operation="stubborn", parameters={"seconds": 60})
    proc = start_worker(db_url, store.db.name, concurrency=1, SWITCHYARD_SHUTDOWN_GRACE_SECONDS="0.5")
    await wait_status(store, job["_id"], "running", timeout=30)
    assert stop(proc, signal.SIGTERM) == 0
    back = await store.jobs.get(job["_id"])
    assert back["status"] == "queued" and back["attempt"] == 0 and back.get("errors", []) == []
    assert (await store.engines.get("testing")).get("running", 0) == 0


async def test_a_stalled_worker_cannot_overwrite_the_new_owner(db_url, store, jobs, tmp_path):
    """SIGSTOP a worker past its lease; another worker takes the job over and finishes it;
    after SIGCONT the stale worker's completion is refused and the result stays the new
    owner's."""
    ledger = tmp_path / "ledger.jsonl"
    (job_id,) = await submit_ledger(jobs, ledger, 1, seconds=3)
    stale = start_worker(db_url, store.db.name, concurrency=1)
    try:
        await wait_status(store, job_id, "running", timeout=30)

        async def handler_started():  # stopped before that, the attempt would not be charged
            return ledger.exists() and job_id in ledger.read_text()

        await eventually(handler_started, timeout=30)
        first = await store.jobs.get(job_id)
        stale.send_signal(signal.SIGSTOP)
        fresh = start_worker(db_url, store.db.name, concurrency=1)
        try:
            done = await wait_status(store, job_id, "completed", timeout=60)
            # the second attempt ran elsewhere (quarantined in a child of `fresh`'s forkserver,
            # since its first worker stalled)
            assert done["attempt"] == 2 and done["result"]["pid"] not in (stale.pid, os.getpid())
            stale.send_signal(signal.SIGCONT)
            await asyncio.sleep(4)  # the stale handler wakes, finishes its sleep, tries to complete
        finally:
            stop(fresh)
    finally:
        stale.send_signal(signal.SIGCONT)
        stop(stale)
    after = await store.jobs.get(job_id)
    assert after["status"] == "completed" and after["result"] == done["result"] and after["attempt"] == 2
    assert after["finished_token"] != first["lease_token"]
    workers = {w["_id"]: w for w in await store.workers.list()}
    assert workers[first["lease_owner"]]["status"] == "dead"  # it came back under a new id
