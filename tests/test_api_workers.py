"""`GET /api/v1/jobs/workers`: the registry as the API shows it. A live in-process worker
with its running jobs, a stopped one, a real worker process killed with SIGKILL (marked
dead by maintenance once its registration expires), and the query rules."""

from __future__ import annotations

import os
import signal
import socket
from datetime import datetime

from app.store.workers import WorkerStore
from app.worker.maintenance import Maintenance
from app.worker.processor import JobProcessor
from tests.conftest import make_settings
from tests.helpers import eventually, wait_status
from tests.procs import start_worker, stop


async def listed(api, **params) -> list[dict]:
    r = await api.get("/api/v1/jobs/workers", params=params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["workers"])
    return body["workers"]


async def test_a_live_worker_shows_its_fields_and_running_jobs(api, worker, jobs, store):
    job = await jobs.queued(operation="wait_cancel")
    await wait_status(store, job["_id"], "running")

    async def beat_with_the_job():  # the next heartbeat (every lease/3) carries it
        ws = await listed(api)
        return ws if ws and ws[0]["running_jobs"] == [job["_id"]] else None

    [w] = await eventually(beat_with_the_job, timeout=10)
    assert w["id"] == worker.worker_id and w["status"] == "alive"
    assert (w["host"], w["pid"], w["kind"]) == (socket.gethostname(), os.getpid(), "worker")
    assert w["engines"] is None and w["concurrency"] == 50 and w["running"] == 1
    started, seen = datetime.fromisoformat(w["started_at"]), datetime.fromisoformat(w["last_seen"])
    assert started <= seen < datetime.fromisoformat(w["expires_at"]) and w["died_at"] is None

    await api.post(f"/api/v1/jobs/{job['_id']}/cancel")
    await wait_status(store, job["_id"], "cancelled")

    async def idle():
        [w] = await listed(api)
        return w["running"] == 0 and w["running_jobs"] == []

    await eventually(idle, timeout=10)


async def test_a_stopped_worker_is_shown_stopped(api, store, settings):
    proc = JobProcessor(store, settings, concurrency=2, engines=["testing"], kind="serve")
    await proc.start()
    assert [w["status"] for w in await listed(api, status="alive")] == ["alive"]
    await proc.stop(grace=0)
    [w] = await listed(api, status="stopped")
    assert (w["id"], w["kind"], w["engines"], w["running_jobs"]) == (proc.worker_id, "serve", ["testing"], [])
    assert await listed(api, status="alive") == []


async def test_an_expired_registration_is_marked_dead_and_its_permits_return(api, store, settings):
    short = WorkerStore(store.db, make_settings(lease_seconds=0.25), store.clock)  # a worker on a 0.25 s lease
    await short.register("wstalled", engines=["testing"], concurrency=2, kind="worker")
    await store.engines.ensure("testing")
    assert await store.engines.reserve("testing", "wstalled", 1)
    assert [w["id"] for w in await listed(api, status="alive")] == ["wstalled"]

    maint = Maintenance(store, settings)

    async def dead():  # no beats come: one rescue pass after the expiry marks it
        await maint.rescue()
        return await listed(api, status="dead")

    [w] = await eventually(dead, timeout=5)
    assert w["id"] == "wstalled" and w["died_at"] is not None
    assert await listed(api, status="alive") == []
    assert (await store.engines.get("testing")).get("running", 0) == 0  # its permit came back


async def test_a_killed_worker_process_turns_dead(api, db_url, store, settings):
    proc = start_worker(db_url, store.db.name, concurrency=3, engines="testing,ledger")
    try:

        async def registered():
            return [w for w in await listed(api, status="alive") if w["pid"] == proc.pid]

        [w] = await eventually(registered, timeout=30)
        assert w["engines"] == ["ledger", "testing"] and w["concurrency"] == 3 and w["kind"] == "worker"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        maint = Maintenance(store, settings)

        async def dead():
            await maint.rescue()
            return [d for d in await listed(api, status="dead") if d["id"] == w["id"]]

        [d] = await eventually(dead, timeout=settings.lease_seconds + 5)
        assert d["pid"] == proc.pid and d["last_seen"] <= d["died_at"]
    finally:
        stop(proc)


async def test_query_rules(api):
    r = await api.get("/api/v1/jobs/workers", params={"status": "zombie"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.status"
    r = await api.get("/api/v1/jobs/workers", params={"status[$ne]": "dead"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "status[$ne]"
    r = await api.get("/api/v1/jobs/workers", params={"limit": 0})
    assert r.status_code == 422 and r.json()["error"]["field"] == "query.limit"
    r = await api.get("/api/v1/jobs/workers", headers={"Authorization": ""})
    assert r.status_code == 401
