"""`AsyncProducer` and `Producer` (app/producer.py) against the real server: jobs enqueued
from Python run like any other, validation is REST's, and inside the caller's transaction
the jobs exist only if it commits: after an abort nothing is left, not a job, not a count,
not a marker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.errors import ValidationFailed
from app.producer import AsyncProducer, Producer
from tests.helpers import eventually, wait_status

OK = {"engine": "testing", "operation": "ok"}


@pytest.fixture
async def producer(store, settings):
    """On the test's own client, as an application would bring its own."""
    async with AsyncProducer(store.client, owner="acme/app", db_name=store.db.name, settings=settings) as p:
        yield p


async def engine_at_rest(store, engine: str = "testing") -> dict:
    await store.numbers.flush()
    doc = await store.engines.get(engine)
    return {"queued": doc.get("queued", 0), "inflight": doc.get("inflight") or {}}


async def test_enqueued_jobs_run_and_belong_to_the_owner(producer, store, worker):
    one = await producer.enqueue({**OK, "name": "one"})
    many = await producer.enqueue_many([{**OK, "name": f"m{i}"} for i in range(3)])
    for job_id in [one, *many]:
        done = await wait_status(store, job_id, "completed")
        assert done["owner"] == "acme/app" and done["tenant"] == "acme"
    wf = await producer.submit_workflow(
        {"name": "w", "jobs": [{"key": "a", **OK}, {"key": "b", "depends_on": ["a"], **OK}]}
    )
    await wait_status(store, wf["jobs"]["b"], "completed")


async def test_bad_specs_are_refused_before_anything_is_written(producer, store):
    with pytest.raises(ValidationError):
        await producer.enqueue_many([OK, {**OK, "priority": 0}])
    with pytest.raises(ValidationFailed, match="debounce"):
        await producer.enqueue({**OK, "debounce": {"key": "k", "seconds": 1}})
    assert await store.jobs.col.count_documents({}) == 0


async def test_a_committed_transaction_makes_the_jobs_and_wakes_the_workers(producer, store, worker):
    orders = store.db["orders"]
    async with store.client.start_session() as s:
        async with producer.transaction(s):
            await orders.insert_one({"_id": "o1", "total": 12}, session=s)
            job_id = await producer.enqueue({**OK, "name": "invoice", "dedupe_key": "o1"}, session=s)
            assert await producer.enqueue({**OK, "dedupe_key": "o1"}, session=s) == job_id  # a repeat: the same job
            assert await store.jobs.col.find_one({"_id": job_id}) is None  # not before the commit
            assert (await store.engines.get("testing"))["inflight"]  # the band's cursor is held
    done = await wait_status(store, job_id, "completed")
    assert done["name"] == "invoice" and await orders.find_one({"_id": "o1"})
    assert await engine_at_rest(store) == {"queued": 0, "inflight": {}}
    assert await store.jobs.col.count_documents({}) == 1


async def test_an_aborted_transaction_leaves_nothing(producer, store):
    orders = store.db["orders"]
    with pytest.raises(RuntimeError, match="payment declined"):
        async with store.client.start_session() as s:
            async with producer.transaction(s):
                await orders.insert_one({"_id": "o2", "total": 5}, session=s)
                await producer.enqueue_many([{**OK, "dedupe_key": "o2"}, OK], session=s)
                raise RuntimeError("payment declined")
    assert await orders.count_documents({}) == 0
    assert await store.jobs.col.count_documents({}) == 0
    assert await store.db["dedupe"].count_documents({}) == 0
    assert await engine_at_rest(store) == {"queued": 0, "inflight": {}}


WORKFLOW = {
    "name": "order",
    "jobs": [
        {"key": "nap", "type": "sleep", "seconds": 0.2},  # a root of another kind: moves after the commit
        {"key": "bill", **OK},
        {"key": "ship", "depends_on": ["nap", "bill"], **OK},
    ],
}


async def test_a_workflow_in_a_committed_transaction_runs(producer, store, worker):
    async with store.client.start_session() as s:
        async with producer.transaction(s):
            await store.db["orders"].insert_one({"_id": "o3"}, session=s)
            wf = await producer.submit_workflow(WORKFLOW, session=s)
            assert await store.workflows.col.find_one({"_id": wf["id"]}) is None  # not before the commit
            assert await store.jobs.col.count_documents({}) == 0
    assert (await store.jobs.get(wf["jobs"]["nap"]))["status"] == "scheduled"  # the sleep took its move
    await wait_status(store, wf["jobs"]["ship"], "completed")

    async def finished():
        return (await store.workflows.get(wf["id"]))["status"] == "completed" or None

    await eventually(finished)
    assert await engine_at_rest(store) == {"queued": 0, "inflight": {}}


async def test_a_workflow_in_an_aborted_transaction_leaves_nothing(producer, store):
    with pytest.raises(RuntimeError, match="out of stock"):
        async with store.client.start_session() as s:
            async with producer.transaction(s):
                await producer.submit_workflow(WORKFLOW, session=s)
                await producer.enqueue(OK, session=s)
                raise RuntimeError("out of stock")
    for name in ("workflows", "workflow_graphs", "jobs"):
        assert await store.db[name].count_documents({}) == 0, name
    assert await engine_at_rest(store) == {"queued": 0, "inflight": {}}


async def test_a_session_outside_a_producer_transaction_is_refused(producer, store):
    async with store.client.start_session() as s:
        with pytest.raises(ValidationFailed, match="transaction"):
            await producer.enqueue(OK, session=s)
        with pytest.raises(ValidationFailed, match="transaction"):
            await producer.submit_workflow(WORKFLOW, session=s)
    assert await store.jobs.col.count_documents({}) == 0
    assert await store.workflows.col.count_documents({}) == 0


async def test_the_blocking_producer_on_a_url(db_url, store, settings, worker):
    with Producer(db_url, owner="acme/cron", db_name=store.db.name, settings=settings) as p:
        ids = p.enqueue_many([OK, OK])
    for job_id in ids:
        await wait_status(store, job_id, "completed")

    async def counted():
        return (await store.engines.get("testing")).get("queued", 0) == 0 or None

    await eventually(counted)
