"""The scenarios of `scripts/chaos`. Each one starts its own fresh server and processes
(chaos_cluster.Cluster), does its damage, waits for the system to settle, and returns a
result: figures, the goal, and the checks that decide pass or fail (chaos_check)."""

from __future__ import annotations

import asyncio
import random
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from itertools import pairwise

import chaos_check as ck
import httpx
from chaos_cluster import APP_NAME, ENGINE, LEASE, TOKEN, Cluster, running_owners

from app.domain.retry import RetryConfig
from app.store import quirks
from app.worker.supervisor import hand_back
from tests.faultproxy import FaultProxy, parse_command

HEADERS = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Result:
    name: str
    title: str
    goal: str
    figures: dict = field(default_factory=dict)
    checks: list = field(default_factory=list)  # (description, passed)
    peak: tuple[int, int] | None = None  # (peak concurrency, limit)
    notes: list = field(default_factory=list)

    def check(self, what: str, ok: bool) -> None:
        self.checks.append((what, bool(ok)))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok in self.checks)


async def until(pred, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(every)
    return False


async def running_count(cl: Cluster, owner_pid: int | None = None) -> int:
    docs = await cl.store.jobs.col.find({"engine": ENGINE, "status": "running"}, {"lease_owner": 1}).to_list(None)
    if owner_pid is None:
        return len(docs)
    owners = {w["_id"] for w in await cl.store.workers.list() if w["pid"] == owner_pid}
    return sum(1 for d in docs if d.get("lease_owner") in owners)


async def permits_at_rest(cl: Cluster, timeout: float = 3 * LEASE) -> int:
    """Permits still held once every job is finished: 0 unless one leaked."""
    running = 0

    async def zero():
        nonlocal running
        e = await cl.store.engines.get(ENGINE)
        running = e.get("running", 0)
        return running == 0

    if not await until(zero, timeout, 0.2):
        e = await cl.store.engines.get(ENGINE)
        ws = {w["_id"]: (w["pid"], w["status"]) for w in await cl.store.workers.list()}
        print(
            f"  permits held at rest: running {e.get('running')}, holds "
            f"{ {k: (v, ws.get(k)) for k, v in (e.get('holds') or {}).items()} }",
            flush=True,
        )
    return running


async def common(cl: Cluster, r: Result, acknowledged: list[str], *, settle: float = 60.0, runs=None) -> dict:
    """Settle, then the invariants every scenario shares. Returns the runs and docs."""
    waited = await cl.wait_settled(settle)
    leaked = await permits_at_rest(cl)
    runs = ck.load_runs(cl.ledger) if runs is None else runs
    docs = await cl.docs()
    state = ck.db_state(acknowledged, docs)
    stale = ck.stale_completions(runs, docs)
    peak = ck.peak_concurrency(ck.intervals(runs, cl.events, ENGINE, time.time(), docs))
    f = r.figures
    f.update(
        lost=state["lost"],
        stuck=state["stuck"],
        double_claims=ck.double_claims(runs),
        stale_accepted=stale["accepted"],
        reruns=ck.reruns(runs),
        duplicate_finishes=ck.duplicate_finishes(runs),
        peak=peak,
        limit=cl.limit,
        settle_s=round(waited, 1),
        statuses=state["statuses"],
        rescues=state["rescues"],
        permits_leaked=leaked,
    )
    r.peak = (peak, cl.limit)
    r.check(f"lost {state['lost']} == 0", state["lost"] == 0)
    r.check(f"stuck {state['stuck']} == 0", state["stuck"] == 0)
    r.check(f"double claims {f['double_claims']} == 0", f["double_claims"] == 0)
    r.check(f"stale completions accepted {stale['accepted']} == 0", stale["accepted"] == 0)
    r.check(f"completions without a run {stale['completed_without_run']} == 0", stale["completed_without_run"] == 0)
    r.check(f"peak concurrency {peak} <= limit {cl.limit}", peak <= cl.limit)
    r.check(f"permits held at rest {leaked} == 0", leaked == 0)
    return {"runs": runs, "docs": docs, "stale": stale}


# --- SIGKILL a worker holding 50 leased jobs ------------------------------------------------
async def sigkill(tmp, quick: bool, seed: int) -> Result:
    r = Result(
        "sigkill",
        "SIGKILL a worker holding 50 leased jobs",
        "lost 0; all re-run within lease + 5 s; duplicates counted",
    )
    cl = Cluster(tmp, "sigkill", limit=64)
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        victim = cl.worker(concurrency=50)
        await cl.wait_workers(1)
        ids = await cl.insert(50, seconds=4)
        held = await until(lambda: _eq(running_count(cl, victim.pid), 50), 30)
        r.check("the victim held all 50 leases", held)
        survivors = [cl.worker(concurrency=25) for _ in range(2)]
        await cl.wait_workers(3)
        t_kill = cl.signal(victim, signal.SIGKILL)
        victim.wait()
        out = await common(cl, r, ids)
        runs = out["runs"]
        delays = []
        for i in ids:
            later = [x for x in runs.get(i, []) if x.start > t_kill]
            if later:
                delays.append(later[0].start - t_kill)
        killed_runs = sum(1 for rs in runs.values() for x in rs if x.pid == victim.pid and x.end is None)
        r.figures.update(
            killed_runs=killed_runs,
            rerun_within_s=round(max(delays), 2) if delays else None,
            rerun_p50_s=round(statistics.median(delays), 2) if delays else None,
        )
        r.check(f"{killed_runs} runs were in flight when killed (50)", killed_runs == 50)
        r.check(f"all 50 re-run ({len(delays)})", len(delays) == 50)
        r.check(
            f"last re-run {r.figures['rerun_within_s']} s <= lease + 5 s", bool(delays) and max(delays) <= LEASE + 5
        )
        r.check("every job completed", r.figures["statuses"].get("completed") == 50)
        _ = survivors
    finally:
        await cl.close()
    return r


async def _eq(coro, want) -> bool:
    return (await coro) == want


# --- SIGTERM during work -----------------------------------------------------------------------
async def sigterm(tmp, quick: bool, seed: int) -> Result:
    grace = 3.0
    r = Result(
        "sigterm", "SIGTERM during work", f"finished or released within the grace period ({grace:g} s); duplicates 0"
    )
    cl = Cluster(tmp, "sigterm", limit=16, env={"SWITCHYARD_SHUTDOWN_GRACE_SECONDS": str(grace)})
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        victim = cl.worker(concurrency=8)
        await cl.wait_workers(1)
        short = await cl.insert(4, seconds=1.5)
        long = await cl.insert(4, seconds=10)
        r.check("8 jobs running on the victim", await until(lambda: _eq(running_count(cl, victim.pid), 8), 30))
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        cl.signal(victim, signal.SIGTERM)
        code = await asyncio.to_thread(victim.wait, 30)
        exit_s = time.monotonic() - t0
        after = {d["_id"]: d for d in await cl.docs(short + long)}
        released = sum(1 for i in long if after[i]["status"] == "queued" and after[i]["attempt"] == 0)
        finished = sum(1 for i in short if after[i]["status"] == "completed")
        r.figures.update(exit_s=round(exit_s, 2), exit_code=code, finished_in_grace=finished, released=released)
        r.check(f"exited 0 in {exit_s:.1f} s <= grace + 2 s", code == 0 and exit_s <= grace + 2)
        r.check(f"short jobs finished {finished}/4", finished == 4)
        r.check(f"long jobs released without counting an attempt {released}/4", released == 4)
        r.check("no job left running", not any(d["status"] == "running" for d in after.values()))
        cl.worker(concurrency=8)
        await common(cl, r, short + long, settle=60)
        r.check(f"duplicate finishes {r.figures['duplicate_finishes']} == 0", r.figures["duplicate_finishes"] == 0)
        r.check("every job completed", r.figures["statuses"].get("completed") == 8)
    finally:
        await cl.close()
    return r


# --- a 20 s job with a 2 s lease -------------------------------------------------------------
async def long_job(tmp, quick: bool, seed: int) -> Result:
    seconds = 10 if quick else 20
    r = Result("long_job", f"a {seconds} s job with a {LEASE:g} s lease and heartbeats", "reclaims 0, duplicates 0")
    cl = Cluster(tmp, "long_job", limit=4)
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        for _ in range(2):
            cl.worker(concurrency=2)
        await cl.wait_workers(2)
        ids = await cl.insert(3, seconds=seconds)
        await common(cl, r, ids, settle=seconds * 3)
        r.check(f"reclaims {r.figures['rescues']} == 0", r.figures["rescues"] == 0)
        r.check(f"re-runs {r.figures['reruns']} == 0", r.figures["reruns"] == 0)
        r.check("every job completed", r.figures["statuses"].get("completed") == 3)
    finally:
        await cl.close()
    return r


# --- SIGSTOP past the lease, SIGCONT -----------------------------------------------------------
async def sigstop(tmp, quick: bool, seed: int) -> Result:
    n = 4
    r = Result(
        "sigstop", "SIGSTOP a worker past its lease, another takes over, SIGCONT", "stale completions accepted: 0"
    )
    cl = Cluster(tmp, "sigstop", limit=16)
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        stale = cl.worker(concurrency=n)
        await cl.wait_workers(1)
        ids = await cl.insert(n, seconds=3)
        r.check(
            f"{n} jobs running on the stalled worker", await until(lambda: _eq(running_count(cl, stale.pid), n), 30)
        )
        await asyncio.sleep(0.5)
        cl.signal(stale, signal.SIGSTOP)
        t_stop = time.monotonic()
        cl.worker(concurrency=n)
        done = await cl.wait_settled(60)
        stopped_for = time.monotonic() - t_stop
        cl.signal(stale, signal.SIGCONT)
        await asyncio.sleep(6)  # it wakes, finishes its handlers, tries to complete, finds itself dead
        out = await common(cl, r, ids)
        docs = {d["_id"]: d for d in out["docs"]}
        by_stale = sum(1 for d in docs.values() if (d.get("result") or {}).get("pid") == stale.pid)
        came_back = [w for w in await cl.store.workers.list() if w["pid"] == stale.pid]
        r.figures.update(
            stopped_s=round(stopped_for, 1),
            stale_attempted=out["stale"]["attempted"],
            stale_results_kept=by_stale,
            stale_incarnations=len(came_back),
        )
        r.check(f"the others finished while it was stopped ({done:.1f} s)", done < 60)
        r.check(f"results written by the stalled worker {by_stale} == 0", by_stale == 0)
        r.check(
            "it came back under a new id, alive",
            stale.poll() is None and any(w["status"] == "alive" for w in came_back) and len(came_back) >= 2,
        )
        r.notes.append(
            f"stale completions attempted (its handlers returned after SIGCONT): {out['stale']['attempted']}"
        )
    finally:
        await cl.close()
    return r


# --- restart the database server under load --------------------------------------------------
async def db_restart(tmp, quick: bool, seed: int) -> Result:
    n = 300 if quick else 1000
    r = Result(
        "db_restart",
        f"restart the database (SIGKILL, same data) under {n} enqueue+claim operations",
        "acknowledged jobs lost 0; seconds unavailable; every process reconnects by itself",
    )
    # The limit covers every slot (3 × 8): a worker keeps the permits it uses while there is
    # work, so under a lower limit one worker can rightly go without jobs after the restart,
    # and "ran a job after it" is part of what shows it reconnected.
    cl = Cluster(tmp, "db_restart", limit=24)
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        workers = [cl.worker(concurrency=8) for _ in range(3)]
        await cl.wait_workers(3)
        acked: list[str] = []
        ok_times: list[float] = []
        failures = 0
        todo = list(range(n))
        restart: dict = {}

        async def submitter(c: httpx.AsyncClient):
            nonlocal failures
            while todo:
                todo.pop()
                while True:
                    try:
                        resp = await c.post(
                            "/api/v1/jobs/submit",
                            json={"engine": ENGINE, "operation": "work", "parameters": {"seconds": 0.05}},
                        )
                        if resp.status_code == 201:
                            acked.append(resp.json()["id"])
                            ok_times.append(time.time())
                            break
                    except httpx.HTTPError:
                        pass
                    failures += 1
                    await asyncio.sleep(0.2)

        async def killer():
            await until(lambda: _ge(len(acked), n * 0.3), 300, 0.02)
            restart["down"] = cl.signal(cl.db, signal.SIGKILL)
            cl.db.wait()
            await asyncio.sleep(LEASE + 0.5)  # down for longer than a lease: registrations expire too
            cl.start_db()
            restart["up"] = time.time()

        async with httpx.AsyncClient(base_url=cl.api, headers=HEADERS, timeout=30) as c:
            await asyncio.gather(killer(), *(submitter(c) for _ in range(4)))
        down, up = restart["down"], restart["up"]
        ok_times.sort()
        gap = max((b - a for a, b in pairwise(ok_times) if b > down), default=None)
        after = min([t for t in ok_times if t > up], default=None)
        out = await common(cl, r, acked, settle=90)
        # every process reconnected by itself: alive, beating after the restart, running jobs after it
        ws = await cl.store.workers.list()
        runs = out["runs"]
        reconnected = 0
        for p in workers:
            beat = any(w["pid"] == p.pid and w["status"] == "alive" and w["last_seen"].timestamp() > up for w in ws)
            ran = any(x.pid == p.pid and x.start > up for rs in runs.values() for x in rs)
            reconnected += p.poll() is None and beat and ran
        health = httpx.get(cl.api + "/health", timeout=10)
        serve_ok = (
            cl.serve_proc.poll() is None
            and health.status_code == 200
            and (health.json().get("database") or {}).get("reachable")
        )
        r.figures.update(
            server_down_s=round(up - down, 2),
            submit_gap_s=round(gap, 2) if gap else None,
            submit_failures=failures,
            acknowledged=len(acked),
            reconnected=f"{reconnected + bool(serve_ok)}/{len(workers) + 1}",
            unacknowledged_landed=sum(r.figures["statuses"].values()) - len(acked),
        )
        r.check(f"workers reconnected {reconnected}/{len(workers)}", reconnected == len(workers))
        r.check(f"serve reconnected (/health {health.status_code} {health.json().get('database')!r})", serve_ok)
        r.check("submits resumed after the restart", after is not None)
        r.check(f"acknowledged {len(acked)} == {n}", len(acked) == n)
    finally:
        await cl.close()
    return r


async def _ge(v, want) -> bool:
    return v >= want


# --- failCommand on update / find / insert at 5 % ---------------------------------------------
FAULT_CODE = 1  # InternalError: not a retryable code, so the driver does not hide it


async def fail_command(tmp, quick: bool, seed: int) -> Result:
    n = 200 if quick else 500
    p = 0.05
    r = Result(
        "fail_command",
        f"failCommand on update/find/insert at {p:.0%}, seed {seed}, {n} jobs",
        "stuck 0, lost 0, duplicates counted",
    )
    cl = Cluster(
        tmp,
        "fail_command",
        limit=16,
        env={"SWITCHYARD_RETRY_DELAY_SECONDS": "0.2", "SWITCHYARD_RETRY_MAX_DELAY_SECONDS": "2"},
    )
    rng = random.Random(seed)
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        for _ in range(3):
            cl.worker(concurrency=8)
        await cl.wait_workers(3)
        stop = asyncio.Event()
        stats = {"injected": 0, "ops": 0}
        kinds = ("insert", "query", "update")

        async def injector():
            """`failCommand` has no `activationProbability` on SecantusDB: only alwaysOn,
            {times} and {skip, times}. So each fault is armed as {skip: k, times: 1} with k
            drawn from a geometric distribution (p = 5 %, seeded), and the next one is armed
            once the server's opcounters show that k + 1 matching commands have passed."""
            o = await cl.opcounters()
            first = sum(o[k] for k in kinds)
            excess = 0
            while not stop.is_set():
                k = 0
                while rng.random() >= p:
                    k += 1
                k = max(0, k - excess)  # commands that passed while we re-armed count towards this gap
                await cl.fail_point(
                    {"skip": k, "times": 1}, {"failCommands": ["update", "find", "insert"], "errorCode": FAULT_CODE}
                )
                o = await cl.opcounters()
                base = sum(o[k] for k in kinds)
                while not stop.is_set():
                    o = await cl.opcounters()
                    if sum(o[k] for k in kinds) - base >= k + 1:
                        stats["injected"] += 1
                        excess = sum(o[k] for k in kinds) - base - (k + 1)
                        break
                    await asyncio.sleep(0.01)
            await cl.fail_point("off")
            o = await cl.opcounters()
            stats["ops"] = sum(o[k] for k in kinds) - first

        acked: list[str] = []
        submit_failures = 0
        todo = list(range(n))

        async def submitter(c):
            nonlocal submit_failures
            while todo:
                todo.pop()
                secs = 3.0 if rng.random() < 0.1 else round(rng.uniform(0.05, 1.0), 2)
                while True:
                    try:
                        resp = await c.post(
                            "/api/v1/jobs/submit",
                            json={"engine": ENGINE, "operation": "work", "parameters": {"seconds": secs}},
                        )
                        if resp.status_code == 201:
                            acked.append(resp.json()["id"])
                            break
                    except httpx.HTTPError:
                        pass
                    submit_failures += 1
                    await asyncio.sleep(0.05)

        inj = asyncio.create_task(injector())
        t0 = time.monotonic()
        async with httpx.AsyncClient(base_url=cl.api, headers=HEADERS, timeout=30) as c:
            await asyncio.gather(*(submitter(c) for _ in range(4)))
        # faults stay on until every job has finished, or 120 s
        settled_under_faults = await cl.wait_settled(120)
        stop.set()
        await inj
        faults_s = time.monotonic() - t0
        await common(cl, r, acked, settle=30)
        f = r.figures
        f.update(
            injected=stats["injected"],
            matching_commands=stats["ops"],
            fault_rate=f"{stats['injected'] / max(1, stats['ops']):.1%}",
            faults_on_s=round(faults_s, 1),
            submit_failures=submit_failures,
            settled_under_faults=settled_under_faults < 120,
            failed=f["statuses"].get("failed", 0),
        )
        r.check(f"acknowledged {len(acked)} == {n}", len(acked) == n)
        r.check(f"faults injected ({stats['injected']})", stats["injected"] > 0)
        failed = [d for d in await cl.docs(None, {"status": 1, "last_error": 1}) if d["status"] == "failed"]
        if failed:
            r.notes.append(
                "failed: "
                + ", ".join(
                    f"{c} x{k}" for c, k in Counter((d.get("last_error") or {}).get("code") for d in failed).items()
                )
            )
    finally:
        await cl.close()
    return r


# --- 20 workers x 10k jobs claim race --------------------------------------------------------
async def claim_race(tmp, quick: bool, seed: int) -> Result:
    import os

    procs, n = (6, 1000) if quick else (20, 10_000)
    procs, n = int(os.environ.get("CHAOS_RACE_PROCS", procs)), int(os.environ.get("CHAOS_RACE_JOBS", n))
    # The full race uses a 10 s lease, so that what it measures is claiming rather than
    # lease churn among 20 processes on 2 cores; the quick one keeps the 2 s lease.
    lease = os.environ.get("CHAOS_RACE_LEASE", str(LEASE) if quick else "10")
    r = Result("claim_race", f"{procs} workers x {n:,} jobs claim race (lease {lease} s)", "double claims 0; jobs/s")
    cl = Cluster(tmp, "claim_race", limit=100, env={"SWITCHYARD_LEASE_SECONDS": lease})
    try:
        cl.start_db()
        await cl.open_store()
        await cl.store.engines.set_paused(ENGINE, True)
        ids = await cl.insert(n, seconds=0)
        for _ in range(procs):
            cl.worker(concurrency=8)
        await cl.wait_workers(procs, timeout=120)
        if os.environ.get("CHAOS_RACE_NO_STREAMS"):  # experiment: refuse the workers' change streams
            await cl.fail_point("alwaysOn", {"failCommands": ["aggregate"], "errorCode": 1})
        ops0 = sum((await cl.opcounters()).values())
        top0 = await server_time(cl)
        t0 = time.monotonic()
        await cl.store.engines.set_paused(ENGINE, False)
        limit_s = 300
        waited = await cl.wait_settled(limit_s)
        elapsed = time.monotonic() - t0
        ops = sum((await cl.opcounters()).values()) - ops0
        top1 = await server_time(cl)
        spent = sorted(((top1[k] - top0.get(k, 0)) / 1e6, k) for k in top1)[::-1][:4]
        r.figures["server_s_by_op"] = {k: round(v, 1) for v, k in spent}  # where the server's time went
        done = ledger_ok(cl)
        if waited >= limit_s:  # what the queue looked like when we gave up
            e = await cl.store.engines.get(ENGINE)
            first = (
                await cl.store.jobs.col.find({"engine": ENGINE, "status": "queued"}, {"seq": 1})
                .sort("seq", 1)
                .limit(1)
                .to_list(1)
            )
            r.figures.update(
                completed_in_limit=done,
                cursor=e.get("cursor"),
                first_queued_seq=first[0]["seq"] if first else None,
                inflight_markers=len(e.get("inflight") or {}),
            )
            await cl.stop_all()  # stop the drain: what is left is not lost, only unfinished
        await common(cl, r, ids, settle=30 if waited < limit_s else 0)
        runs = ck.load_runs(cl.ledger)
        pids = Counter(x.pid for rs in runs.values() for x in rs)
        r.figures.update(
            jobs_per_s=round(done / elapsed, 1),
            drain_s=round(elapsed, 1),
            workers_used=len(pids),
            db_commands_per_job=round(ops / max(1, done), 1),
        )
        r.check(f"drained within {limit_s} s", waited < limit_s)
        r.check("every job completed", r.figures["statuses"].get("completed") == n)
        # Nothing is injected here, so a re-run needs a lease that ran out: a worker whose
        # beats could not land for a whole lease (the server stalled; docs/reliability.md).
        r.check(
            f"every re-run ({r.figures['reruns']}) follows an expired lease ({r.figures['rescues']} rescued)",
            r.figures["reruns"] <= r.figures["rescues"],
        )
    finally:
        await cl.close()
    return r


# --- random DAGs with random worker kills ----------------------------------------------------
def random_dags(n: int, seed: int) -> list[list[list[int]]]:
    """`n` DAGs from hypothesis (seeded): node i lists its parents, all < i."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    @st.composite
    def dag(draw):
        size = draw(st.integers(3, 16))
        return [
            draw(st.lists(st.integers(0, i - 1), max_size=min(i, 3), unique=True)) if i else [] for i in range(size)
        ]

    out = []

    @hseed(seed)
    @settings(max_examples=n * 3, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(dag())
    def collect(d):
        out.append(d)

    collect()
    big = sorted(out, key=len, reverse=True)  # hypothesis starts from tiny examples: prefer the richer ones
    rnd = random.Random(seed)
    picked = big[: n * 2]
    rnd.shuffle(picked)
    return picked[:n]


def with_map(shape: list[list[int]], rng: random.Random, seconds) -> tuple[dict, list[dict]]:
    """A map step over the `items` one random node emits (0 to 12 of them), and a fan-in
    after it: `({node index: extra parameters}, [the two extra steps])`."""
    src, width = rng.randrange(len(shape)), rng.choice([0, 1, 3, 8, 12])
    steps = [
        {
            "key": "m",
            "engine": ENGINE,
            "operation": "step",
            "depends_on": [f"s{src}"],
            "map_over": f"s{src}.items",
            "parameters": {"key": "m", "seconds": seconds()},
            "retry_config": {"max_retries": 10, "retry_delay_seconds": 0.2},
        },
        {
            "key": "after_m",
            "engine": ENGINE,
            "operation": "step",
            "depends_on": ["m"],
            "parameters": {"key": "after_m", "seconds": seconds()},
            "retry_config": {"max_retries": 10, "retry_delay_seconds": 0.2},
        },
    ]
    return {src: {"emit": width}}, steps


def with_signal(shape: list[list[int]], rng: random.Random, seconds) -> list[dict]:
    """A signal step after one random node, and a step after it: the signal is sent before
    the step is ready or after, at random (docs/waiting-steps.md)."""
    return [
        {"key": "sig", "type": "signal", "name": "go", "depends_on": [f"s{rng.randrange(len(shape))}"]},
        {
            "key": "after_sig",
            "engine": ENGINE,
            "operation": "step",
            "depends_on": ["sig"],
            "parameters": {"key": "after_sig", "seconds": seconds()},
            "retry_config": {"max_retries": 10, "retry_delay_seconds": 0.2},
        },
    ]


async def signal_go(c: httpx.AsyncClient, wf_id: str, n: int) -> None:
    resp = await c.post(f"/api/v1/jobs/workflows/{wf_id}/signals/go", json={"payload": {"workflow": n}})
    resp.raise_for_status()


async def dags(tmp, quick: bool, seed: int) -> Result:
    n_wf, kills = (10, 4) if quick else (25, 10)
    r = Result(
        "dags",
        f"{n_wf} random DAGs (hypothesis), each with a map step and a signal step, with {kills} random worker kills",
        "order violations 0, workflows stuck 0",
    )
    cl = Cluster(tmp, "dags", limit=12)
    rng = random.Random(seed)
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        workers = [cl.worker(concurrency=6) for _ in range(3)]
        await cl.wait_workers(3)
        shapes = random_dags(n_wf, seed)
        wf_ids, parents_of, late = [], {}, []
        async with httpx.AsyncClient(base_url=cl.api, headers=HEADERS, timeout=60) as c:
            for w, shape in enumerate(shapes):
                emits, extra = with_map(shape, rng, lambda: round(rng.uniform(0.3, 1.5), 2))
                extra += with_signal(shape, rng, lambda: round(rng.uniform(0.3, 1.5), 2))
                body = {
                    "name": f"dag{w}",
                    "jobs": [
                        {
                            "key": f"s{i}",
                            "engine": ENGINE,
                            "operation": "step",
                            "depends_on": [f"s{p}" for p in ps],
                            "parameters": {
                                "key": f"s{i}",
                                "seconds": round(rng.uniform(0.3, 1.5), 2),
                                **emits.get(i, {}),
                            },
                            "retry_config": {"max_retries": 10, "retry_delay_seconds": 0.2},
                        }
                        for i, ps in enumerate(shape)
                    ]
                    + extra,
                }
                resp = await c.post("/api/v1/jobs/workflows", json=body)
                resp.raise_for_status()
                wf = resp.json()
                wf_ids.append(wf["id"])
                for st in body["jobs"]:
                    parents_of[wf["jobs"][st["key"]]] = {p: wf["jobs"][p] for p in st["depends_on"]}
                if rng.random() < 0.5:  # early: kept on the workflow until its step is ready
                    await signal_go(c, wf["id"], w)
                else:
                    late.append(wf["id"])
        n_late = len(late)

        async def all_done():
            wfs = await cl.store.workflows.col.find({"_id": {"$in": wf_ids}}, {"status": 1}).to_list(None)
            return all(w["status"] in ("completed", "failed", "cancelled") for w in wfs)

        killed = 0
        while killed < kills and not await all_done():
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            if late:  # the late signals go out among the kills
                async with httpx.AsyncClient(base_url=cl.api, headers=HEADERS, timeout=60) as c:
                    wf_id = late.pop()
                    await signal_go(c, wf_id, wf_ids.index(wf_id))
            busy = await running_owners(cl)  # a worker that holds running steps, chosen at random
            alive = [w for w in workers if w.poll() is None and busy.get(w.pid)]
            if not alive:
                continue
            victim = rng.choice(sorted(alive, key=lambda w: w.pid))
            cl.signal(victim, signal.SIGKILL)
            victim.wait()
            killed += 1
            workers.remove(victim)
            workers.append(cl.worker(concurrency=6))

        async with httpx.AsyncClient(base_url=cl.api, headers=HEADERS, timeout=60) as c:
            for wf_id in late:
                await signal_go(c, wf_id, wf_ids.index(wf_id))
        late.clear()
        t0 = time.monotonic()
        await until(all_done, 180, 0.5)
        settle_s = time.monotonic() - t0
        steps = list(parents_of)
        out = await common(cl, r, steps, settle=10)
        runs, docs = out["runs"], {d["_id"]: d for d in out["docs"]}
        maps = [d for d in docs.values() if d.get("kind") in ("map", "map_join")]
        for d in docs.values():  # mapped children: they wait for what their map step waits for
            if d.get("map_of"):
                parents_of[d["_id"]] = dict(zip(d.get("depends_on") or [], d.get("parent_ids") or [], strict=True))
        violations, wrong_parents = 0, 0
        for job, rs in runs.items():
            want = parents_of.get(job, {})
            for x in rs:
                for pid in want.values():  # the parent's accepted run ended before this run began
                    end = ck.accepted_end(pid, runs, docs)
                    if end is None or end > x.start:
                        violations += 1
                if x.parents is not None and sorted(x.parents) != sorted(want):
                    wrong_parents += 1
        release = []  # how long a step waited after its last parent finished
        slowest = (0.0, "")
        for job, want in parents_of.items():
            ends = [ck.accepted_end(p, runs, docs) for p in want.values()]
            if want and runs.get(job) and None not in ends:
                release.append(runs[job][0].start - max(ends))
                slowest = max(slowest, (release[-1], f"{docs[job].get('step_key')} of {docs[job].get('workflow_id')}"))
        if slowest[1]:
            r.notes.append(f"slowest release: {slowest[1]}, {slowest[0]:.1f} s after its last parent")
        map_disorder = ck.map_order_violations(docs)
        signals = [d for d in docs.values() if d.get("kind") == "signal"]
        wrong_signal = sum(
            d.get("status") != "completed" or d.get("result") != {"workflow": wf_ids.index(d["workflow_id"])}
            for d in signals
        )
        for job, want in parents_of.items():  # and in the database: started after each parent completed
            d = docs.get(job) or {}
            begun = d.get("started_at") or (d.get("completed_at") if d.get("kind") in ck.FLOW_KINDS else None)
            for pid in want.values():
                p = docs.get(pid) or {}
                if begun and (not p.get("completed_at") or p["completed_at"] > begun):
                    violations += 1
        wfs = await cl.store.workflows.col.find({"_id": {"$in": wf_ids}}, {"status": 1}).to_list(None)
        wf_status = Counter(w["status"] for w in wfs)
        stuck = sum(v for k, v in wf_status.items() if k not in ("completed", "failed", "cancelled"))
        r.figures.update(
            workflows=len(wf_ids),
            steps=len(steps),
            order_violations=violations,
            parents_mismatch=wrong_parents,
            map_steps=len(maps),
            mapped_children=sum(len(d.get("map_children") or []) for d in maps),
            map_order_violations=map_disorder,
            signal_steps=len(signals),
            signals_sent_late=n_late,
            signals_wrong=wrong_signal,
            workflows_stuck=stuck,
            workflow_statuses=dict(wf_status),
            max_release_s=round(max(release), 1) if release else None,
            p50_release_s=round(statistics.median(release), 2) if release else None,
            kills=killed,
            settle_after_kills_s=round(settle_s, 1),
        )
        r.check(f"order violations {violations} == 0", violations == 0)
        r.check(f"steps that saw the wrong parents {wrong_parents} == 0", wrong_parents == 0)
        r.check(f"map steps whose results are not in item order {map_disorder} == 0", map_disorder == 0)
        r.check(f"signal steps not completed with their payload {wrong_signal} == 0", wrong_signal == 0)
        r.check(f"workflows stuck {stuck} == 0", stuck == 0)
        r.check("every workflow completed", wf_status.get("completed") == len(wf_ids))
    finally:
        await cl.close()
    return r


# --- a poison job ----------------------------------------------------------------------------
async def _poison_phase(tmp, name: str, n: int, poison: bool) -> tuple[Cluster, dict]:
    cl = Cluster(tmp, name, limit=16)
    cl.start_db()
    await cl.open_store()
    await cl.serve()
    workers = [cl.worker(concurrency=8) for _ in range(3)]
    await cl.wait_workers(3)
    await cl.store.engines.set_paused(ENGINE, True)
    ids = await cl.insert(n // 2, seconds=0.2)  # the poison sits in the middle of the queue
    # A short retry delay: with the default 60 s, exponential, the last back-off alone (up
    # to 240 s) outlasted the run, and the poison was still scheduled when it ended.
    pid = (
        (await cl.insert(1, operation="die", retry=RetryConfig(max_retries=3, retry_delay_seconds=0.5)))[0]
        if poison
        else None
    )
    ids += await cl.insert(n - n // 2, seconds=0.2)
    t0 = time.monotonic()
    since = cl.store.clock.now() - timedelta(minutes=5)
    await cl.store.engines.set_paused(ENGINE, False)
    deaths = 0
    others_done = None
    checked = 0.0
    while time.monotonic() - t0 < 300:
        for p in cl.reap():
            if p in workers:  # as `serve`'s supervisor does: restart, and hand the leases back at once
                deaths += 1
                workers.remove(p)
                workers.append(cl.worker(concurrency=8))
                await hand_back(cl.store, p.pid, since)
        if others_done is None and ledger_ok(cl) >= n:  # the ledger, not a count: see Cluster.wait_settled
            others_done = time.monotonic() - t0
        if others_done is not None and time.monotonic() - checked > 1:  # and the poison's last attempts
            checked = time.monotonic()
            if (await cl.store.engines.get(ENGINE)).get("queued", 0) <= 0 and not await cl.any_open():
                break
        await asyncio.sleep(0.1)
    return cl, {
        "ids": ids,
        "poison": pid,
        "deaths": deaths,
        "others_s": others_done,
        "per_s": n / others_done if others_done else 0,
    }


async def server_time(cl: Cluster) -> dict[str, int]:
    """Microseconds the server spent per `collection.operation` (its `top` command)."""
    out = {}
    for ns, entry in (await cl.store.client.admin.command("top"))["totals"].items():
        if ns.startswith(cl.db_name + ".") and isinstance(entry, dict):
            for op, v in entry.items():
                if isinstance(v, dict) and op != "total" and v.get("time"):
                    out[f"{ns.split('.', 1)[1]}.{op}"] = v["time"]
    return out


def ledger_ok(cl: Cluster) -> int:
    """Jobs whose handler has returned normally, from the ledger."""
    text = cl.ledger.read_text()
    return len({line.split('"', 4)[3] for line in text.splitlines() if '"outcome": "ok"' in line})


async def poison(tmp, quick: bool, seed: int) -> Result:
    n = 400 if quick else 800
    r = Result(
        "poison",
        f"a poison job (os._exit) among {n} jobs",
        "attempts = max, then failed; others' throughput barely changes",
    )
    # Alternate the runs (without, with, with, without): the machine is shared, and its
    # load drifts by more than the effect being measured.
    rates = {False: [], True: []}
    for i, with_poison in enumerate((False, True, True, False)[: 2 if quick else 4]):
        cl, run = await _poison_phase(tmp, f"poison{i}", n, with_poison)
        rates[with_poison].append(run["per_s"])
        if with_poison and i == 1:
            kept = (cl, run)
        else:
            await cl.close()
    cl, run = kept
    try:
        await common(cl, r, run["ids"] + [run["poison"]], settle=30)
        doc = await cl.store.jobs.get(run["poison"])
        without, with_ = statistics.mean(rates[False]), statistics.mean(rates[True])
        ratio = with_ / without if without else 0
        r.figures.update(
            poison_status=doc["status"],
            poison_attempts=doc["attempt"],
            max_attempts=4,
            worker_deaths=run["deaths"],
            jobs_per_s_without=round(without, 1),
            jobs_per_s_with=round(with_, 1),
            throughput_ratio=round(ratio, 2),
            runs_each=len(rates[True]),
        )
        r.check(f"poison failed after {doc['attempt']} = 4 attempts", doc["status"] == "failed" and doc["attempt"] == 4)
        r.check(
            f"worker deaths {run['deaths']} == 1 (the later attempts run quarantined, app/worker/quarantine.py)",
            run["deaths"] == 1,
        )
        r.check(
            f"other jobs all completed ({r.figures['statuses'].get('completed')})",
            r.figures["statuses"].get("completed") == n,
        )
        r.check(f"others' throughput ratio {ratio:.2f} >= 0.8", ratio >= 0.8)
    finally:
        await cl.close()
    return r


# --- 1k jobs failing at once -----------------------------------------------------------------
async def retry_storm(tmp, quick: bool, seed: int) -> Result:
    n = 300 if quick else 1000
    base = 4.0
    r = Result(
        "retry_storm",
        f"{n} jobs failing at once (retry base {base:g} s, equal jitter)",
        "peak retries per second; retry times spread by jitter",
    )
    cl = Cluster(tmp, "retry_storm", limit=64)
    try:
        cl.start_db()
        await cl.open_store()
        for _ in range(3):
            cl.worker(concurrency=24)
        await cl.serve()
        await cl.wait_workers(3)
        await cl.store.engines.set_paused(ENGINE, True)
        ids = await cl.insert(
            n,
            retry=RetryConfig(max_retries=3, retry_delay_seconds=base, max_delay_seconds=60),
            seconds=0,
            fail_before=2,
        )
        await cl.store.engines.set_paused(ENGINE, False)
        out = await common(cl, r, ids, settle=120)
        runs = out["runs"]
        fails = [x.end for rs in runs.values() for x in rs if x.attempt == 1 and x.end]
        retries = [x.start for rs in runs.values() for x in rs if x.attempt == 2]
        delays = []
        for d in out["docs"]:
            errs = [e for e in d.get("errors") or [] if e.get("attempt") == 1]
            if errs and d.get("run_at"):
                delays.append((d["run_at"] - errs[0]["at"]).total_seconds())
        peak = lambda ts: max(Counter(int(t) for t in ts).values()) if ts else 0  # noqa: E731
        sd = statistics.pstdev(delays) if delays else 0
        uniform_sd = (base / 2) / 12**0.5
        r.figures.update(
            failures_peak_per_s=peak(fails),
            retries_peak_per_s=peak(retries),
            fail_span_s=round(max(fails) - min(fails), 1) if fails else None,
            retry_span_s=round(max(retries) - min(retries), 1) if retries else None,
            delay_min_s=round(min(delays), 2) if delays else None,
            delay_max_s=round(max(delays), 2) if delays else None,
            delay_sd_s=round(sd, 2),
            delay_sd_uniform_s=round(uniform_sd, 2),
        )
        r.check(
            f"every job retried once and completed ({len(retries)})",
            len(retries) == n and r.figures["statuses"].get("completed") == n,
        )
        r.check(
            f"delays within [{base / 2:g}, {base:g}] s",
            bool(delays) and min(delays) >= base / 2 - 0.01 and max(delays) <= base + 0.01,
        )
        r.check(
            f"jitter spreads them: sd {sd:.2f} s >= half a uniform spread's {uniform_sd:.2f} s", sd >= uniform_sd / 2
        )
    finally:
        await cl.close()
    return r


# --- a worker clock 5 minutes ahead ------------------------------------------------------------
async def clock_skew(tmp, quick: bool, seed: int) -> Result:
    n = 24 if quick else 48
    skew = 300.0
    r = Result("clock_skew", "worker clocks 5 min ahead and 5 min behind (libfaketime)", "premature reclaims 0")
    cl = Cluster(tmp, "clock_skew", limit=12)
    try:
        from chaos_cluster import libfaketime

        if not libfaketime():
            r.check("libfaketime is installed (apt-get install faketime)", False)
            return r
        cl.start_db()
        await cl.open_store()
        await cl.serve()
        ahead = cl.worker(concurrency=4, skew=skew)
        behind = cl.worker(concurrency=4, skew=-skew)
        plain = cl.worker(concurrency=4)
        await cl.wait_workers(3)
        ids = await cl.insert(n, seconds=3)  # longer than the lease: heartbeats must renew it
        out = await common(cl, r, ids, settle=90)
        runs = out["runs"]
        seen = {}
        for rs in runs.values():
            for x in rs:
                if "t_local" in x.extra:
                    seen.setdefault(x.pid, round(x.extra["t_local"] - x.start))
        r.figures.update(
            premature_reclaims=r.figures["rescues"],
            skew_seen_s=sorted(set(seen.values())),
            ran_ahead=sum(1 for rs in runs.values() for x in rs if x.pid == ahead.pid),
            ran_behind=sum(1 for rs in runs.values() for x in rs if x.pid == behind.pid),
            ran_plain=sum(1 for rs in runs.values() for x in rs if x.pid == plain.pid),
        )
        r.check(f"premature reclaims {r.figures['rescues']} == 0", r.figures["rescues"] == 0)
        r.check(f"re-runs {r.figures['reruns']} == 0", r.figures["reruns"] == 0)
        r.check(
            f"the skew was in effect: ledger clocks {seen}",
            seen.get(ahead.pid) == skew and seen.get(behind.pid) == -skew,
        )
        r.check("the skewed workers ran jobs", r.figures["ran_ahead"] > 0 and r.figures["ran_behind"] > 0)
    finally:
        await cl.close()
    return r


# --- replies lost after the write landed (tests/faultproxy.py) -------------------------------
def is_claim(body: dict) -> bool:
    """A claim: an `update` on jobs whose filter has `status: queued` and which stamps a lease."""
    return any(
        isinstance(u.get("u"), dict)
        and u["q"].get("status") == "queued"
        and "lease_token" in (u["u"].get("$set") or {})
        for u in body.get("updates") or []
    )


def is_completion(body: dict) -> bool:
    """A completion: an `update` on jobs whose pipeline's first `$set` stamps `finished_token`."""
    return any(
        isinstance(u.get("u"), list) and u["u"] and "finished_token" in (u["u"][0].get("$set") or {})
        for u in body.get("updates") or []
    )


def is_exit(body: dict) -> bool:
    """Any other move out of running (fail, retry, stop): a `bulk_write` of updates that stamp
    `finished_token` with `$set`."""
    return any(
        isinstance(u.get("u"), dict) and "finished_token" in (u["u"].get("$set") or {})
        for u in body.get("updates") or []
    )


def kind_of(command: str, body: dict) -> str:
    if command == "update" and body.get("update") == "jobs":
        return (
            "claim"
            if is_claim(body)
            else "completion"
            if is_completion(body)
            else "exit"
            if is_exit(body)
            else "update"
        )
    if command == "insert" and body.get("insert") == "jobs":
        return "submit"
    return command


class HoldingProxy(FaultProxy):
    """tests/faultproxy.py's proxy, which can also hold a request back before passing it on:
    `hold(match, until, timeout)` delays the next request for which `match(command, body)` is
    true until the coroutine function `until()` returns true (or `timeout` seconds). Only that
    request's connection waits. It makes a race that the real system can lose be lost every
    time (`held`: command, seconds held, whether `until` was met)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self._holds: list[tuple] = []
        self.held: list[tuple[str, float, bool]] = []

    def hold(self, match, until, timeout: float = 10.0) -> None:
        self._holds.append((match, until, timeout))

    def clear(self) -> None:
        super().clear()
        self._holds.clear()

    async def _requests(self, reader, writer, doomed) -> None:
        await super()._requests(_HoldingReader(reader, self), writer, doomed)

    async def _maybe_hold(self, message: bytes) -> None:
        if not self._holds:
            return
        try:
            parsed = parse_command(message)
        except Exception:  # noqa: BLE001 - malformed: the proxy passes it on unmatched
            return
        if parsed is None:
            return
        command, body, _ = parsed
        for h in list(self._holds):
            try:
                matched = h[0](command, body)
            except Exception as e:  # noqa: BLE001 - a broken predicate is an error of the harness
                self.errors.append(e)
                continue
            if matched:
                self._holds.remove(h)
                t0, met = time.monotonic(), False
                while not (met := await h[1]()) and time.monotonic() - t0 < h[2]:
                    await asyncio.sleep(0.05)
                self.held.append((command, round(time.monotonic() - t0, 2), met))
                return


class _HoldingReader:
    """The client side of one proxied connection, for `FaultProxy._requests`: its
    `read_message` reads a header, then the rest, so a whole request is known at the second
    read, which returns once any hold on it is over."""

    def __init__(self, reader: asyncio.StreamReader, proxy: HoldingProxy) -> None:
        self.reader, self.proxy, self.header = reader, proxy, None

    async def readexactly(self, n: int) -> bytes:
        data = await self.reader.readexactly(n)
        if self.header is None:
            self.header = data
            return data
        message, self.header = self.header + data, None
        await self.proxy._maybe_hold(message)
        return data


async def lost_reply(tmp, quick: bool, seed: int) -> Result:
    """Workers (and a submitter in this process) talk to the database through a lost-reply
    proxy in this process: the chosen command reaches the server and lands, then the proxy
    closes the connection instead of passing the reply on. No job may be lost, charged an
    attempt it never ran, left running, or miscounted. Every job has max_retries 0, so a
    charge for a run that never started would leave it failed.

    1. While N pre-inserted jobs drain (one in ten fails on purpose, so its exit is a
       `bulk_write`), replies are lost one at a time: claims, completions, failure exits, and
       the inserts of some submits made through the proxy (the driver retries an insert, and
       the server answers the retry without applying it again).
    2. Then a few submits lose their insert's reply twice (the driver's retry's too), and the
       submitter's read-back is held until a worker has claimed the job: the race a real
       submitter can lose when its reconnection is slower than a claim."""
    from pymongo.errors import PyMongoError

    from app.domain.models import JobSpec
    from app.settings import Settings
    from app.store import connect

    n, n_sub, n_race = (150, 30, 3) if quick else (400, 60, 3)
    want = {"claim": 5, "completion": 5, "exit": 3}
    sub_drops = set(range(3, n_sub, 6 if quick else 10))  # these submits lose their insert's reply once
    r = Result(
        "lost_reply",
        f"replies lost after the write landed: {want['claim']} claims, {want['completion']} completions, "
        f"{want['exit']} failure exits, {len(sub_drops) + n_race} submits; {n + n_sub + n_race} jobs with max_retries 0",
        "lost 0, charged without a run 0, stranded 0, counters at rest",
    )
    rng = random.Random(seed)
    # The staged race needs a worker to find the job by its own look while the submitter's
    # read-back is held: no wake comes until that read-back lets the marker clear, and an
    # idle worker watching its wake stream looks only every SAFETY_INTERVAL (30 s default).
    # A lost reply closes its connection, and the driver then holds every other operation of
    # that process about 0.5 s while it looks at the server again (its monitor's least
    # interval; measured 0.50-0.51 s, docs/reliability.md). Under the harness's 2 s lease a few
    # of those in a row lapsed a worker's registration, and its started jobs were charged and
    # failed: a stall past the lease, which `sigstop` tests. 6 s keeps this scenario to lost
    # replies (the production default is 30 s).
    cl = Cluster(
        tmp,
        "lost_reply",
        limit=12,
        env={"SWITCHYARD_SAFETY_INTERVAL_SECONDS": "0.5", "SWITCHYARD_LEASE_SECONDS": str(3 * LEASE)},
    )
    retry = RetryConfig(max_retries=0)
    proxy = sub = None
    try:
        cl.start_db()
        await cl.open_store()
        await cl.serve()  # straight to the server, as is the harness's own store
        proxy = HoldingProxy(cl.app_url())
        await proxy.start()
        workers = [cl.worker(concurrency=4, MONGODB_URL=proxy.url) for _ in range(3)]
        pids = {w.pid for w in workers}

        async def registered():
            return pids <= {w["pid"] for w in await cl.store.workers.list("alive")}

        r.check("3 workers registered through the proxy", await until(registered, 60, 0.2))
        await cl.store.engines.set_paused(ENGINE, True)
        ids: list[str] = []
        failing: list[str] = []  # one job in ten raises on its only attempt: its exit is a `bulk_write`
        for _ in range(n // 10):
            ids += await cl.insert(9, retry=retry, seconds=round(rng.uniform(0.1, 0.5), 2))
            failing += await cl.insert(1, retry=retry, seconds=0.1, fail_before=2)
        ids += failing
        s = Settings(queue_limits={ENGINE: cl.limit}, lease_seconds=LEASE, log_level="WARNING")
        sub = connect(
            proxy.url.replace(f"appName={APP_NAME}", "appName=chaos-submitter"),
            s,
            db_name=cl.db_name,
            secantus=quirks.is_secantus(cl.base_url()),
        )
        await sub.start()

        stop = asyncio.Event()

        async def dripper(kind: str, match) -> None:
            """One reply of `kind` lost at a time, the next armed a moment after it fired."""
            for _ in range(want[kind]):
                rule = proxy.drop_reply_to("update", "jobs", where=match)
                while not rule.fired and not stop.is_set():
                    await asyncio.sleep(0.01)
                if stop.is_set():
                    return
                await asyncio.sleep(rng.uniform(0.2, 0.5))

        acked: dict[str, str] = {}
        refused: dict[str, str] = {}
        tagged: dict[str, str] = {}  # tag -> job id, as the proxy saw the insert

        def insert_of(tag: str):
            def match(body: dict) -> bool:
                for d in body.get("documents") or []:
                    if (d.get("parameters") or {}).get("tag") == tag:
                        tagged[tag] = d["_id"]
                        return True
                return False

            return match

        async def submit(tag: str) -> None:
            spec = JobSpec(
                engine=ENGINE,
                operation="work",
                retry_config=retry,
                parameters={"seconds": round(rng.uniform(0.1, 0.5), 2), "tag": tag},
            )
            try:
                job, _ = await sub.lifecycle.submit(spec, owner="chaos")
                acked[tag] = job["_id"]
            except PyMongoError as exc:  # not acknowledged: it must exist once or not at all
                refused[tag] = repr(exc)

        # 1. the drain
        drips = [
            asyncio.create_task(dripper(kind, match))
            for kind, match in (("claim", is_claim), ("completion", is_completion), ("exit", is_exit))
        ]
        await cl.store.engines.set_paused(ENGINE, False)
        for i in range(n_sub):
            if i in sub_drops:
                proxy.drop_reply_to("insert", "jobs", where=insert_of(f"s{i}"))
            await submit(f"s{i}")
            await asyncio.sleep(0.1)
        drained = await cl.wait_settled(120)
        stop.set()
        await asyncio.gather(*drips)
        proxy.clear()

        # 2. the insert and its retry lost, and a worker claims the job before the read-back
        race: list[dict] = []
        for k in range(n_race):
            tag = f"r{k}"
            before = (await cl.store.engines.get(ENGINE)).get("queued", 0)
            proxy.drop_reply_to("insert", "jobs", times=2, where=insert_of(tag))

            def read_back(command: str, body: dict, tag=tag) -> bool:
                """The submitter's look for what landed: the first `find` naming the job by id
                (the job is not claimed yet, so no worker reads it by id)."""
                filt = body.get("filter") or {}
                return (
                    command == "find"
                    and body.get("find") == "jobs"
                    and "lease_token" not in filt
                    and tagged.get(tag) in ((filt.get("_id") or {}).get("$in") or [])
                )

            async def claimed(tag=tag) -> bool:
                d = await cl.store.jobs.col.find_one({"_id": tagged.get(tag)}, {"status": 1})
                return d is not None and d["status"] != "queued"

            proxy.hold(read_back, claimed, timeout=10)
            held = len(proxy.held)
            await submit(tag)

            async def finished(tag=tag) -> bool:
                d = await cl.store.jobs.col.find_one({"_id": tagged.get(tag)}, {"status": 1})
                return d is None or d["status"] in ("completed", "failed")

            await until(finished, 30, 0.1)
            after = (await cl.store.engines.get(ENGINE)).get("queued", 0)
            d = await cl.store.jobs.col.find_one({"_id": tagged.get(tag)}, {"status": 1, "attempt": 1}) or {}
            race.append(
                {
                    "tag": tag,
                    "id": tagged.get(tag),
                    "acknowledged": tag in acked,
                    "status": d.get("status"),
                    "held_s": proxy.held[held][1] if len(proxy.held) > held else None,
                    "claimed_first": len(proxy.held) > held and proxy.held[held][2],
                    "queued_counter": [before, after],
                }
            )
        proxy.clear()
        dropped = Counter(kind_of(c, b) for c, b in proxy.dropped)
        out = await common(cl, r, ids + list(acked.values()), settle=30)
        runs, docs = out["runs"], out["docs"]

        # charged without a run: an attempt counted beyond the handler runs the ledger saw
        charged = [
            d["_id"]
            for d in docs
            if d.get("attempt", 0) > len(runs.get(d["_id"], [])) or (d["status"] == "failed" and not runs.get(d["_id"]))
        ]
        stranded = [d["_id"] for d in docs if d["status"] == "running"]
        e = await cl.store.engines.get(ENGINE)
        queued_jobs = await cl.store.jobs.col.count_documents({"engine": ENGINE, "status": "queued"})
        holds = sum((e.get("holds") or {}).values())
        counters_ok = e.get("queued", 0) == queued_jobs and e.get("running", 0) == holds == 0
        # submits: an acknowledged one exists exactly once, an unacknowledged one once or not at all
        by_tag = Counter(
            (d.get("parameters") or {}).get("tag")
            for d in await cl.store.jobs.col.find(
                {"engine": ENGINE, "parameters.tag": {"$exists": True}}, {"parameters.tag": 1}
            ).to_list(None)
        )
        acked_once = sum(by_tag[t] == 1 for t in acked)
        refused_landed = sum(by_tag[t] for t in refused)
        # a claim whose reply was lost: the jobs it took ran under its token
        claim_tokens = {
            u["u"]["$set"]["lease_token"] for c, b in proxy.dropped if kind_of(c, b) == "claim" for u in b["updates"]
        }
        claim_runs = sum(1 for rs in runs.values() for x in rs if x.token in claim_tokens)
        # a completion whose reply was lost: it stands (finished_token is its token), nothing re-ran
        by_id = {d["_id"]: d for d in docs}
        completed_by_lost = [
            (i, u["q"]["lease_token"])
            for c, b in proxy.dropped
            if kind_of(c, b) == "completion"
            for u in b["updates"]
            for i in u["q"]["_id"]["$in"]
        ]
        kept = sum(
            1
            for i, tok in completed_by_lost
            if by_id.get(i, {}).get("status") == "completed"
            and by_id[i].get("finished_token") == tok
            and len(runs.get(i, [])) == 1
        )
        # a failure exit whose reply was lost: failed once, one error recorded (the driver retries
        # a `bulk_write`; a retry applied twice would push the error twice)
        failed = {d["_id"] for d in docs if d["status"] == "failed"}
        failed_once = sum(
            1
            for i in failing
            if by_id.get(i, {}).get("status") == "failed"
            and len(by_id[i].get("errors") or []) == 1
            and by_id[i].get("attempt") == 1
            and len(runs.get(i, [])) == 1
        )
        exit_ids = {u["q"]["_id"] for c, b in proxy.dropped if kind_of(c, b) == "exit" for u in b["updates"]}
        corrections = sum(p.read_text(errors="replace").count("counter_corrected") for p in cl.dir.glob("*.log"))
        claimed_first = sum(x["claimed_first"] for x in race)
        read_backs = sum(x["held_s"] is not None for x in race)
        f = r.figures
        f.update(
            charged_without_run=len(charged),
            stranded=len(stranded),
            counters_at_rest=f"queued {e.get('queued', 0)}/{queued_jobs} jobs, running {e.get('running', 0)}, holds {holds}",
            dropped_claims=dropped["claim"],
            dropped_completions=dropped["completion"],
            dropped_exits=dropped["exit"],
            dropped_submits=dropped["submit"],
            dropped_other=sum(v for k, v in dropped.items() if k not in ("claim", "completion", "exit", "submit")),
            failed_once=f"{failed_once}/{len(failing)}",
            lost_claim_jobs_run=claim_runs,
            lost_completions_kept=f"{kept}/{len(completed_by_lost)}",
            submits_acknowledged=f"{len(acked)}/{n_sub + n_race}",
            submits_refused=len(refused),
            refused_landed=refused_landed,
            race_claimed_before_read_back=f"{claimed_first}/{n_race}",
            race=race,
            drain_s=round(drained, 1),
            counter_corrections=corrections,
            failed=f["statuses"].get("failed", 0),
            completed=f["statuses"].get("completed", 0),
            proxy_connections=proxy.accepted,
        )
        r.check(f"charged without a run {len(charged)} == 0", not charged)
        r.check(f"stranded (still running after settling) {len(stranded)} == 0", not stranded)
        r.check(f"counters at rest: {f['counters_at_rest']}", counters_ok)
        for kind in ("claim", "completion", "exit", "submit"):
            r.check(f"{kind} replies lost {dropped[kind]} >= 1", dropped[kind] >= 1)
        r.check(f"the jobs of lost claims ran under their token ({claim_runs})", claim_runs >= 1)
        r.check(
            f"completions whose reply was lost stand, none re-run ({f['lost_completions_kept']})",
            completed_by_lost and kept == len(completed_by_lost),
        )
        r.check(
            f"the failing jobs failed once, with one error each ({failed_once}/{len(failing)}), and no other job failed",
            failed_once == len(failing) and failed == set(failing),
        )
        r.check(
            f"the jobs of lost failure exits are among them ({len(exit_ids & set(failing))}/{len(exit_ids)})",
            exit_ids <= set(failing),
        )
        r.check(f"acknowledged submits exist exactly once ({acked_once}/{len(acked)})", acked_once == len(acked))
        r.check(
            f"unacknowledged submits exist at most once ({refused_landed} landed of {len(refused)})",
            all(by_tag[t] <= 1 for t in refused),
        )
        r.check(
            f"the race was staged: every read-back ({read_backs}) waited until a worker had claimed the job "
            f"({claimed_first})",
            claimed_first == read_backs,
        )
        r.check(f"fault proxy errors {len(proxy.errors)} == 0", not proxy.errors)
        if charged:
            r.notes.append(f"charged without a run: {charged[:10]}")
        if stranded:
            r.notes.append(f"stranded: {stranded[:10]}")
        if refused:
            r.notes.append(f"unacknowledged submits: {refused}")
        for x in race:
            runs_of = [(round(y.start, 2), y.token[:8], y.outcome) for y in runs.get(x["id"], [])]
            r.notes.append(f"race {x}; ledger runs {runs_of}")
    finally:
        if sub is not None:
            await sub.close()
        await cl.close()  # the workers stop through the proxy, so it goes last
        if proxy is not None:
            try:
                await proxy.stop()
            except RuntimeError as exc:  # errors of its pumps or rules (none expected: checked above)
                r.notes.append(f"proxy stop: {exc!r}")
    return r


SCENARIOS = {
    "sigkill": sigkill,
    "sigterm": sigterm,
    "long_job": long_job,
    "sigstop": sigstop,
    "db_restart": db_restart,
    "fail_command": fail_command,
    "claim_race": claim_race,
    "dags": dags,
    "poison": poison,
    "retry_storm": retry_storm,
    "clock_skew": clock_skew,
    "lost_reply": lost_reply,
}
