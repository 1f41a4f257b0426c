"""Switchyard's side of `scripts/bench`: real `serve` and `worker` processes on a given
server, measured from outside."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import embedded  # noqa: E402
from app.domain.models import JobSpec  # noqa: E402
from app.domain.workflow import StepSpec, WorkflowSpec  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store import connect  # noqa: E402

TOKEN = "bench-token"


def env_for(url: str, db: str, **extra) -> dict:
    env = dict(
        os.environ,
        MONGODB_URL=url,
        MONGODB_DB=db,
        SWITCHYARD_ADMIN_TOKEN=TOKEN,
        SWITCHYARD_LOG_LEVEL="WARNING",
        SWITCHYARD_QUEUE_LIMITS=json.dumps({"general": 10_000}),
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def spawn(args: list[str], url: str, db: str, **extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env_for(url, db, **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


async def fresh_store(url: str, db: str):
    s = Settings(queue_limits={"general": 10_000})
    st = connect(url, s, db_name=db)
    await st.client.drop_database(db)
    await st.start()
    return st


async def raw_write_limit(url: str, seconds: float, clients: int = 8) -> float:
    """`update_one` by `_id`, 8 concurrent clients: the server's write ceiling."""
    from pymongo import AsyncMongoClient

    c = AsyncMongoClient(url, journal=True)
    col = c["bench_raw"]["docs"]
    await col.drop()
    await col.insert_many([{"_id": i, "n": 0} for i in range(clients)])
    done = 0
    stop_at = time.monotonic() + seconds

    async def one(i):
        nonlocal done
        while time.monotonic() < stop_at:
            await col.update_one({"_id": i}, {"$inc": {"n": 1}})
            done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(clients)))
    rate = done / (time.monotonic() - t0)
    await c.drop_database("bench_raw")
    await c.close()
    return rate


# Limits that hold every job to a rate, a per-key rate and a per-key concurrency, none of
# which binds at the drain's speed: what configured limits cost when they do not bind.
LOOSE_LIMITS = {"rate": "1000000/s", "key": "params.account", "key_rate": "1000000/s", "key_concurrency": 10_000}
ACCOUNTS = 8


async def drain(
    url: str,
    n: int,
    processes: int = 2,
    concurrency: int = 64,
    limited: bool = False,
    serve: bool | None = None,
    sink: bool = False,
) -> dict:
    """A queue pre-filled with `n` no-op jobs, drained by `processes` worker processes.
    `limited`: with LOOSE_LIMITS on the engine and the jobs spread over ACCOUNTS keys.
    `serve`: as deployed, with a `switchyard serve --workers 0` process beside the workers,
    running the event relay, notifier and mailer (True) or not (False, SWITCHYARD_RUN_RELAY=false).
    `sink`: the relay's floor beside them (scripts/bench_floor.py, `event_sink`)."""
    db = "bench_drain"
    st = await fresh_store(url, db)
    await st.engines.set_paused("general", True)
    if limited:
        await st.engines.set_limits("general", **LOOSE_LIMITS)
    start = await st.feed.position()  # the relay's floor, as the relay, starts before the inserts
    await st.lifecycle.insert_many(
        [
            st.lifecycle.build(
                JobSpec(engine="general", operation="noop", parameters={"account": f"a{i % ACCOUNTS}"}), "bench"
            )
            for i in range(n)
        ]
    )
    procs = [spawn(["worker", "--concurrency", str(concurrency)], url, db) for _ in range(processes)]
    if serve is not None:
        port = embedded.free_port()
        relay = "true" if serve else "false"
        procs.append(spawn(["serve", "--port", str(port), "--workers", "0"], url, db, SWITCHYARD_RUN_RELAY=relay))
        for _ in range(300):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    if sink:
        floor = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "bench_floor.py"), "relay", url, db, start["_data"]],
            cwd=ROOT,
            env=env_for(url, db),
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(floor)
        assert (await asyncio.to_thread(floor.stdout.readline)).strip() == "ready", "the relay's floor did not start"
    while await st.workers.alive_count() < processes:
        await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await st.engines.set_paused("general", False)
    while True:
        e = await st.engines.get("general")
        if e.get("queued", 0) <= 0 and e.get("running", 0) == 0:
            break
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - t0
    done = (await st.jobs.history())["counts"]["completed"]
    stop(procs)
    await st.close()
    assert done == n, f"only {done}/{n} completed"
    return {"jobs": n, "seconds": elapsed, "jobs_per_s": n / elapsed}


def rest_submit_rate(base: str, seconds: float, path: str = "/api/v1/jobs/submit") -> float:
    """One client, one job at a time, through REST (or `path`: the floor's endpoint)."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        assert c.post(path, json={"engine": "general", "operation": "noop"}).status_code == 201  # warm: not timed
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            r = c.post(path, json={"engine": "general", "operation": "noop"})
            assert r.status_code == 201, r.text
            n += 1
        return n / (time.monotonic() - t0)


def submit_to_start(base: str, samples: int) -> dict:
    """On an idle system: submit, wait for the job to finish, read started_at - created_at."""
    lat = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        for _ in range(samples):
            job = c.post("/api/v1/jobs/submit", json={"engine": "general", "operation": "noop"}).json()
            while True:
                j = c.get(f"/api/v1/jobs/{job['id']}/status").json()
                if j["status"] == "completed":
                    break
                time.sleep(0.02)
            lat.append(
                (datetime.fromisoformat(j["started_at"]) - datetime.fromisoformat(j["created_at"])).total_seconds()
                * 1000
            )
            time.sleep(0.15)
    lat.sort()
    return {
        "p50_ms": statistics.median(lat),
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "samples": samples,
    }


@asynccontextmanager
async def serving(url: str, db: str, workers: int = 0):
    """A `switchyard serve --workers 0` process and `workers` worker processes on `db`."""
    st = await fresh_store(url, db)
    port = embedded.free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [spawn(["serve", "--port", str(port), "--workers", "0"], url, db)]
    procs += [spawn(["worker", "--concurrency", "8"], url, db) for _ in range(workers)]
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        while await st.workers.alive_count() < workers:
            await asyncio.sleep(0.1)
        yield base
    finally:
        stop(procs)
        await st.close()


async def fill_queue(url: str, db: str, depth: int) -> None:
    st = await fresh_store(url, db)
    spec = JobSpec(engine="general", operation="noop")
    for i in range(0, depth, 10_000):
        await st.lifecycle.insert_many([st.lifecycle.build(spec, "bench") for _ in range(min(10_000, depth - i))])
    await st.close()


async def claim_cost(url: str, db: str, claims: int = 1000, claimers: int = 8, batch: int = 16) -> dict:
    """Jobs claimed per second by 8 concurrent claimers taking batches of 16 from a queue
    filled beforehand. Claiming only: no handler runs."""
    st = connect(url, Settings(queue_limits={"general": 10_000}), db_name=db)
    await st.start()
    depth = (await st.engines.get("general"))["queued"]
    taken, seen, per_call = 0, set(), []

    async def claimer(w):
        nonlocal taken
        while taken < claims:
            t = time.monotonic()
            got = await st.claimer.claim(await st.engines.get("general"), f"bench{w}", batch)
            per_call.append(time.monotonic() - t)
            for j in got:
                assert j["_id"] not in seen, "double claim"
                seen.add(j["_id"])
            taken += len(got)

    t0 = time.monotonic()
    await asyncio.gather(*(claimer(w) for w in range(claimers)))
    elapsed = time.monotonic() - t0
    await st.close()
    return {
        "depth": depth,
        "claimed": taken,
        "jobs_per_s": taken / elapsed,
        "p50_call_ms": statistics.median(per_call) * 1000,
    }


async def wait_engine_idle(st, engine: str = "general") -> None:
    while True:
        e = await st.engines.get(engine)
        if e.get("queued", 0) <= 0 and e.get("running", 0) == 0:
            return
        await asyncio.sleep(0.05)


MAKESPAN_PARTS = ("independent", "floor", "workflow")


async def makespan_part(url: str, part: str, n: int = 1000, processes: int = 2, concurrency: int = 64) -> float:
    """Seconds from submission to the last completion of one of `MAKESPAN_PARTS`, on the same
    workers: `workflow`, a 1 -> n-2 -> 1 fan-out/fan-in workflow of no-op steps;
    `independent`, n independent no-op jobs; `floor`, n jobs that each add only a fan-out
    child's pending -> queued write. The bench runs each on a server of its own: on one
    server whichever ran later was slower (by 10-40 %, 2026-12-03)."""
    st = await fresh_store(url, "bench_makespan")
    procs = [spawn(["worker", "--concurrency", str(concurrency)], url, "bench_makespan") for _ in range(processes)]
    try:
        while await st.workers.alive_count() < processes:
            await asyncio.sleep(0.1)
        docs = [st.lifecycle.build(JobSpec(engine="general", operation="noop"), "bench") for _ in range(n)]
        # Each is timed from submission: the workflow's steps are written inside its clock,
        # so the others' jobs are too (one insert_many).
        if part == "independent":
            t0 = time.monotonic()
            await st.lifecycle.insert_many(docs)
            await wait_engine_idle(st)
            return time.monotonic() - t0
        if part == "floor":  # the write a fan-out child cannot avoid, with no root, sink or settle
            for i, d in enumerate(docs):
                d.pop("queued_at", None)
                d.update(status="pending", ord=i, waiting_on={})
            t0 = time.monotonic()
            await st.lifecycle.insert_many(docs)
            await st.enqueuer.ready(docs)
            await wait_engine_idle(st)
            return time.monotonic() - t0
        mids = [StepSpec(key=f"m{i}", engine="general", operation="noop", depends_on=["root"]) for i in range(n - 2)]
        spec = WorkflowSpec(
            name="fan",
            jobs=[
                StepSpec(key="root", engine="general", operation="noop"),
                *mids,
                StepSpec(key="sink", engine="general", operation="noop", depends_on=[m.key for m in mids]),
            ],
        )
        t0 = time.monotonic()
        wf = await st.workflows.create(spec, "bench")
        while (await st.workflows.get(wf["_id"]))["status"] == "running":
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        assert (await st.workflows.get(wf["_id"]))["status"] == "completed"
        return took
    finally:
        stop(procs)
        await st.close()


def workflow_submit(base: str, n: int) -> dict:
    """One `POST /jobs/workflows` of n independent no-op steps, timed by the client."""
    body = {"name": "wide", "jobs": [{"key": f"s{i}", "engine": "general", "operation": "noop"} for i in range(n)]}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        t0 = time.monotonic()
        r = c.post("/api/v1/jobs/workflows", json=body)
        elapsed = time.monotonic() - t0
    assert r.status_code == 201, r.text[:300]
    return {"steps": n, "seconds": elapsed}


async def map_expand(url: str, db: str, n: int) -> dict:
    """A map step of `n` items makes its children: the workflow `src -> each (map_over
    src.value) -> sink` is stored, `src` is claimed and completed with an n-item list here,
    and the completion with its settle (which expands `each`: one insert of n children) is
    timed. The same code path as a worker's; no worker runs, so nothing else competes."""
    st = await fresh_store(url, db)
    try:
        spec = WorkflowSpec(
            name="map",
            jobs=[
                StepSpec(key="src", engine="general", operation="noop"),
                StepSpec(key="each", engine="general", operation="noop", depends_on=["src"], map_over="src.value"),
                StepSpec(key="sink", engine="general", operation="noop", depends_on=["each"]),
            ],
        )
        wf = await st.workflows.create(spec, owner="bench")
        (job,) = await st.claimer.claim(await st.engines.get("general"), "wbench", 1)
        t0 = time.monotonic()
        await st.lifecycle.complete(job, job["lease_token"], {"value": [{"i": i} for i in range(n)]}, 1)
        await st.lifecycle.drain()
        elapsed = time.monotonic() - t0
        doc = await st.workflows.get(wf["_id"])
        assert doc["total"] == n + 3, doc
        return {"items": n, "seconds": elapsed}
    finally:
        await st.close()
