"""Retention against the real server: which transitions stamp `expires_at`, the cleaner run
with an explicit `now` (no waiting for clocks or sweepers), workflows deleted together with
their steps, and the cleaner's races and crashes (docs/retention.md)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from app.domain.workflow import StepSpec, WorkflowSpec
from app.worker.maintenance import Maintenance
from tests.conftest import make_settings
from tests.helpers import eventually

KEEP, KEEP_FAILED, EVENTS_KEEP = 100, 1000, 3600


@pytest.fixture
def settings():
    return make_settings(
        retention_completed_seconds=KEEP, retention_failed_seconds=KEEP_FAILED, event_retention_seconds=EVENTS_KEEP
    )


def later(doc, seconds):
    return doc["completed_at"] + timedelta(seconds=seconds)


async def exists(store, job_id) -> bool:
    return await store.jobs.col.find_one({"_id": job_id}, {"_id": 1}) is not None


async def test_terminal_transitions_stamp_expiry_by_status(store, jobs):
    done = await jobs.completed()
    failed = await jobs.failed()
    cancelled = await jobs.cancelled()
    assert done["expires_at"] == later(done, KEEP)
    assert failed["expires_at"] == later(failed, KEEP_FAILED)  # the dead letter is kept longer
    assert cancelled["expires_at"] == later(cancelled, KEEP)
    running = await jobs.running()
    await store.lifecycle.stop(running, running["lease_token"], "stopped")
    stopped = await store.jobs.get(running["_id"])
    assert stopped["status"] == "cancelled" and stopped["expires_at"] == later(stopped, KEEP)
    for doc in (await jobs.queued(), await jobs.scheduled(), await jobs.running()):
        assert "expires_at" not in await store.jobs.get(doc["_id"])  # live jobs never expire


async def test_rescuer_failing_a_job_stamps_the_dead_letter_expiry(store, jobs):
    job = await jobs.running(retry_config={"max_retries": 0})
    now = job["lease_expires_at"] + timedelta(seconds=1)
    [found] = [j for j in await store.jobs.expired_leases(now) if j["_id"] == job["_id"]]
    assert await store.lifecycle.rescue(found, now) == "failed"
    doc = await store.jobs.get(job["_id"])
    assert doc["status"] == "failed" and doc["expires_at"] == later(doc, KEEP_FAILED)


async def test_index_is_sparse_not_ttl_and_bounds_the_cleaner(store, jobs):
    info = (await store.jobs.col.index_information())["retention"]
    assert info["key"] == [("expires_at", 1)] and info["sparse"] is True
    assert "expireAfterSeconds" not in info  # SecantusDB's TTL sweep scans the collection
    for _ in range(3):
        await jobs.completed()
    for _ in range(20):
        await jobs.queued()
    now = store.clock.now()
    plan = await store.jobs.col.database.command(
        {
            "explain": {
                "find": "jobs",
                "filter": {"expires_at": {"$gte": now - timedelta(days=1), "$lt": now + timedelta(days=1)}},
                "limit": 500,
            },
            "verbosity": "executionStats",
        }
    )
    assert "retention" in str(plan["queryPlanner"]["winningPlan"])
    assert plan["executionStats"]["totalDocsExamined"] == 3  # the expiring ones only, never the queue


async def test_cleaner_deletes_what_expired_and_keeps_the_dead_letter(store, jobs):
    done = await jobs.completed(dedupe_key="nightly")
    cancelled = await jobs.cancelled()
    failed = await jobs.failed()
    waiting = await jobs.queued()
    assert await store.job_retention.expire_jobs(later(done, KEEP - 1)) == 0
    assert await store.job_retention.expire_jobs(later(failed, KEEP + 1)) == 2
    assert not await exists(store, done["_id"]) and not await exists(store, cancelled["_id"])
    assert await exists(store, failed["_id"]) and await exists(store, waiting["_id"])
    assert await store.lifecycle.dedupe.col.find_one({"_id": "admin:nightly"}) is None  # no stale dedupe entry left
    assert await store.job_retention.expire_jobs(later(failed, KEEP_FAILED + 1)) == 1
    assert not await exists(store, failed["_id"]) and await exists(store, waiting["_id"])


async def test_cleaner_works_in_batches(store, jobs):
    ids = [(await jobs.completed())["_id"] for _ in range(7)]
    far = store.clock.now() + timedelta(seconds=KEEP + 60)
    assert await store.job_retention.expire_jobs(far, batch=3, budget_seconds=0) == 0  # no time: the next pass
    assert await store.job_retention.expire_jobs(far, batch=3) == 7  # a backlog larger than a batch drains
    assert [i for i in ids if await exists(store, i)] == []


async def test_a_retried_job_leaves_retention_until_it_finishes_again(store, jobs):
    failed = await jobs.failed()
    retried = await store.job_admin.retry_job(failed["_id"])
    assert retried["status"] == "queued" and "expires_at" not in retried
    assert await store.job_retention.expire_jobs(store.clock.now() + timedelta(seconds=KEEP_FAILED * 2)) == 0
    assert await exists(store, failed["_id"])


async def test_maintenance_runs_the_cleaner(db_url):
    from app.store import connect

    settings = make_settings(retention_completed_seconds=0)
    st = connect(db_url, settings, db_name=f"t_{uuid.uuid4().hex[:12]}")
    await st.start()
    try:
        from tests.factories import JobFactory

        job = await JobFactory(st).completed()
        assert await Maintenance(st, settings).expire() == 1
        assert await st.jobs.col.find_one({"_id": job["_id"]}) is None
    finally:
        await st.client.drop_database(st.db.name)
        await st.close()


# --- workflows -------------------------------------------------------------------------
def spec(fail: bool = False) -> WorkflowSpec:
    return WorkflowSpec(
        name="wf",
        jobs=[
            StepSpec(key="a", engine="testing", operation="ok"),
            StepSpec(key="b", engine="testing", operation="permanent" if fail else "ok", depends_on=["a"]),
            StepSpec(key="c", engine="testing", operation="ok", depends_on=["b"]),
        ],
    )


async def finished(store, worker, fail=False) -> dict:
    wf = await store.workflows.create(spec(fail), owner="admin")

    async def done():
        doc = await store.workflows.get(wf["_id"], steps=True)
        return doc if doc["status"] != "running" else None

    return await eventually(done, timeout=30)


def step_ids(wf: dict) -> list[str]:
    return [s["job_id"] for s in wf["steps"].values()]


async def test_workflow_and_its_steps_go_together(store, worker):
    wf = await finished(store, worker)
    assert wf["status"] == "completed"
    for i in step_ids(wf):  # steps never expire on their own
        assert "expires_at" not in await store.jobs.get(i)
    assert await store.job_retention.expire_jobs(later(wf, KEEP_FAILED * 10)) == 0
    assert await store.workflow_retention.expire_workflows(later(wf, KEEP - 1)) == 0
    assert await store.workflow_retention.expire_workflows(later(wf, KEEP + 1)) == 1
    assert await store.workflows.col.find_one({"_id": wf["_id"]}) is None
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 0
    assert await store.workflows.graphs.count_documents({}) == 0
    assert await store.workflow_retention.tombstones.count_documents({}) == 0


async def test_failed_workflow_is_kept_as_long_as_the_dead_letter(store, worker):
    wf = await finished(store, worker, fail=True)
    assert wf["status"] == "failed"
    assert await store.workflow_retention.expire_workflows(later(wf, KEEP + 1)) == 0
    assert await store.workflow_retention.expire_workflows(later(wf, KEEP_FAILED + 1)) == 1
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 0


async def test_a_workflow_retried_while_being_expired_is_kept(store, worker):
    wf = await finished(store, worker, fail=True)
    read = await store.workflows.col.find_one({"_id": wf["_id"]}, {"completed_at": 1, "created_at": 1})
    await store.flow.retry(wf["_id"])  # an operator wins the race
    assert await store.workflow_retention._delete_workflow(read, "failed", later(wf, KEEP_FAILED + 1)) == 0
    assert (await store.workflows.get(wf["_id"]))["status"] in ("running", "failed")
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 3
    assert await store.workflow_retention.tombstones.count_documents({}) == 0


async def test_a_cleaner_that_died_half_way_is_finished_by_the_next(store, worker, monkeypatch):
    wf = await finished(store, worker)
    now = later(wf, KEEP + 1)

    async def crash(*_):
        raise RuntimeError("process died")

    monkeypatch.setattr(store.workflow_retention, "_delete_steps", crash)
    with pytest.raises(RuntimeError):
        await store.workflow_retention.expire_workflows(now)
    monkeypatch.undo()
    assert await store.workflows.col.find_one({"_id": wf["_id"]}) is None
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 3  # orphans, for now
    await store.workflow_retention.expire_workflows(now)
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 0
    assert await store.workflow_retention.tombstones.count_documents({}) == 0


async def test_a_stale_tombstone_of_a_live_workflow_is_dropped(store, worker):
    """A cleaner died between writing its tombstone and its guarded delete."""
    wf = await finished(store, worker)
    now = later(wf, KEEP + 1)
    await store.workflow_retention.tombstones.insert_one({"_id": wf["_id"], "job_ids": step_ids(wf), "at": now})
    assert await store.workflow_retention.expire_workflows(now) == 0  # young: maybe in progress elsewhere
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 3
    assert await store.workflow_retention.expire_workflows(now + timedelta(minutes=6)) == 1
    assert await store.jobs.col.count_documents({"_id": {"$in": step_ids(wf)}}) == 0
    assert await store.workflow_retention.tombstones.count_documents({}) == 0


# --- events ----------------------------------------------------------------------------
async def log_events(store, ages: list[float], floor: int = 0, page: int = 1) -> list[dict]:
    """Append events whose `at` lies `age` seconds before now, in this order, `page` to an
    append (and so to a page of the log)."""
    now = store.clock.now()
    evs = [
        {"token": uuid.uuid4().hex, "type": "job.completed", "kind": "job", "at": now - timedelta(seconds=a)}
        for a in ages
    ]
    for i in range(0, len(evs), page):
        await store.events.append(evs[i : i + page], floor=floor)
    return evs


async def seqs(store) -> list[int]:
    return [e["_id"] for e in await store.events.since(0, limit=100_000)]


async def test_a_page_goes_whole_once_its_newest_event_is_past_retention(store):
    old = 2 * EVENTS_KEEP
    evs = await log_events(store, [old, old, 10, old, old, old], page=3)
    assert await store.events.col.count_documents({}) == 2
    assert await store.event_retention.expire_events(store.clock.now()) == 0  # the first page holds a young one
    assert await seqs(store) == [e["_id"] for e in evs]
    assert await store.event_retention.expire_events(store.clock.now() + timedelta(seconds=EVENTS_KEEP)) == 6
    assert await seqs(store) == []
    assert await store.event_retention.head() == evs[-1]["_id"] + 1


async def test_events_older_than_their_retention_go_oldest_first(store):
    old, new = 2 * EVENTS_KEEP, EVENTS_KEEP / 2
    evs = await log_events(store, [old] * 5 + [new] * 3)
    assert await store.event_retention.expire_events(store.clock.now()) == 5
    assert await seqs(store) == [e["_id"] for e in evs[5:]]
    assert await store.event_retention.expire_events(store.clock.now()) == 0  # from its head mark on
    head = await store.db["meta"].find_one({"_id": "events_head"})
    assert head["seq"] == evs[5]["_id"]


async def test_an_event_out_of_order_waits_for_the_ones_before_it(store):
    evs = await log_events(store, [2 * EVENTS_KEEP, 10, 2 * EVENTS_KEEP])
    assert await store.event_retention.expire_events(store.clock.now()) == 1
    assert await seqs(store) == [e["_id"] for e in evs[1:]]
    later = store.clock.now() + timedelta(seconds=EVENTS_KEEP)
    assert await store.event_retention.expire_events(later) == 2


async def test_a_backlog_goes_window_by_window(store):
    evs = await log_events(store, [2 * EVENTS_KEEP] * 250 + [1])
    assert await store.event_retention.expire_events(store.clock.now(), batch=64) == 250
    assert await seqs(store) == [evs[-1]["_id"]]


async def test_a_head_mark_behind_the_log_finds_the_first_event(store):
    """The log may start far past the mark: seeded from a floor, or a mark lost after a delete."""
    evs = await log_events(store, [2 * EVENTS_KEEP] * 3 + [1], floor=50_000)
    assert evs[0]["_id"] == 50_001
    assert await store.event_retention.expire_events(store.clock.now(), batch=64) == 3
    assert await seqs(store) == [evs[-1]["_id"]]


async def test_an_undated_event_goes_with_the_next_dated_one(store):
    evs = await log_events(store, [2 * EVENTS_KEEP] * 3 + [1])
    await store.events.col.update_one({"_id": evs[1]["_id"]}, {"$unset": {"at": ""}})
    await store.events.col.update_one({"_id": evs[3]["_id"]}, {"$set": {"at": "not a date"}})
    assert await store.event_retention.expire_events(store.clock.now()) == 3
    assert await seqs(store) == [evs[3]["_id"]]  # last, undated: it waits for a dated one after it


async def test_a_head_mark_ahead_of_the_log_is_brought_back_to_it(store):
    """A mark restored from elsewhere, or written by another deployment on this database."""
    evs = await log_events(store, [2 * EVENTS_KEEP] * 3 + [1])
    await store.db["meta"].replace_one({"_id": "events_head"}, {"seq": 90_000}, upsert=True)
    assert await store.event_retention.expire_events(store.clock.now()) == 3
    assert await store.event_retention.head() == evs[-1]["_id"]


async def test_a_log_emptied_by_expiry_numbers_on_after_what_it_held(store):
    evs = await log_events(store, [2 * EVENTS_KEEP] * 3)
    assert await store.event_retention.expire_events(store.clock.now()) == 3
    assert await seqs(store) == []
    store.events.top = 0  # another process, which never appended: only the database says
    assert await store.events.last_seq() >= evs[-1]["_id"]


async def test_a_failing_part_of_retention_leaves_the_others_running(store, monkeypatch):
    async def broken(now):
        raise RuntimeError("the database blinked")

    monkeypatch.setattr(store.job_retention, "expire_jobs", broken)
    await log_events(store, [2 * EVENTS_KEEP] * 2)
    assert await Maintenance(store, store.settings).expire() == 2
