"""Permits after a worker is declared dead, found by `scripts/chaos` (docs/reliability.md):
restarting the database for longer than a lease left permits held for good, so the
engine's capacity shrank with every restart.

- A reservation a worker had in flight when the rescuer marked it dead landed under the
  dead id after its permits were dropped, and nothing ever dropped them again.
- The worker changed identity in the heartbeat task while a fetch was in flight, so one
  fetch could reserve under one id and claim or give back under the other.
- Under injected command failures (fail_command) a release to a saturated engine landed and
  then raised, when its wake-up failed: the worker kept counting the permits it had given
  back, ran one job more than the limit, and later gave back more than it held (a no-op),
  leaving permits held at rest.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from pymongo.errors import OperationFailure

from app import embedded
from app.domain.models import JobSpec
from app.settings import Settings
from app.store import connect
from app.worker.maintenance import Maintenance
from tests.helpers import eventually, wait_status
from tests.procs import start_worker, stop


class _WakeFails:
    """The engines collection, whose plain `update_one`s (the release's wake-up) fail."""

    def __init__(self, col) -> None:
        self._col = col

    def __getattr__(self, name):
        return getattr(self._col, name)

    async def update_one(self, *a, **kw):
        raise OperationFailure("injected: failCommand", code=1)


async def test_a_release_that_landed_is_not_undone_by_its_wake_up_failing(store):
    await store.engines.set_limit("ledger", 2)
    assert await store.engines.reserve("ledger", "w1", 2)  # saturated: a release wakes
    col = store.engines.col
    store.engines.col = _WakeFails(col)
    try:
        assert await store.engines.release("ledger", "w1", 1) is True
    finally:
        store.engines.col = col
    engine = await store.engines.get("ledger")
    assert engine["holds"] == {"w1": 1} and engine["running"] == 1


async def test_a_worker_whose_release_raised_holds_what_the_engine_records(store, settings):
    """Whatever a failed release did, the worker then counts exactly the permits the engine
    records for it: never more (it would run jobs past the limit), never fewer."""
    from app.worker.processor import JobProcessor

    await store.engines.set_limit("ledger", 4)
    proc = JobProcessor(store, settings, concurrency=2)
    assert await store.engines.reserve("ledger", proc.worker_id, 3)
    proc.held["ledger"] = 3
    release = store.engines.release

    async def lands_then_raises(engine, worker, n):
        await release(engine, worker, n)
        raise OperationFailure("injected: reply lost", code=1)

    store.engines.release = lands_then_raises
    try:
        with pytest.raises(OperationFailure):
            await proc._give_back("ledger", 2)
    finally:
        del store.engines.release
    assert proc.held["ledger"] == 1 == (await store.engines.get("ledger"))["holds"][proc.worker_id]


async def test_permits_taken_under_a_dead_id_come_back(store, settings):
    await store.engines.set_limit("ledger", 4)
    for w in ("wlate", "walive"):
        await store.workers.register(w, engines=None, concurrency=2, kind="worker")
    assert await store.engines.reserve("ledger", "walive", 1)
    # wlate stalls past its lease; the rescuer marks it dead (it held nothing yet)
    later = store.clock.now() + timedelta(seconds=settings.lease_seconds + 1)
    assert await store.workers.mark_dead("wlate", later)
    # ...and the reservation it had in flight lands afterwards
    assert await store.engines.reserve("ledger", "wlate", 2)
    await Maintenance(store, settings).rescue()
    engine = await store.engines.get("ledger")
    assert engine["holds"] == {"walive": 1} and engine["running"] == 1  # a live worker keeps its permits


async def test_a_worker_declared_dead_changes_identity_only_between_fetches(store, settings, jobs):
    """The heartbeat that finds the worker declared dead stops its executions at once, but
    the new identity is taken by the fetch loop, between two fetches; permits held under
    the old id are the rescuer's to return."""
    from app.worker.processor import JobProcessor

    await store.engines.set_limit("testing", 4)
    proc = JobProcessor(store, settings, concurrency=2)
    await proc.start()
    try:
        job = await jobs.queued(operation="stubborn", parameters={"seconds": 60})
        await wait_status(store, job["_id"], "running")
        old = proc.worker_id
        assert await store.workers.mark_dead(old, store.clock.now() + timedelta(seconds=settings.lease_seconds + 1))
        await store.engines.drop_holds(old)  # what the rescuer does next
        await proc._declared_dead()  # what the heartbeat does when it finds out
        assert proc.worker_id == old  # not in the middle of whatever the fetch loop is doing
        await eventually(lambda: _changed(proc, old), timeout=10)
        new = {w["_id"]: w for w in await store.workers.list()}
        assert new[old]["status"] == "dead" and new[proc.worker_id]["status"] == "alive"
        await eventually(lambda: _no_execution(proc, job["_id"]), timeout=10)  # the old attempt was stopped
        # the job's lease expires and the new incarnation runs it again, on its own permits
        await eventually(lambda: _rescued(store, settings, job["_id"]), timeout=10)
        engine = await store.engines.get("testing")
        assert engine["holds"] == {proc.worker_id: engine["running"]}
    finally:
        await proc.stop(grace=0.2)


async def _changed(proc, old):
    return proc.worker_id != old and not proc.declared_dead


async def _no_execution(proc, job_id):
    return job_id not in proc.running


async def _rescued(store, settings, job_id):
    await Maintenance(store, settings).rescue()
    doc = await store.jobs.get(job_id)
    return doc["status"] == "running" and doc["attempt"] == 2


def _spawn_db(path, port) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "secantus",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(path),
        "--sync-on-commit",
        "--log-level",
        "WARNING",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    embedded.wait_ready(embedded.url_for(port), timeout=60, proc=proc)
    return proc


async def test_database_restart_longer_than_a_lease(tmp_path):
    """Kill the server under load and bring it back on the same data after more than a
    lease: every job completes, the workers carry on by themselves (registered again as
    new incarnations), and no permit stays held once the queue is empty."""
    port = embedded.free_port()
    url = embedded.url_for(port)
    db = _spawn_db(tmp_path / "db", port)
    st = connect(url, Settings(lease_seconds=2.0, log_level="WARNING"), db_name="restart")
    workers = []
    try:
        await st.start()
        await st.engines.set_limit("ledger", 8)
        ledger = tmp_path / "ledger.jsonl"
        spec = JobSpec(engine="ledger", operation="work", parameters={"ledger": str(ledger), "seconds": 0.3})
        docs = [st.lifecycle.build(spec, "test") for _ in range(120)]
        await st.lifecycle.insert_many(docs)
        workers = [start_worker(url, "restart", concurrency=4) for _ in range(3)]
        deadline = time.monotonic() + 60
        while await st.jobs.col.count_documents({"status": "completed"}) < 20:
            assert time.monotonic() < deadline, "workers did not start"
            await asyncio.sleep(0.1)
        for _ in range(2):  # twice: the race it guards against needs a fetch in flight at the right moment
            db.send_signal(signal.SIGKILL)
            db.wait()
            await asyncio.sleep(2.5)  # longer than the 2 s lease: every registration expires
            db = _spawn_db(tmp_path / "db", port)
            await asyncio.sleep(3)
        deadline = time.monotonic() + 90
        while True:
            open_ = await st.jobs.col.count_documents({"status": {"$in": ["queued", "running", "scheduled"]}})
            engine = await st.engines.get("ledger")
            if not open_ and engine.get("running", 0) == 0:
                break
            assert time.monotonic() < deadline, f"{open_} jobs unfinished; permits held {engine.get('holds')}"
            await asyncio.sleep(0.25)
        assert await st.jobs.col.count_documents({"status": "completed"}) == 120
        assert all(p.poll() is None for p in workers)  # nobody had to restart them
        alive = await st.workers.list(status="alive")
        assert {w["pid"] for w in alive} == {p.pid for p in workers}
    finally:
        for p in workers:
            stop(p)
        await st.client.close()
        db.send_signal(signal.SIGTERM)
        db.wait(15)
