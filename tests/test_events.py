"""The event log: the relay derives one event per transition from the change feed, in seq
order, exactly once, including transitions made while no relay ran (the outbox guarantee),
and the log expires through its TTL index."""

from __future__ import annotations

import asyncio

import pytest

from app.notifications.relay import LEASE, EventRelay
from app.store import connect
from app.store.eventpages import last_of
from tests.helpers import eventually, wait_status


@pytest.fixture
async def relay(store, settings):
    r = EventRelay(store, settings, lease_seconds=2.0)
    task = asyncio.create_task(r.run())
    await eventually(lambda: _leading(r), timeout=10)
    yield r
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _leading(r) -> bool:
    return r.leading


async def _once_streaming(store, jobs) -> dict:
    """A job whose event the relay published. A relay with no checkpoint starts its stream
    at "now", so a job written before that is not its business: probe until one shows."""
    for _ in range(20):
        job = await jobs.queued()
        try:
            await events_of(store, job["_id"], "job.queued", timeout=1.0)
            return job
        except AssertionError:
            continue
    raise AssertionError("the relay never started streaming")


async def events_of(store, job_id, until_type, timeout=20.0):
    async def check():
        evs = await store.events.since(0, job_id=job_id)
        return evs if any(e["type"] == until_type for e in evs) else None

    return await eventually(check, timeout=timeout)


async def test_a_jobs_life_is_one_event_per_transition_in_seq_order(store, relay, jobs, worker):
    await store.engines.set_limit("testing", 5)
    job = await jobs.queued(
        operation="flaky", parameters={"succeed_on": 2}, retry_config={"max_retries": 3, "retry_delay_seconds": 0.05}
    )
    await wait_status(store, job["_id"], "completed")
    evs = await events_of(store, job["_id"], "job.completed")
    types = [e["type"] for e in evs]
    assert types == ["job.queued", "job.running", "job.scheduled", "job.queued", "job.running", "job.completed"]
    assert [e["_id"] for e in evs] == sorted(e["_id"] for e in evs)
    assert len({e["_id"] for e in evs}) == len(evs)
    assert all(e["engine"] == "testing" and e["owner"] == "admin" for e in evs)
    retry = evs[2]
    assert retry["error"]["code"] and retry["status"] == "scheduled"


async def test_progress_updates_are_events(store, relay, jobs):
    job = await jobs.running()
    await store.lifecycle.progress(job["_id"], job["lease_token"], 40, "halfway", {"done": 4})
    await store.lifecycle.complete(job, job["lease_token"], {"ok": 1}, 3)
    evs = await events_of(store, job["_id"], "job.completed")
    progress = [e for e in evs if e["type"] == "job.progress"]
    assert len(progress) == 1
    assert progress[0]["progress"]["percent"] == 40 and progress[0]["progress"]["stage"] == "halfway"
    assert progress[0]["status"] == "running"
    assert evs[-1]["type"] == "job.completed"


async def test_transitions_made_while_no_relay_ran_still_get_their_events(store, settings, jobs):
    """The outbox guarantee: events come from the server's log of writes, so a relay that
    starts (or resumes from its checkpoint) later still sees every transition."""
    first = EventRelay(store, settings, lease_seconds=2.0)
    task = asyncio.create_task(first.run())
    a = await _once_streaming(store, jobs)
    task.cancel()  # the relay "dies" (its lease is released, its checkpoint kept)
    await asyncio.gather(task, return_exceptions=True)

    b = await jobs.running()
    await store.lifecycle.complete(b, b["lease_token"], {"ok": True}, 1)
    c = await jobs.cancelled()

    second = EventRelay(store, settings, lease_seconds=2.0)
    task = asyncio.create_task(second.run())
    try:
        evs_b = await events_of(store, b["_id"], "job.completed")
        evs_c = await events_of(store, c["_id"], "job.cancelled")
        assert [e["type"] for e in evs_b] == ["job.queued", "job.running", "job.completed"]
        assert [e["type"] for e in evs_c] == ["job.queued", "job.cancelled"]
        assert [e["type"] for e in await store.events.since(0, job_id=a["_id"])] == ["job.queued"]  # not twice
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_new_databases_first_relay_sees_the_writes_made_before_it_ran(store, settings, jobs):
    """The relay of a new database starts where its migration put it, not whenever it first
    leads: jobs submitted while the relays were still starting get their events (two relays
    starting next to a stream of submits once lost the first job's event this way)."""
    made = [await jobs.queued() for _ in range(3)]
    relay = EventRelay(store, settings, lease_seconds=2.0)
    task = asyncio.create_task(relay.run())
    try:
        for job in made:
            assert [e["type"] for e in await events_of(store, job["_id"], "job.queued")] == ["job.queued"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_only_one_relay_leads_and_a_replayed_batch_adds_nothing(store, settings, db_url, jobs):
    other_store = connect(db_url, settings, db_name=store.db.name)
    await other_store.start()
    relays = [EventRelay(store, settings, lease_seconds=1.0), EventRelay(other_store, settings, lease_seconds=1.0)]
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        made = [await jobs.queued() for _ in range(20)]
        await events_of(store, made[-1]["_id"], "job.queued")
        assert sum(r.leading for r in relays) == 1
        all_events = await store.events.since(0)
        assert len(all_events) == 20 and len({e["job_id"] for e in all_events}) == 20
        # A deposed leader replaying the same changes, from where it last knew the log (the
        # end of a page it read or wrote), writes nothing new, and order holds.
        again = await relays[0].derive([])  # nothing in, nothing out
        assert again == []
        first = last_of(await store.events.col.find_one({}, sort=[("_id", 1)]))
        for known in {0, first}:
            replayed = [dict(e) for e in all_events if e["_id"] > known]
            assert await store.events.append(replayed, last=known) == 0
        assert [e["_id"] for e in await store.events.since(0)] == [e["_id"] for e in all_events]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await other_store.close()


async def test_the_lease_hands_over_when_the_leader_stops(store, settings, db_url, jobs):
    a = EventRelay(store, settings, lease_seconds=1.0)
    ta = asyncio.create_task(a.run())
    await eventually(lambda: _leading(a), timeout=10)
    other_store = connect(db_url, settings, db_name=store.db.name)
    await other_store.start()
    b = EventRelay(other_store, settings, lease_seconds=1.0)
    tb = asyncio.create_task(b.run())
    try:
        ta.cancel()
        await asyncio.gather(ta, return_exceptions=True)
        job = await jobs.queued()
        await events_of(store, job["_id"], "job.queued")
        assert b.leading
        assert (await store.leases.get(LEASE))["holder"] == b.holder
    finally:
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)
        await other_store.close()


async def test_workflow_events(store, relay, api, worker):
    await store.engines.set_limit("testing", 10)
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
    wf = r.json()

    async def finished():
        evs = await store.events.since(0, workflow_id=wf["id"])
        return evs if any(e["type"] == "workflow.completed" for e in evs) else None

    evs = await eventually(finished, timeout=30)
    kinds = [(e["kind"], e["type"]) for e in evs]
    assert kinds[0] == ("workflow", "workflow.running")
    assert kinds[-1] == ("workflow", "workflow.completed")
    b_events = [e["type"] for e in evs if e.get("step_key") == "b"]
    assert b_events == ["job.queued", "job.running", "job.completed"]  # created with the workflow
    assert all(e["workflow_id"] == wf["id"] for e in evs)


async def test_the_log_has_no_ttl_or_token_index_and_earlier_ones_are_dropped(store):
    """Expiry reads `_id` windows (tests/test_retention.py); a TTL index would cost every
    insert an index entry and, on SecantusDB, a sweep of the whole log every minute. An
    event's identity is kept by `append`; a unique index on `token` cost every insert a
    unique check."""
    assert {"retention", "token"}.isdisjoint(await store.events.col.index_information())
    await store.events.col.create_index("at", expireAfterSeconds=3600, name="retention")  # earlier versions'
    await store.events.col.create_index("token", unique=True, sparse=True, name="token")
    await store.events.ensure_indexes()
    indexes = await store.events.col.index_information()
    assert "token" not in indexes and not any("expireAfterSeconds" in i for i in indexes.values())


async def test_changes_that_share_a_cluster_time_each_get_their_event(store, settings):
    """The writes of one transaction share their cluster time; each is its own event, with a
    seq of its own, in order."""
    from app.domain.models import JobSpec

    relay = EventRelay(store, settings, lease_seconds=2.0)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: _leading(relay))
        docs = [store.lifecycle.build(JobSpec(engine="txn", operation="ok"), "admin") for _ in range(3)]
        async with store.client.start_session() as s:
            async with await s.start_transaction():
                for d in docs:
                    await store.jobs.col.insert_one(d, session=s)
        for d in docs:
            await events_of(store, d["_id"], "job.queued")
        events = [e for e in await store.events.since(0) if e.get("engine") == "txn"]
        assert [e["job_id"] for e in events] == [d["_id"] for d in docs]
        seqs = [e["_id"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3 and len({e["token"] for e in events}) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _leading(relay) -> bool:
    return relay.leading
