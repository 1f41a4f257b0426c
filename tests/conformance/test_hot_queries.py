"""`explain` of every hot query: an index scan with bounded keys examined, no collection
scan, no in-memory sort, on whatever server `MONGODB_URL` names (tests/conformance/plans.py
reads classic, SBE and mongos plan shapes)."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest

from app.store import quirks
from app.store.eventpages import MAX
from tests.conformance.plans import assert_index_bounded


@pytest.fixture
def bounded(db_url):
    """`assert_index_bounded` with this server's known explain quirks allowed (none on MongoDB)."""
    allow = quirks.PLAN_ALLOWANCES if quirks.is_secantus(db_url) else frozenset()

    def check(plan, index=None, max_keys=None, unlimited_keys=None):
        """`unlimited_keys`: the keys a server that applies a sort's limit only after the
        scan examines (all those within the index bounds); MongoDB stops at the limit."""
        if unlimited_keys is not None and "limit_after_scan" in allow:
            max_keys = unlimited_keys
        assert_index_bounded(plan, index, max_keys, allow=allow)

    return check


async def explain(store, collection: str, filt: dict, sort: dict | None = None, limit: int = 0) -> dict:
    cmd = {"find": collection, "filter": filt}
    if sort:
        cmd["sort"] = sort
    if limit:
        cmd["limit"] = limit
    return await store.db.command({"explain": cmd, "verbosity": "executionStats"})


async def many(store, jobs, n: int = 300, **kw) -> None:
    spec = jobs.spec(**kw)
    await store.lifecycle.insert_many([store.lifecycle.build(spec, "admin") for _ in range(n)])


async def test_the_claim_window(store, jobs, bounded):
    await many(store, jobs)
    plan = await explain(
        store,
        "jobs",
        {"engine": "testing", "status": "queued", "priority": 5, "tenant": "default", "seq": {"$gte": 100, "$lt": 164}},
        {"seq": 1},
        16,
    )
    bounded(plan, {"engine": 1, "status": 1, "priority": 1, "tenant": 1, "seq": 1}, max_keys=65)


async def test_the_claim_window_of_a_limit_keys_lane(store, jobs, bounded):
    # A lane is a seq range of its band (app/domain/limitkeys.py): the same index, the same bounds.
    await store.engines.set_limits("testing", key="params.account")
    for account in ("a", "b"):
        await many(store, jobs, 150, parameters={"account": account})
    engine = await store.engines.get("testing")
    lane = engine["lanes"][next(iter(engine["lanes"]))]["lane"]
    lo = lane << 40
    plan = await explain(
        store,
        "jobs",
        {
            "engine": "testing",
            "status": "queued",
            "priority": 5,
            "tenant": "default",
            "seq": {"$gte": lo, "$lt": lo + 64},
        },
        {"seq": 1},
        16,
    )
    bounded(plan, {"engine": 1, "status": 1, "priority": 1, "tenant": 1, "seq": 1}, max_keys=65)


async def test_running_jobs_of_an_engine_for_the_rescuer(store, jobs, bounded):
    await many(store, jobs)
    await store.claimer.claim(await store.engines.get("testing"), "w1", 1)
    plan = await explain(store, "jobs", {"engine": "testing", "status": "running"})
    bounded(plan, max_keys=2)


async def test_the_promoter(store, jobs, bounded):
    await many(store, jobs)
    for _ in range(3):
        await jobs.scheduled()
    now = store.clock.now()
    plan = await explain(
        store,
        "jobs",
        {"status": "scheduled", "run_at": {"$gte": now - timedelta(days=1), "$lte": now + timedelta(days=1)}},
        limit=500,
    )
    bounded(plan, max_keys=4)


async def test_retention_and_the_unsettled_marks(store, jobs, bounded):
    await many(store, jobs)
    for _ in range(3):
        await jobs.completed()
    now = store.clock.now()
    plan = await explain(
        store, "jobs", {"expires_at": {"$gte": now - timedelta(days=1), "$lt": now + timedelta(days=30)}}, limit=500
    )
    bounded(plan, max_keys=4)


async def test_a_workflows_steps(store, jobs, bounded):
    from app.domain.workflow import StepSpec, WorkflowSpec

    await many(store, jobs)
    wf = await store.workflows.create(
        WorkflowSpec(name="w", jobs=[StepSpec(key=f"s{i}", engine="testing", operation="ok") for i in range(5)]),
        owner="admin",
    )
    plan = await explain(store, "jobs", {"workflow_id": wf["_id"]})
    bounded(plan, max_keys=6)


async def test_a_tenants_waiting_count(store, jobs, bounded):
    await store.lifecycle.insert_many([store.lifecycle.build(jobs.spec(), "ta/u") for _ in range(50)])
    await many(store, jobs)
    plan = await store.db.command(
        {"explain": {"count": "jobs", "query": {"tenant": "ta", "status": "queued"}}, "verbosity": "executionStats"}
    )
    bounded(plan, {"tenant": 1, "status": 1, "_id": 1}, max_keys=51)


async def test_quiet_running_workflows_for_the_repair(store, bounded):
    plan = await explain(store, "workflows", {"status": "running", "updated_at": {"$lt": store.clock.now()}}, limit=20)
    bounded(plan, {"status": 1, "updated_at": 1})


async def test_events_after_a_seq(store, bounded):
    await store.events.col.insert_many([{"_id": i, "token": f"t{i}", "at": store.clock.now()} for i in range(1, 200)])
    plan = await explain(store, "events", {"_id": {"$gt": 150}}, {"_id": 1}, 1000)
    bounded(plan, max_keys=50)


async def test_a_jobs_pages_of_the_log_and_the_page_before_a_seq(store, bounded):
    for i in range(60):  # pages of three events, one of them job j7's in every fifth page
        evs = [
            {"token": f"t{i}-{k}", "type": "job.queued", "job_id": "j7" if k == 0 and i % 5 == 0 else f"j{i}"}
            for k in range(3)
        ]
        await store.events.append(evs, 0, 3 * i)
    plan = await explain(store, "events", {"job_id": "j7", "_id": {"$gte": 1}}, {"_id": 1}, 1000)
    bounded(plan, {"job_id": 1, "_id": 1}, max_keys=13)  # its 12 pages, and the key past them
    plan = await explain(store, "events", {"_id": {"$lte": 100, "$gt": 100 - MAX}}, {"_id": -1}, 1)
    bounded(plan, max_keys=1, unlimited_keys=34)


async def tenant_jobs(store, jobs, tenant: str, n: int) -> None:
    await store.lifecycle.insert_many([store.lifecycle.build(jobs.spec(), f"{tenant}/u") for _ in range(n)])


async def test_a_tenants_list_newest_first_is_a_read_per_status(store, jobs, bounded):
    await tenant_jobs(store, jobs, "ta", 50)
    await many(store, jobs)
    for status in ("queued", "completed"):  # one of the reads a list over every status merges
        plan = await explain(store, "jobs", {"tenant": "ta", "status": status}, {"_id": -1}, 21)
        bounded(plan, {"tenant": 1, "status": 1, "_id": 1}, max_keys=21, unlimited_keys=50)


async def test_a_tenants_list_by_status_and_its_dead_letter(store, jobs, bounded):
    await tenant_jobs(store, jobs, "ta", 50)
    await many(store, jobs)
    for _ in range(3):
        await jobs.failed()
    for status in ("queued", "failed"):
        plan = await explain(store, "jobs", {"status": status, "tenant": "default"}, {"_id": -1}, 21)
        bounded(plan, {"tenant": 1, "status": 1, "_id": 1}, max_keys=21, unlimited_keys=303)


async def test_a_tenants_history_window(store, jobs, bounded):
    import asyncio
    from datetime import datetime

    from bson import ObjectId

    await many(store, jobs)
    await asyncio.sleep(1.05)  # an ObjectId counts whole seconds
    since = str(ObjectId.from_datetime(datetime.now(UTC)))
    await tenant_jobs(store, jobs, "ta", 20)
    plan = await explain(store, "jobs", {"tenant": "ta", "status": "queued", "_id": {"$gte": since}})
    bounded(plan, {"tenant": 1, "status": 1, "_id": 1}, max_keys=21)
