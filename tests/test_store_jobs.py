"""Every transition of `app/store/jobs.py` and its guard, against the real server."""

from __future__ import annotations

import pytest

from app.domain.states import JobStatus
from app.errors import InvalidTransition, LeaseLost, NotFound
from app.store.lifecycle import Exit


async def test_submit_queues_with_a_sequence_number(jobs, store):
    a = await jobs.queued()
    b = await jobs.queued()
    assert a["status"] == b["status"] == "queued"
    assert b["seq"] == a["seq"] + 1
    await store.numbers.flush()
    engine = await store.engines.get("testing")
    assert engine["queued"] == 2
    assert engine["limit"] == 2  # not in seed 001's queues: general's limit


async def test_seed_default_limits_apply_to_known_engines(jobs, store):
    await jobs.queued(engine="video_pipeline", operation="x")
    assert (await store.engines.get("video_pipeline"))["limit"] == 1


async def test_delay_makes_a_scheduled_job(jobs):
    job = await jobs.scheduled(delay_seconds=60)
    assert job["status"] == "scheduled" and "seq" not in job


async def test_complete_requires_the_current_lease(jobs, store):
    job = await jobs.running()
    with pytest.raises(LeaseLost):
        await store.lifecycle.complete(job, "not-the-token", {"x": 1}, 1)
    await store.lifecycle.complete(job, job["lease_token"], {"x": 1}, 7)
    done = await store.jobs.get(job["_id"])
    assert done["status"] == "completed" and done["result"] == {"x": 1} and done["execution_time_ms"] == 7
    assert "lease_token" not in done
    # the same lease completing again is an idempotent no-op: nothing is overwritten
    await store.lifecycle.complete(job, job["lease_token"], {"x": 2}, 1)
    assert (await store.jobs.get(job["_id"]))["result"] == {"x": 1}


async def test_complete_many_reports_exactly_the_lost_leases(jobs, store):
    a, b, c = [await jobs.running() for _ in range(3)]
    await store.lifecycle.complete(b, b["lease_token"], {"first": True}, 1)  # b finished by its lease
    lost = await store.lifecycle.leave_running(
        [
            Exit(a, a["lease_token"], "complete", result=1, execution_ms=1),
            Exit(b, "stale", "complete", result=2, execution_ms=1),
            Exit(c, c["lease_token"], "complete", result=3, execution_ms=1),
        ]
    )
    assert lost == {b["_id"]}
    assert [(await store.jobs.get(j["_id"]))["result"] for j in (a, b, c)] == [1, {"first": True}, 3]


async def test_fail_records_the_error_history(jobs, store):
    job = await jobs.failed()
    assert job["status"] == "failed"
    assert job["last_error"]["code"] == "boom" and len(job["errors"]) == 1


async def test_retry_schedules_and_promote_requeues(jobs, store):
    job = await jobs.running()
    err = {"code": "E", "message": "m", "attempt": 1, "at": None, "worker": None}
    await store.lifecycle.backoff(job, job["lease_token"], err, 0.0)
    mid = await store.jobs.get(job["_id"])
    assert mid["status"] == "scheduled" and mid["retry_count"] == 1
    assert await store.lifecycle.promote_due(store.clock.now()) == 1
    again = await store.jobs.get(job["_id"])
    assert again["status"] == "queued" and again["seq"] > job["seq"]
    with pytest.raises(LeaseLost):
        await store.lifecycle.heartbeat(job["_id"], job["lease_token"])


async def test_release_does_not_count_the_attempt(jobs, store):
    job = await jobs.running()
    assert job["attempt"] == 1
    await store.lifecycle.release(job, job["lease_token"])
    back = await store.jobs.get(job["_id"])
    assert back["status"] == "queued" and back["attempt"] == 0


async def test_progress_and_heartbeat_are_fenced(jobs, store):
    job = await jobs.running()
    await store.lifecycle.progress(job["_id"], job["lease_token"], 40, "half", {"done": 4})
    assert (await store.jobs.get(job["_id"]))["progress"] == {"percent": 40, "stage": "half", "data": {"done": 4}}
    await store.lifecycle.heartbeat(job["_id"], job["lease_token"])
    with pytest.raises(LeaseLost):
        await store.lifecycle.progress(job["_id"], "stale", 50, None, {})


async def test_cancel_waiting_jobs_at_once(jobs, store):
    q = await jobs.queued()
    s = await jobs.scheduled()
    for j in (q, s):
        out = await store.lifecycle.cancel(j["_id"])
        assert out["status"] == "cancelled"
    await store.numbers.flush()
    assert (await store.engines.get("testing"))["queued"] == 0
    with pytest.raises(InvalidTransition):
        await store.lifecycle.cancel(q["_id"])


async def test_cancel_running_only_requests(jobs, store):
    job = await jobs.running()
    out = await store.lifecycle.cancel(job["_id"])
    assert out["status"] == "running" and out["cancel_requested"] is True
    assert await store.jobs.cancel_requested([job["_id"]]) == {job["_id"]}
    await store.lifecycle.stop(job, job["lease_token"], "stopped")
    assert (await store.jobs.get(job["_id"]))["status"] == JobStatus.CANCELLED


async def test_unknown_job_is_not_found(store):
    with pytest.raises(NotFound):
        await store.jobs.get("0" * 24)


async def test_dedupe_returns_the_live_job(jobs, store):
    a, created_a = await store.lifecycle.submit(jobs.spec(dedupe_key="k1"), owner="admin")
    b, created_b = await store.lifecycle.submit(jobs.spec(dedupe_key="k1"), owner="admin")
    assert created_a and not created_b and a["_id"] == b["_id"]
    await store.lifecycle.cancel(a["_id"])  # once it is no longer live, the key is free again
    c, created_c = await store.lifecycle.submit(jobs.spec(dedupe_key="k1"), owner="admin")
    assert created_c and c["_id"] != a["_id"]


async def test_queue_position_is_exact_near_the_head_and_a_lower_bound_far_back(jobs, store, monkeypatch):
    monkeypatch.setattr("app.store.seqblocks.BLOCK_MAX", 1)  # dense seqs: `cap` counts numbers, not jobs
    urgent = [await jobs.queued(priority=1) for _ in range(3)]
    line = [await jobs.queued() for _ in range(12)]
    assert await store.jobs.queue_position(line[4]) == (3 + 4, False)
    assert await store.jobs.queue_position(urgent[2]) == (2, False)
    # each count looks at most `cap` numbers back: beyond that, a lower bound
    assert await store.jobs.queue_position(line[11], cap=5) == (5, True)
    assert await store.jobs.queue_position(line[11], cap=12) == (3 + 9, True)
    assert await store.jobs.queue_position(line[11], cap=15) == (3 + 11, False)
    running = await jobs.running()
    assert await store.jobs.queue_position(running) is None


async def test_a_backoff_counts_from_the_failure_not_from_when_its_batch_is_written(jobs, store):
    """Exits are batched: under a retry storm a batch may be written seconds after the
    failure, and the delay must not grow by that wait."""
    import asyncio

    from app.domain.retry import RetryConfig
    from app.worker import outcome as oc

    job = await jobs.running(retry_config=RetryConfig(max_retries=2, retry_delay_seconds=4, max_delay_seconds=60))
    e = oc.exit_for(store, job, job["lease_token"], oc.Failure("Boom", "x"), 5, "w1")
    await asyncio.sleep(2.1)  # the batch is written later than the longest delay allows
    assert await store.lifecycle.leave_running([e]) == set()
    doc = await store.jobs.get(job["_id"])
    delay = (doc["run_at"] - doc["errors"][0]["at"]).total_seconds()
    assert doc["status"] == "scheduled" and 2 - 0.01 <= delay <= 4 + 0.01


async def test_a_tenants_list_merges_its_statuses_newest_first_page_by_page(store, jobs):
    made = []
    for make in (jobs.queued, jobs.completed, jobs.failed, jobs.cancelled, jobs.queued, jobs.scheduled, jobs.completed):
        made.append((await make(owner="tlist/u"))["_id"])
    await jobs.queued(owner="tother/u")  # another tenant's: never in this list
    seen, cursor = [], None
    while True:
        page, cursor = await store.jobs.list(tenant="tlist", after=cursor, limit=3)
        seen += [d["_id"] for d in page]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)
    every, _ = await store.jobs.list(limit=500)  # the deployment admin's: every tenant's, merged
    assert [d["_id"] for d in every] == sorted([d["_id"] for d in every], reverse=True)
    assert set(made) <= {d["_id"] for d in every}
