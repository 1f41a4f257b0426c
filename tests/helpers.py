"""Small async helpers shared by tests."""

from __future__ import annotations

import asyncio
import json
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


_pending: dict[int, list] = {}


async def wait_workflow(api, wf_id: str, statuses=("completed",), timeout: float = 60.0) -> dict:
    """A workflow's status (over the API) once it is in one of `statuses`."""

    async def done():
        body = (await api.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
        return body if body["status"] in statuses else None

    return await eventually(done, timeout=timeout, interval=0.1)


async def recv(ws, timeout=20.0) -> dict:
    """The next message; a frame may carry several (a JSON array), handed out in order."""
    queue = _pending.setdefault(id(ws), [])
    if not queue:
        body = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        queue.extend(body if isinstance(body, list) else [body])
    return queue.pop(0)


async def until(ws, predicate, timeout=30.0) -> list[dict]:
    """Messages up to and including the first that satisfies `predicate`."""
    seen = []
    while True:
        msg = await recv(ws, timeout)
        seen.append(msg)
        if predicate(msg):
            return seen
