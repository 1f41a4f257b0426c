"""`/metrics` after real jobs: counters, histograms and queue gauges match what happened,
and a separate `switchyard worker --metrics-port` serves its own counters."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.domain.retry import RetryConfig
from app.embedded import free_port
from app.worker.maintenance import Maintenance
from tests.helpers import eventually, wait_status
from tests.procs import ROOT, env_for, stop


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


async def scrape(api) -> dict:
    r = await api.get("/metrics", headers={"Authorization": ""})  # no token needed
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def val(m: dict, name: str, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


async def submit(api, **body) -> str:
    r = await api.post("/api/v1/jobs/submit", json={"engine": "testing", **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def test_job_counters_and_histograms_follow_real_jobs(api, worker, store):
    before = await scrape(api)
    ok = [await submit(api, operation="ok") for _ in range(3)]
    flaky = await submit(
        api,
        operation="flaky",
        parameters={"succeed_on": 2},
        retry_config={"max_retries": 3, "retry_delay_seconds": 0.01},
    )
    bad = await submit(api, operation="permanent")
    later = await submit(api, operation="ok", delay_seconds=3600)
    r = await api.post(
        "/api/v1/jobs/workflows",
        json={
            "name": "pair",
            "jobs": [
                {"key": "a", "engine": "testing", "operation": "ok"},
                {"key": "b", "engine": "testing", "operation": "ok", "depends_on": ["a"]},
            ],
        },
    )
    assert r.status_code == 201
    steps = list(r.json()["jobs"].values())
    assert (await api.post(f"/api/v1/jobs/{later}/cancel")).json()["status"] == "cancelled"
    for jid in ok + [flaky] + steps:
        await wait_status(store, jid, "completed")
    await wait_status(store, bad, "failed")
    await asyncio.sleep(0.1)  # the last outcome's counter moves right after its write

    after = await scrape(api)
    assert delta(before, after, "switchyard_jobs_created_total", engine="testing") == 8
    assert delta(before, after, "switchyard_jobs_finished_total", engine="testing", status="completed") == 6
    assert delta(before, after, "switchyard_jobs_finished_total", engine="testing", status="failed") == 1
    assert delta(before, after, "switchyard_jobs_finished_total", engine="testing", status="cancelled") == 1
    assert delta(before, after, "switchyard_retries_total", engine="testing") == 1
    # one observation per job finished on a worker (6 completed + 1 failed), none for the cancel
    assert delta(before, after, "switchyard_job_duration_seconds_count", engine="testing") == 7
    assert delta(before, after, "switchyard_job_duration_seconds_bucket", engine="testing", le="+Inf") == 7
    assert delta(before, after, "switchyard_job_duration_seconds_sum", engine="testing") >= 0
    # a claim may carry several jobs, but step b can only be claimed after step a finished
    assert delta(before, after, "switchyard_claim_latency_seconds_count") >= 2
    assert delta(before, after, "switchyard_claim_latency_seconds_sum") > 0
    assert delta(before, after, "switchyard_rescues_total") == 0


async def test_every_metric_family_is_exposed(api):
    r = await api.get("/metrics", headers={"Authorization": ""})
    families = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    expected = {
        "switchyard_jobs_created": "counter",
        "switchyard_jobs_finished": "counter",
        "switchyard_job_duration_seconds": "histogram",
        "switchyard_claim_latency_seconds": "histogram",
        "switchyard_retries": "counter",
        "switchyard_rescues": "counter",
        "switchyard_notifications_sent": "counter",
        "switchyard_email_failures": "counter",
        "switchyard_queue_depth": "gauge",
        "switchyard_jobs_running": "gauge",
    }
    assert {k: families.get(k) for k in expected} == expected
    assert "/metrics" in (await api.get("/openapi.json")).json()["paths"]


async def test_queue_gauges_are_read_from_the_engines(api, worker, store):
    await store.engines.set_limit("testing", 2)
    ids = [await submit(api, operation="wait_cancel") for _ in range(3)]
    await submit(api, operation="ok", delay_seconds=3600)  # scheduled: not in the queue depth
    await api.post("/api/v1/jobs/queue/ledger/pause")

    async def settled():
        e = await store.engines.get("testing")
        return e.get("running") == 2 and e.get("queued") == 1

    await eventually(settled)
    m = await scrape(api)
    assert val(m, "switchyard_queue_depth", engine="testing") == 1
    assert val(m, "switchyard_jobs_running", engine="testing") == 2
    assert val(m, "switchyard_queue_limit", engine="testing") == 2
    assert val(m, "switchyard_queue_paused", engine="testing") == 0
    assert val(m, "switchyard_queue_paused", engine="ledger") == 1
    # the same numbers as the queue endpoints report
    health = (await api.get("/health")).json()["queues"]["testing"]
    assert (health["waiting"], health["active"]) == (1, 2)
    # every engine of this database, and only those (the gauges come from one read)
    engines = {e["_id"] for e in await store.engines.list()}
    assert {dict(k[1])["engine"] for k in m if k[0] == "switchyard_queue_depth"} == engines
    for jid in ids:
        await api.post(f"/api/v1/jobs/{jid}/cancel")
    for jid in ids:
        await wait_status(store, jid, "cancelled")


async def test_rescues_are_counted(api, store, jobs, settings):
    before = await scrape(api)
    requeued = await jobs.running(worker="wgone")
    doomed = await jobs.running(worker="wgone", retry_config=RetryConfig(max_retries=0))
    await asyncio.sleep(settings.lease_seconds + 0.3)  # both leases expire; nobody renews them
    assert await Maintenance(store, settings).rescue() == 2
    assert (await store.jobs.get(requeued["_id"]))["status"] == "queued"
    assert (await store.jobs.get(doomed["_id"]))["status"] == "failed"
    after = await scrape(api)
    assert delta(before, after, "switchyard_rescues_total") == 2
    assert delta(before, after, "switchyard_jobs_finished_total", engine=doomed["engine"], status="failed") == 1
    assert delta(before, after, "switchyard_jobs_finished_total", engine=requeued["engine"], status="failed") == 0


async def test_a_worker_process_serves_its_own_metrics(db_url, store, jobs):
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        "--concurrency",
        "4",
        "--handlers",
        "tests.support_handlers",
        "--metrics-port",
        str(port),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env_for(db_url, store.db.name, SWITCHYARD_METRICS_ADDR="127.0.0.1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        ids = [(await jobs.queued(operation="ok"))["_id"] for _ in range(3)]
        bad = (await jobs.queued(operation="permanent"))["_id"]
        for jid in ids:
            await wait_status(store, jid, "completed", timeout=60)
        await wait_status(store, bad, "failed", timeout=30)

        async def scraped():
            try:
                async with httpx.AsyncClient() as c:
                    m = parse((await c.get(f"http://127.0.0.1:{port}/metrics")).text)
            except httpx.HTTPError:
                return None
            done = val(m, "switchyard_jobs_finished_total", engine="testing", status="completed")
            return (
                m
                if done == 3 and val(m, "switchyard_jobs_finished_total", engine="testing", status="failed") == 1
                else None
            )

        m = await eventually(scraped, timeout=10)
        # a fresh process: its counters are exactly this test's jobs
        assert val(m, "switchyard_job_duration_seconds_count", engine="testing") == 4
        assert val(m, "switchyard_claim_latency_seconds_count") >= 1
        assert val(m, "switchyard_jobs_created_total", engine="testing") == 0  # created through the store, not the API
        assert any(name == "process_cpu_seconds_total" for name, _ in m)
    finally:
        assert stop(proc) == 0, proc.stderr.read().decode()[-2000:]
