"""Small async helpers shared by tests."""

from __future__ import annotations

import asyncio
import time


async def wait_status(store, job_id: str, statuses, timeout: float = 20.0) -> dict:
    if isinstance(statuses, str):
        statuses = {statuses}
    deadline = time.monotonic() + timeout
    while True:
        job = await store.jobs.get(job_id)
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job['status']}, expected {statuses}: {job.get('last_error')}")
        await asyncio.sleep(0.05)


async def eventually(check, timeout: float = 20.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
