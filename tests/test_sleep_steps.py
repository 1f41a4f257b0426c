"""Durable sleep steps against the real server: a sleep waits in `scheduled` holding no worker
slot, the promoter completes it when due (never queueing it), its result says until when it
slept, `until` in the past or future, cancel; and a sleep survives SIGKILL of every process
(`switchyard serve` and `switchyard worker` subprocesses), completing once after its time."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from app.domain.flowsteps import FLOW_ENGINE, iso
from tests.conftest import TOKEN
from tests.helpers import eventually
from tests.procs import start_worker, stop
from tests.servers import serve_processes
from tests.test_approvals import job, step_of, submit, wait_step, wait_wf


@pytest.fixture(autouse=True)
async def roomy_engine(store):
    await store.engines.set_limit("testing", 20)


def nap(deps=("a",), **kw) -> dict:
    return {"key": "nap", "type": "sleep", "depends_on": list(deps), **kw}


async def test_a_sleep_waits_its_time_without_a_slot(api, store, worker):
    wf = await submit(api, [job("a", op="ok"), nap(seconds=1.5), job("b", ["nap"])])
    sleeping = await wait_step(store, wf, "nap", "scheduled")
    a = await step_of(store, wf, "a")
    assert sleeping["engine"] == FLOW_ENGINE and "seq" not in sleeping and sleeping.get("attempt", 0) == 0
    assert timedelta(seconds=1.5) <= sleeping["run_at"] - a["completed_at"] < timedelta(seconds=3)
    status = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    (shown,) = [s for s in status["steps"] if s["key"] == "nap"]
    assert shown["type"] == "sleep" and shown["why"]["reasons"][0]["reason"] == "sleeping"
    queues = (await api.get("/api/v1/jobs/queue/status")).json()["queues"]
    assert FLOW_ENGINE not in [q["name"] for q in queues]  # no queue, no worker, no slot

    await wait_wf(api, wf, ("completed",))
    slept = await step_of(store, wf, "nap")
    assert slept["result"] == {"slept_until": iso(sleeping["run_at"])}
    assert slept["completed_at"] >= sleeping["run_at"] and "seq" not in slept  # never queued
    b = await step_of(store, wf, "b")
    assert b["started_at"] >= sleeping["run_at"] and b["result"]["parents"]["nap"] == slept["result"]


async def test_until_in_the_future_and_in_the_past(api, store, worker):
    when = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
    wf = await submit(
        api,
        [
            job("a", op="ok"),
            nap(until=when.isoformat()),
            {"key": "past", "type": "sleep", "until": "2001-01-01T00:00:00Z"},
        ],
    )
    past = await wait_step(store, wf, "past", "completed")
    assert past["result"] == {"slept_until": "2001-01-01T00:00:00.000Z"}
    slept = await wait_step(store, wf, "nap", "completed")
    assert slept["run_at"] == when and slept["completed_at"] >= when
    await wait_wf(api, wf, ("completed",))


async def test_cancelling_a_sleeping_step(api, store, worker):
    wf = await submit(api, [job("a", op="ok"), nap(seconds=3600), job("b", ["nap"])])
    await wait_step(store, wf, "nap", "scheduled")
    r = await api.post(f"/api/v1/jobs/{wf['jobs']['nap']}/cancel")
    assert r.status_code == 200, r.text
    await wait_wf(api, wf, ("cancelled",))
    assert (await step_of(store, wf, "b"))["cancel_reason"] == "dependency_cancelled"


async def test_a_sleep_survives_killing_every_process(db_url, store):
    """Every process is SIGKILLed while the step sleeps; new ones complete it after its
    time, once: its child runs once, and the log holds one `job.completed` for it."""
    env = {"SWITCHYARD_ADMIN_TOKEN": TOKEN, "SWITCHYARD_QUEUE_LIMITS": '{"testing": 8}'}
    ports, serves = await serve_processes(db_url, store.db.name, [2], **env)
    workers = [start_worker(db_url, store.db.name, concurrency=2, **env)]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", headers=auth, timeout=30) as c:
            wf = await submit(c, [job("a", op="ok"), nap(seconds=4), job("b", ["nap"])])
        sleeping = await wait_step(store, wf, "nap", "scheduled")
        for p in serves + workers:
            stop(p, signal.SIGKILL)
        killed_at = datetime.now(UTC)
        assert killed_at < sleeping["run_at"]  # killed while it sleeps
        await asyncio.sleep(1)
        assert (await step_of(store, wf, "nap"))["status"] == "scheduled"  # nobody is left to wake it

        ports, serves = await serve_processes(db_url, store.db.name, [2], **env)
        workers = [start_worker(db_url, store.db.name, concurrency=2, **env)]
        done = await wait_step(store, wf, "b", "completed", timeout=60)
        slept = await step_of(store, wf, "nap")
        assert slept["status"] == "completed" and slept["completed_at"] >= sleeping["run_at"]
        assert slept["result"] == {"slept_until": iso(sleeping["run_at"])}
        assert done["attempt"] == 1 and done["started_at"] >= sleeping["run_at"]

        async def logged():  # the relay of the new serve process catches up
            events = await store.events.since(0, job_id=wf["jobs"]["nap"])
            return events if any(e["type"] == "job.completed" for e in events) else None

        events = await eventually(logged, timeout=30)
        await asyncio.sleep(1)
        events = await store.events.since(0, job_id=wf["jobs"]["nap"])
        assert [e["type"] for e in events] == ["job.scheduled", "job.completed"]  # sleep, then wake
    finally:
        for p in serves + workers:
            stop(p)
