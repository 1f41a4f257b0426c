"""Phases of `scripts/bench` added for issue 22, each measured from outside on a given server:
the producer library's single enqueue, REST batches, the REST submit's floor (scripts/
bench_floor.py), and the commands each idle process sends at the wire (scripts/wirecount.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from urllib.parse import urlsplit

import httpx
from bench_switchyard import ROOT, TOKEN, env_for, fresh_store, rest_submit_rate, spawn, stop
from wirecount import WireCounter

from app import embedded
from app.producer import AsyncProducer
from app.settings import Settings

JOB = {"engine": "general", "operation": "noop"}


async def library_enqueue_rate(url: str, seconds: float) -> dict:
    """`AsyncProducer.enqueue` one job at a time, one client, no consumers."""
    db = "bench_library"
    st = await fresh_store(url, db)
    await st.close()
    settings = Settings(queue_limits={"general": 1_000_000})
    async with AsyncProducer(url, owner="admin", db_name=db, settings=settings) as p:
        await p.enqueue(JOB)  # connect, read the engine: not timed
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            await p.enqueue(JOB)
            n += 1
        elapsed = time.monotonic() - t0
        await p.store.client.close()
    return {"calls": n, "per_s": n / elapsed}


def rest_batch_rate(base: str, batches: int, size: int = 1000) -> dict:
    """`POST /api/v1/jobs/submit/batch` of `size` jobs, `batches` times in a row, one client;
    the rate counts jobs."""
    body = {"jobs": [JOB] * size}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        assert c.post("/api/v1/jobs/submit/batch", json={"jobs": [JOB]}).status_code == 201  # warm: not timed
        per_batch = []
        for _ in range(batches):
            t = time.monotonic()
            r = c.post("/api/v1/jobs/submit/batch", json=body)
            per_batch.append(time.monotonic() - t)
            assert r.status_code == 201 and r.json()["created"] == size, r.text[:300]
    total = sum(per_batch)
    return {"batches": batches, "size": size, "seconds": total, "per_s": batches * size / total}


def _wait_http(url: str, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
        try:
            httpx.get(url)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def floor_rate(url: str, seconds: float) -> float:
    """The REST submit's floor (scripts/bench_floor.py), driven by the same client loop."""
    port = embedded.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_floor.py"), url, str(port)],
        cwd=ROOT,
        env=env_for(url, "bench_floor"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/docs", proc)
        return rest_submit_rate(base, seconds, path="/floor")
    finally:
        stop([proc])


async def commands_at_rest(url: str, settle: float, seconds: float) -> dict:
    """Commands per second to the database from an idle `serve --workers 0` (relay,
    notifier and mailer on) and from an idle `worker --concurrency 32`, each through its own
    counting proxy, after `settle` seconds."""
    db = "bench_rest_idle"
    st = await fresh_store(url, db)
    upstream = urlsplit(url).netloc.rsplit("@", 1)[-1]
    serve_wire, worker_wire = await WireCounter(upstream).start(), await WireCounter(upstream).start()
    port = embedded.free_port()
    procs = [
        spawn(["serve", "--port", str(port), "--workers", "0"], serve_wire.url(url), db),
        spawn(["worker", "--concurrency", "32"], worker_wire.url(url), db),
    ]
    try:
        while await st.workers.alive_count() < 1:
            await asyncio.sleep(0.1)
        await asyncio.sleep(settle)
        serve_wire.reset()
        worker_wire.reset()
        await asyncio.sleep(seconds)
        out = {"seconds": seconds}
        for name, wire in (("serve", serve_wire), ("worker", worker_wire)):
            out[name] = round(wire.rate(), 2)
            out[f"{name}_commands"] = {k: round(v / seconds, 2) for k, v in wire.counts.most_common()}
        return out
    finally:
        await asyncio.to_thread(stop, procs)
        await serve_wire.stop()
        await worker_wire.stop()
        await st.close()
