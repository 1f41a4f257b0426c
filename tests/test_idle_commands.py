"""At rest, each process sends the database at most 2 commands a second, counted at the wire
(scripts/wirecount.py): a `switchyard worker`, and a `switchyard serve` as deployed (API,
maintenance, event relay, notifier, hub and outboxes; no job slots). Both run with the default
cadences, not the tests' fast ones, since the defaults are what a deployment pays for."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from tests.procs import start_worker, stop
from tests.servers import serve_processes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from wirecount import WireCounter  # noqa: E402

# The production cadences (tests/procs.py speeds them up for the other tests).
DEFAULTS = {
    "SWITCHYARD_LEASE_SECONDS": "30",
    "SWITCHYARD_POLL_INTERVAL_SECONDS": "2",
    "SWITCHYARD_PROMOTE_INTERVAL_SECONDS": "0.25",
    "SWITCHYARD_RETRY_DELAY_SECONDS": "60",
}
SETTLE, COUNT, LIMIT = 8.0, 20.0, 2.0


async def at_rest(counter: WireCounter) -> float:
    await asyncio.sleep(SETTLE)  # start-up: indexes, registration, the first passes
    counter.reset()
    await asyncio.sleep(COUNT)
    rate = counter.rate()
    print(f"{rate:.2f} cmds/s", dict(counter.counts.most_common()))
    return rate


async def counter_for(db_url: str) -> WireCounter:
    return await WireCounter(urlsplit(db_url).netloc.rsplit("@", 1)[-1].split(",")[0]).start()


async def test_worker_at_rest(db_url, store):
    counter = await counter_for(db_url)
    proc = start_worker(counter.url(db_url), store.db.name, **DEFAULTS)
    try:
        rate = await at_rest(counter)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        await asyncio.to_thread(stop, proc)
        await counter.stop()
    assert rate <= LIMIT, dict(counter.counts)


async def test_serve_at_rest(db_url, store):
    counter = await counter_for(db_url)
    _, procs = await serve_processes(counter.url(db_url), store.db.name, [0], **DEFAULTS)
    try:
        rate = await at_rest(counter)
        assert procs[0].poll() is None, procs[0].stderr.read().decode()[-2000:]
    finally:
        for p in procs:
            await asyncio.to_thread(stop, p)
        await counter.stop()
    assert rate <= LIMIT, dict(counter.counts)


async def test_resting_maintenance_still_promotes_on_time(db_url, store):
    """The due pass sleeps to the earliest due time, and a write of something due sooner
    wakes it: a delay or a retry runs when due, not when the (long) safety net comes round."""
    from app.store.lifecycle import Exit
    from app.worker.maintenance import Maintenance
    from tests.conftest import make_settings
    from tests.factories import JobFactory
    from tests.helpers import eventually, wait_status

    settings = make_settings(safety_interval_seconds=600, retry_delay_seconds=1, retry_max_delay_seconds=1)
    maint = Maintenance(store, settings)
    await maint.start()
    try:
        await eventually(lambda: _ready(maint), timeout=20)
        jobs = JobFactory(store)
        await asyncio.sleep(1)  # the pass has read that nothing is due, and rests
        delayed = await jobs.scheduled(delay_seconds=1)
        await wait_status(store, delayed["_id"], "queued", timeout=60)
        # A retry: the worker's backoff move, due a second after the failure.
        job = await jobs.running()
        error = {"code": "boom", "message": "a retryable failure", "attempt": 1, "at": None, "worker": None}
        due = store.clock.now() + timedelta(seconds=1)
        await store.lifecycle.leave(Exit(job, job["lease_token"], "backoff", error=error, run_at=due))
        assert (await store.jobs.get(job["_id"]))["status"] == "scheduled"
        await wait_status(store, job["_id"], "queued", timeout=60)
    finally:
        await maint.stop()


async def _ready(maint) -> bool:
    # Leading, with the due stream open (or, without change streams, polling).
    return maint.leading and getattr(maint, "due_soon", None) is not None
