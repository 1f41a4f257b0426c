"""Switchyard benchmarks: issue 22's rows side by side with Celery and Agenda 6, printed as
one table (scripts/bench_report.py). See docs/benchmarks.md for recorded runs.

Everything runs on one machine against SecantusDB started here with `--sync-on-commit` (the
embedded mode's durability setting), a fresh server for each phase, with real `switchyard
serve` / `switchyard worker` processes (scripts/bench_switchyard.py, bench_phases.py,
bench_floor.py), Celery (bench_celery.py) and Agenda under Node (bench_agenda.py). This
module owns the order of the phases, their sizes (`--quick`) and the progress it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_agenda  # noqa: E402
import bench_floor  # noqa: E402
import bench_phases as phases  # noqa: E402
import bench_report  # noqa: E402
import bench_switchyard as sy  # noqa: E402

from app import embedded  # noqa: E402


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = ""
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}"


@asynccontextmanager
async def fresh_server(tmp: Path, name: str, keep: bool = False):
    """Each measurement gets a newly started server: SecantusDB's writes slow down several
    fold after some ten thousand writes since its start, which would skew later phases."""
    path = tmp / name
    server = embedded.spawn(str(path))
    try:
        yield server.url
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short smoke run (a few minutes)")
    ap.add_argument("--no-celery", action="store_true", help="skip the Celery baseline")
    ap.add_argument("--no-agenda", action="store_true", help="skip the Agenda baseline")
    ap.add_argument(
        "--extra", action="store_true", help="also the earlier rows: limits, claims, workflow submit, map, WebSocket"
    )
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    q = args.quick
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    out: dict = {"machine": machine(), "quick": q}
    print(f"machine: {out['machine']}\nserver: SecantusDB --sync-on-commit, started afresh for each phase", flush=True)
    started = time.monotonic()
    agenda_off = None if args.no_agenda else bench_agenda.available()
    if agenda_off:
        print(f"  Agenda skipped: {agenda_off}", flush=True)

    def phase(name: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {name}", flush=True)

    def show(key, value):
        out[key] = value
        print(f"  {key}: {value}", flush=True)

    try:
        await measure(args, q, tmp, phase, show, skip_agenda=args.no_agenda or agenda_off is not None)
        if args.extra:
            await measure_extra(q, tmp, phase, show)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    phase("done")
    print()
    print(bench_report.render(bench_report.rows(out)))
    if args.extra:
        print()
        report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))


async def measure(args, q: bool, tmp: Path, phase, show, skip_agenda: bool) -> None:
    """Issue 22's measures, each phase on a fresh server."""
    # The machine is shared and noisy, so the raw limit, the drain as deployed and the same
    # with the relay off are measured in alternating rounds and compared by median.
    n = 300 if q else 1000
    raws, deployed, quiet, sunk = [], [], [], []
    for i in range(1 if q else 3):
        phase(f"round {i + 1}: raw write limit")
        async with fresh_server(tmp, f"raw{i}") as url:
            raws.append(await sy.raw_write_limit(url, 2 if q else 5))
        phase(f"round {i + 1}: drain as deployed (serve + 2 workers x 32, {n} jobs)")
        async with fresh_server(tmp, f"deployed{i}") as url:
            deployed.append(await sy.drain(url, n, concurrency=32, serve=True))
        phase(f"round {i + 1}: the same with the relay off")
        async with fresh_server(tmp, f"norelay{i}") as url:
            quiet.append(await sy.drain(url, n, concurrency=32, serve=False))
        phase(f"round {i + 1}: the relay's floor (relay off + a bare change stream writing the events)")
        async with fresh_server(tmp, f"relayfloor{i}") as url:
            sunk.append(await sy.drain(url, n, concurrency=32, serve=False, sink=True))
        print(
            f"  round {i + 1}: raw {raws[-1]:.0f}/s, deployed {deployed[-1]['jobs_per_s']:.0f} jobs/s, "
            f"relay off {quiet[-1]['jobs_per_s']:.0f} jobs/s, relay's floor {sunk[-1]['jobs_per_s']:.0f} jobs/s",
            flush=True,
        )
    show("raw_runs", [round(r, 1) for r in raws])
    show("raw_writes_per_s", statistics.median(raws))
    show("relay_ratios", [round(d["jobs_per_s"] / r["jobs_per_s"], 3) for d, r in zip(deployed, quiet, strict=True)])
    show("relay_floor_ratios", [round(f["jobs_per_s"] / r["jobs_per_s"], 3) for f, r in zip(sunk, quiet, strict=True)])
    for key, runs in (("deployed_drain", deployed), ("no_relay_drain", quiet), ("relay_floor_drain", sunk)):
        runs.sort(key=lambda d: d["jobs_per_s"])
        show(f"{key}_runs", [round(d["jobs_per_s"], 1) for d in runs])
        show(key, runs[len(runs) // 2])
    secs = 3 if q else 10
    phase("library single enqueue (AsyncProducer.enqueue)")
    async with fresh_server(tmp, "library") as url:
        show("library_enqueue", await phases.library_enqueue_rate(url, secs))
    phase("the enqueue's floor: one insert_one, and the engine's findAndModify + the insert")
    async with fresh_server(tmp, "enqueue_floor") as url:
        show("enqueue_floor", await bench_floor.enqueue_floor(url, secs))
    phase("REST single-job submit, no consumers")
    async with fresh_server(tmp, "rest") as url:  # no consumers, as for Celery's delay()
        async with sy.serving(url, "bench_rest", workers=0) as base:
            show("rest_submit_per_s", await asyncio.to_thread(sy.rest_submit_rate, base, secs))
    phase("the floor: a no-op FastAPI POST + one insert_one")
    async with fresh_server(tmp, "floor") as url:
        show("floor_per_s", await asyncio.to_thread(phases.floor_rate, url, secs))
    phase("REST batches of 1,000")
    async with fresh_server(tmp, "batch") as url:
        async with sy.serving(url, "bench_batch", workers=0) as base:
            show("rest_batch", await asyncio.to_thread(phases.rest_batch_rate, base, 3 if q else 8))
    phase("the batch's floor: insert_many of 1,000 job documents")
    async with fresh_server(tmp, "batch_floor") as url:
        show("batch_floor", await bench_floor.batch_floor(url, 3 if q else 8))
    phase("REST single-job submit while 2 workers run every job")
    async with fresh_server(tmp, "rest_busy") as url:
        async with sy.serving(url, "bench_rest_busy", workers=2) as base:
            show("rest_submit_consumed_per_s", await asyncio.to_thread(sy.rest_submit_rate, base, secs))
    phase("the floor of submitting while draining: a bare insert_one loop, idle and during a drain")
    async with fresh_server(tmp, "busy_floor") as url:
        show("busy_floor", await bench_floor.insert_while_draining(url, secs, 1500 if q else 4000))
    phase("submit-to-start on an idle system")
    async with fresh_server(tmp, "latency") as url:
        async with sy.serving(url, "bench_latency", workers=2) as base:
            await asyncio.sleep(1)
            show("latency", await asyncio.to_thread(sy.submit_to_start, base, 20 if q else 100))
    spans = []
    for i in range(1 if q else 3):  # noisy too: the median of three, the order rotated
        span = {"steps": 1000}
        order = sy.MAKESPAN_PARTS[i:] + sy.MAKESPAN_PARTS[:i]
        for part in order:
            phase(f"1,000-step fan-out/fan-in makespan, run {i + 1}: {part}")
            async with fresh_server(tmp, f"makespan{i}{part}") as url:
                span[f"{part}_s"] = await sy.makespan_part(url, part, 1000)
        spans.append(span)
    spans.sort(key=lambda m: m["workflow_s"] / m["floor_s"])
    show("makespan_vs_floor", [round(m["workflow_s"] / m["floor_s"], 2) for m in spans])
    show("makespan", spans[len(spans) // 2])
    phase("commands to the database at rest (serve, worker)")
    async with fresh_server(tmp, "at_rest") as url:
        show("at_rest", await phases.commands_at_rest(url, settle=5, seconds=10 if q else 30))
    if not args.no_celery:
        import bench_celery

        phase(f"Celery: drain {n} tasks")
        async with fresh_server(tmp, "celery_drain") as url:
            show("celery_drain", await asyncio.to_thread(bench_celery.drain, url, n))
        phase("Celery: delay() rate")
        async with fresh_server(tmp, "celery_delay") as url:
            show("celery_delay", await asyncio.to_thread(bench_celery.delay_rate, url, secs))
        phase("Celery: delay() to task start, polling every 50 ms")
        async with fresh_server(tmp, "celery_latency") as url:
            show("celery_latency", await asyncio.to_thread(bench_celery.submit_to_start, url, 20 if q else 100, 0.05))
    if not skip_agenda:
        runs = []
        for every in bench_agenda.PROCESS_EVERY_MS[: 1 if q else None]:
            phase(f"Agenda 6: drain {n} jobs (2 Node processes x 32, processEvery {every} ms)")
            async with fresh_server(tmp, f"agenda_drain{every}") as url:
                runs.append(
                    await asyncio.to_thread(bench_agenda.drain, url, n, process_every_ms=every, cap=60 if q else 150)
                )
            print(f"  processEvery {every} ms: {runs[-1]}", flush=True)
        show("agenda_drain_runs", {r["process_every_ms"]: round(r["jobs_per_s"], 1) for r in runs})
        show("agenda_drain", max(runs, key=lambda r: r["jobs_per_s"]))  # its best setting
        phase("Agenda 6: agenda.now() rate")
        async with fresh_server(tmp, "agenda_now") as url:
            show("agenda_now", await asyncio.to_thread(bench_agenda.enqueue_rate, url, secs))


async def measure_extra(q: bool, tmp: Path, phase, show) -> None:
    """The earlier rows (issues before 22), printed in a second table."""
    drains, limited = [], []
    for i in range(1 if q else 3):
        phase(f"extra round {i + 1}: bare drain and the same with limits set")
        async with fresh_server(tmp, f"drain{i}") as url:
            drains.append(await sy.drain(url, 300 if q else 2000))
        async with fresh_server(tmp, f"limited{i}") as url:
            limited.append(await sy.drain(url, 300 if q else 2000, limited=True))
    drains.sort(key=lambda d: d["jobs_per_s"])
    show("drain_runs", [round(d["jobs_per_s"], 1) for d in drains])
    show("drain", drains[len(drains) // 2])
    limited.sort(key=lambda d: d["jobs_per_s"])
    show("limited_drain_runs", [round(d["jobs_per_s"], 1) for d in limited])
    show("limited_drain", limited[len(limited) // 2])
    claims = []
    for depth in (1000, 10_000) if q else (1000, 100_000):
        phase(f"extra: claims at depth {depth:,}")
        name = f"claim{depth}"
        async with fresh_server(tmp, name, keep=True) as url:
            await sy.fill_queue(url, "bench_claim", depth)
        async with fresh_server(tmp, name) as url:  # the same data, a fresh process
            claims.append(await sy.claim_cost(url, "bench_claim", claims=300 if q else 1000))
    show("claim", claims)
    phase("extra: workflow submit")
    async with fresh_server(tmp, "wfsubmit") as url:
        async with sy.serving(url, "bench_wf") as base:
            show("workflow_submit", await asyncio.to_thread(sy.workflow_submit, base, 1000 if q else 10_000))
    phase("extra: a 1,000-item map against a 1,000-step submit")
    async with fresh_server(tmp, "mapexpand") as url:
        # A 1,000-item map making its children against a 1,000-step submit, on one server,
        # alternated and compared by median (the machine is noisy).
        submits, maps = [], []
        async with sy.serving(url, "bench_wf1k") as base:
            for i in range(1 if q else 3):
                submits.append(await asyncio.to_thread(sy.workflow_submit, base, 1000))
                maps.append(await sy.map_expand(url, f"bench_map{i}", 1000))
        show("workflow_submit_1k_runs", [round(w["seconds"], 2) for w in submits])
        show("map_expand_runs", [round(m["seconds"], 2) for m in maps])
        show("workflow_submit_1k", {"steps": 1000, "seconds": statistics.median(w["seconds"] for w in submits)})
        show("map_expand", {"items": 1000, "seconds": statistics.median(m["seconds"] for m in maps)})
    phase("extra: WebSocket fan-out")
    async with fresh_server(tmp, "live") as url:
        import bench_live

        async with sy.serving(url, "bench_live", workers=0) as base:
            show("ws_fanout", await bench_live.ws_fanout(url, base, clients=100, seconds=5 if q else 15))


def report(o: dict) -> None:
    """The earlier rows (`--extra`)."""
    d, c = o["drain"], o["claim"]
    cd = o.get("celery_drain")
    half_raw = o["raw_writes_per_s"] / 2

    def runs(key: str, fmt: str = ".0f") -> str:  # the single runs behind a median, if several
        values = o.get(key) or []
        return f" (median of {len(values)}: {', '.join(format(v, fmt) for v in values)})" if len(values) > 1 else ""

    rows = [("raw write limit (update_one by _id, 8 clients)", f"{o['raw_writes_per_s']:.0f}/s" + runs("raw_runs"), "")]
    rows.append(
        (
            f"drain {d['jobs']} no-op jobs, 2 worker processes x 64, no serve",
            f"{d['jobs_per_s']:.0f} jobs/s" + runs("drain_runs"),
            f">= {half_raw:.0f} (raw/2)" + (f"; >= {5 * cd['jobs_per_s']:.0f} (5x Celery)" if cd else ""),
        )
    )
    if "limited_drain" in o:
        ld = o["limited_drain"]
        rows.append(
            (
                f"  the same with rate, per-key rate and per-key concurrency set, not binding ({sy.ACCOUNTS} keys)",
                f"{ld['jobs_per_s']:.0f} jobs/s ({ld['jobs_per_s'] / d['jobs_per_s']:.2f}x)"
                + runs("limited_drain_runs"),
                ">= 0.8x the drain",
            )
        )
    for row in c:
        rows.append(
            (
                f"claim at depth {row['depth']:,}, 8 claimers x 16",
                f"{row['jobs_per_s']:.0f} jobs/s (p50 call {row['p50_call_ms']:.0f} ms)",
                "",
            )
        )
    rows.append(("claim rate, deepest / shallowest", f"{c[-1]['jobs_per_s'] / c[0]['jobs_per_s']:.0%}", ">= 50%"))
    w = o["workflow_submit"]
    rows.append((f"submit a {w['steps']:,}-step workflow (REST)", f"{w['seconds']:.2f} s", "<= 3 s"))
    if "map_expand" in o:
        w1, mx = o["workflow_submit_1k"], o["map_expand"]
        rows.append(
            (
                f"submit a {w1['steps']:,}-step workflow (REST), same server as the map",
                f"{w1['seconds']:.2f} s" + runs("workflow_submit_1k_runs", ".2f"),
                "",
            )
        )
        rows.append(
            (
                f"a {mx['items']:,}-item map makes its children",
                f"{mx['seconds']:.2f} s ({mx['seconds'] / w1['seconds']:.2f}x the submit)"
                + runs("map_expand_runs", ".2f"),
                f"<= {2 * w1['seconds']:.2f} s (2x the 1,000-step submit)",
            )
        )
    if "ws_fanout" in o:
        f = o["ws_fanout"]
        rows.append(
            (
                f"WebSocket: {f['clients']} clients subscribed to all, {f['transitions_per_s']:.0f} transitions/s",
                f"{f['delivered_per_s']:.0f} events/s delivered ({f['delivered']}/{f['expected']}), "
                f"p50 {f['p50_ms']:.0f} ms, p99 {f['p99_ms']:.0f} ms",
                "p99 <= 250 ms",
            )
        )
    width = max(len(r[0]) for r in rows)
    vw = max(len(r[1]) for r in rows)
    print()
    print(f"{'measure':<{width}}  {'result':<{vw}}  target")
    print(f"{'-' * width}  {'-' * vw}  ------")
    for name, val, target in rows:
        print(f"{name:<{width}}  {val:<{vw}}  {target}")


if __name__ == "__main__":
    asyncio.run(main())
