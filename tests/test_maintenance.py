"""`Maintenance` (app/worker/maintenance.py): one process of a deployment runs it, under the
`maintenance` lease, and another takes over when that one stops or dies."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from app.worker.maintenance import Maintenance
from tests.conftest import make_settings


async def _until(pred, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await pred():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_one_process_maintains_and_another_takes_over(store, jobs):
    settings = make_settings(lease_seconds=2)
    a, b = Maintenance(store, settings), Maintenance(store, settings)

    async def leads(m):
        return m.leading

    await a.start()
    await _until(lambda: leads(a), 5)
    await b.start()
    try:
        await asyncio.sleep(1.5)  # past a renewal of a's lease: b still follows
        assert a.leading and not b.leading
        await a.stop()  # hands the lease over at once
        await _until(lambda: leads(b), 5)

        job = await jobs.running()  # b really maintains: it rescues an expired lease
        await store.jobs.col.update_one({"_id": job["_id"]}, {"$set": {"lease_expires_at": store.clock.now()}})

        async def rescued():
            return (await store.jobs.get(job["_id"]))["status"] == "queued"

        await _until(rescued, 5)
    finally:
        await a.stop()
        await b.stop()


async def test_a_dead_leaders_lease_runs_out_then_another_leads(store):
    settings = make_settings(lease_seconds=1)
    until = store.clock.now() + timedelta(seconds=1.5)
    await store.leases.col.insert_one(
        {"_id": "maintenance", "holder": "dead-process", "expires_at": until, "state": {}}
    )
    b = Maintenance(store, settings)
    await b.start()
    try:
        await asyncio.sleep(0.8)
        assert not b.leading

        async def leads():
            return b.leading

        await _until(leads, 5)
        assert (await store.leases.get("maintenance"))["holder"] == b.holder
    finally:
        await b.stop()
