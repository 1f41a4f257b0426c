"""Switchyard benchmarks, printed as a table. See docs/benchmarks.md for recorded runs.

Everything runs on one SecantusDB server started here with `--sync-on-commit` (the embedded
mode's durability setting), with real `switchyard serve` / `switchyard worker` processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from app import embedded  # noqa: E402
from app.domain.models import JobSpec  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store import connect  # noqa: E402

TOKEN = "bench-token"


def env_for(url: str, db: str, **extra) -> dict:
    env = dict(os.environ, MONGODB_URL=url, MONGODB_DB=db, SWITCHYARD_ADMIN_TOKEN=TOKEN, SWITCHYARD_LOG_LEVEL="WARNING",
               SWITCHYARD_QUEUE_LIMITS=json.dumps({"general": 10_000}), PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def spawn(args: list[str], url: str, db: str, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=env_for(url, db, **extra),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


async def drain(url: str, n: int, processes: int = 2, concurrency: int = 64) -> dict:
    """A queue pre-filled with `n` no-op jobs, drained by `processes` worker processes."""
    db = "bench_drain"
    st = await fresh_store(url, db)
    await st.engines.set_paused("general", True)
    await st.jobs.insert_many([st.jobs.build(JobSpec(engine="general", operation="noop"), "bench") for _ in range(n)])
    procs = [spawn(["worker", "--concurrency", str(concurrency)], url, db) for _ in range(processes)]
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


def rest_submit_rate(base: str, seconds: float) -> float:
    """One client, one job at a time, through REST."""
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            r = c.post("/api/v1/jobs/submit", json={"engine": "general", "operation": "noop"})
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
            from datetime import datetime

            lat.append((datetime.fromisoformat(j["started_at"]) - datetime.fromisoformat(j["created_at"])).total_seconds() * 1000)
            time.sleep(0.15)
    lat.sort()
    return {"p50_ms": statistics.median(lat), "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))], "samples": samples}


async def serve_phase(url: str, seconds: float, samples: int) -> dict:
    db = "bench_serve"
    st = await fresh_store(url, db)
    port = embedded.free_port()
    base = f"http://127.0.0.1:{port}"
    procs = [spawn(["serve", "--port", str(port), "--workers", "0"], url, db)]
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        rate = await asyncio.to_thread(rest_submit_rate, base, seconds)
        await st.engines.set_paused("general", True)  # the submitted jobs stay put
        for j in (await st.jobs.list(status="queued", limit=100_000))[0]:
            await st.jobs.cancel(j["_id"])
        await st.engines.set_paused("general", False)
        procs += [spawn(["worker", "--concurrency", "8"], url, db) for _ in range(2)]
        while await st.workers.alive_count() < 2:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        latency = await asyncio.to_thread(submit_to_start, base, samples)
    finally:
        stop(procs)
        await st.close()
    return {"rest_submit_per_s": rate, **latency}


async def claim_cost(url: str, depth: int, claims: int = 1000, claimers: int = 8, batch: int = 16) -> dict:
    """Jobs claimed per second by 8 concurrent claimers taking batches of 16, with `depth`
    jobs queued. Claiming only: no handler runs."""
    db = f"bench_claim_{depth}"
    st = await fresh_store(url, db)
    spec = JobSpec(engine="general", operation="noop")
    for i in range(0, depth, 10_000):
        await st.jobs.insert_many([st.jobs.build(spec, "bench") for _ in range(min(10_000, depth - i))])
    taken, seen = 0, set()
    per_call = []

    async def claimer(w):
        nonlocal taken
        while taken < claims:
            t = time.monotonic()
            got = await st.jobs.claim(await st.engines.get("general"), f"bench{w}", batch)
            per_call.append(time.monotonic() - t)
            for j in got:
                assert j["_id"] not in seen, "double claim"
                seen.add(j["_id"])
            taken += len(got)

    t0 = time.monotonic()
    await asyncio.gather(*(claimer(w) for w in range(claimers)))
    elapsed = time.monotonic() - t0
    await st.client.drop_database(db)
    await st.close()
    return {"depth": depth, "claimed": taken, "jobs_per_s": taken / elapsed, "p50_call_ms": statistics.median(per_call) * 1000}


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--no-celery", action="store_true", help="skip the Celery baseline")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    q = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    server = embedded.spawn(str(tmp / "db"))
    url = server.url
    out: dict = {"machine": machine(), "quick": q}
    try:
        print(f"server: SecantusDB --sync-on-commit at {url}\nmachine: {out['machine']}", flush=True)
        out["raw_writes_per_s"] = await raw_write_limit(url, 2 if q else 5)
        print(f"raw update_one by _id, 8 clients: {out['raw_writes_per_s']:.0f}/s", flush=True)
        out["drain"] = await drain(url, 300 if q else 2000)
        print(f"switchyard drain: {out['drain']}", flush=True)
        out["serve"] = await serve_phase(url, 3 if q else 10, 10 if q else 100)
        print(f"switchyard REST submit / latency: {out['serve']}", flush=True)
        out["claim"] = [await claim_cost(url, d, claims=300 if q else 1000) for d in ((1000, 10_000) if q else (1000, 100_000))]
        print(f"claim cost: {out['claim']}", flush=True)
        if not args.no_celery:
            import bench_celery

            celery_url = url.replace("/?", "/celery_bench?")
            out["celery_drain"] = bench_celery.drain(celery_url, 300 if q else 2000)
            print(f"celery drain: {out['celery_drain']}", flush=True)
            out["celery_delay"] = bench_celery.delay_rate(celery_url, 3 if q else 10)
            print(f"celery delay(): {out['celery_delay']}", flush=True)
    finally:
        server.stop()
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


def report(o: dict) -> None:
    rows = [("raw write limit (update_one by _id, 8 clients)", f"{o['raw_writes_per_s']:.0f}/s", "")]
    d, s = o["drain"], o["serve"]
    half_raw = o["raw_writes_per_s"] / 2
    cd = o.get("celery_drain")
    rows.append((f"drain {d['jobs']} no-op jobs, 2 worker processes", f"{d['jobs_per_s']:.0f} jobs/s",
                 f">= {half_raw:.0f} (raw/2)" + (f", >= {5 * cd['jobs_per_s']:.0f} (5x Celery)" if cd else "")))
    if cd:
        rows.append((f"Celery drain {cd['jobs']} no-op jobs, 2 processes x 8 threads", f"{cd['jobs_per_s']:.1f} jobs/s", ""))
    cdl = o.get("celery_delay")
    rows.append(("single-job submit, one client, REST", f"{s['rest_submit_per_s']:.0f}/s",
                 f">= {cdl['per_s']:.0f} (Celery delay())" if cdl else ""))
    if cdl:
        rows.append(("Celery delay(), one client", f"{cdl['per_s']:.0f}/s", ""))
    rows.append((f"submit-to-start on an idle system ({s['samples']} jobs)", f"p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms", "p50 <= 50 ms"))
    c = o["claim"]
    for row in c:
        rows.append((f"claim, depth {row['depth']:,}, 8 claimers x 16", f"{row['jobs_per_s']:.0f} jobs/s (p50 call {row['p50_call_ms']:.1f} ms)", ""))
    rows.append(("claim at deepest / shallowest", f"{c[-1]['jobs_per_s'] / c[0]['jobs_per_s']:.0%}", ">= 50%"))
    w = max(len(r[0]) for r in rows)
    v = max(len(r[1]) for r in rows)
    print()
    print(f"{'measure':<{w}}  {'result':<{v}}  target")
    print(f"{'-' * w}  {'-' * v}  ------")
    for name, val, target in rows:
        print(f"{name:<{w}}  {val:<{v}}  {target}")


if __name__ == "__main__":
    asyncio.run(main())
