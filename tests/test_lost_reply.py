"""Writes whose reply is lost (tests/faultproxy.py between the store and the real server):
the claim, a completion and a submit's insert land on the server while the client sees a
dropped connection. Nothing may be lost, run twice, charged an attempt it never ran, or
miscounted."""

from __future__ import annotations

import uuid

import pytest
from pymongo.errors import PyMongoError

from app import registry
from app.domain.models import JobSpec
from app.domain.retry import RetryConfig
from app.store import connect, quirks
from app.worker import outcome as oc
from app.worker.processor import JobProcessor
from tests.faultproxy import FaultProxy
from tests.helpers import eventually


def is_claim(body: dict) -> bool:
    """The claim's `update_many`: `status: queued` in its filter, a lease token stamped."""
    return any(
        u["q"].get("status") == "queued" and "lease_token" in (u["u"].get("$set") or {})
        for u in body.get("updates") or []
    )


def is_completion(body: dict) -> bool:
    return any(
        isinstance(u["u"], list) and "finished_token" in u["u"][0].get("$set", {}) for u in body.get("updates") or []
    )


@pytest.fixture
async def proxied(db_url, settings):
    """A store whose every command goes through a lost-reply proxy, and a direct one on the
    same database to look at the truth."""
    registry.load(settings.handler_modules())
    name = f"t_{uuid.uuid4().hex[:12]}"
    async with FaultProxy(db_url) as proxy:
        st = connect(proxy.url, settings, db_name=name, secantus=quirks.is_secantus(db_url))
        direct = connect(db_url, settings, db_name=name)
        await st.start()
        yield proxy, st, direct
        await st.lifecycle.drain()
        await direct.client.drop_database(name)
        await st.close()
        await direct.close()


async def counters_match(st, engine: str) -> bool:
    doc = await st.engines.get(engine)
    return doc.get("queued", 0) == await st.jobs.count_queued(engine)


async def test_a_claim_whose_reply_was_lost_returns_what_it_took(proxied):
    proxy, st, direct = proxied
    ids = [(await st.lifecycle.submit(JobSpec(engine="lr", operation="ok"), owner="admin"))[0]["_id"] for _ in range(3)]
    proxy.drop_reply_to("update", "jobs", where=is_claim)
    claimed = await st.claimer.claim(await st.engines.get("lr"), "w1", 3)
    assert len(proxy.dropped) == 1
    assert sorted(c["_id"] for c in claimed) == sorted(ids)
    assert {c["status"] for c in claimed} == {"running"} and len({c["lease_token"] for c in claimed}) == 1
    assert await counters_match(direct, "lr") and (await direct.engines.get("lr"))["queued"] == 0


async def test_a_completion_whose_reply_was_lost_is_recognised_as_ours(proxied):
    proxy, st, direct = proxied
    await st.lifecycle.submit(JobSpec(engine="lr", operation="ok"), owner="admin")
    (job,) = await st.claimer.claim(await st.engines.get("lr"), "w1", 1)
    proxy.drop_reply_to("update", "jobs", where=is_completion)
    status = await oc.apply(st, job, job["lease_token"], oc.Success({"v": 1}), 5, "w1")
    assert len(proxy.dropped) == 1 and status == "completed"
    done = await direct.jobs.get(job["_id"])
    assert done["status"] == "completed" and done["result"] == {"v": 1} and done["finished_token"] == job["lease_token"]


async def test_a_submit_whose_insert_reply_was_lost_exists_once_and_counts_once(proxied):
    proxy, st, direct = proxied
    proxy.drop_reply_to("insert", "jobs")
    try:
        job, created = await st.lifecycle.submit(JobSpec(engine="lr", operation="ok"), owner="admin")
    except PyMongoError:  # the caller is told it failed: then it must not exist either
        job = None
    assert len(proxy.dropped) == 1
    docs = await direct.jobs.col.find({"engine": "lr"}).to_list(None)
    assert len(docs) == (1 if job else 0)
    assert job is None or (created and docs[0]["_id"] == job["_id"])
    assert await counters_match(direct, "lr")


async def test_lost_claim_replies_charge_no_attempt_and_lose_no_job(proxied):
    """The issue's measurement: 120 jobs with no retries, three claim replies lost. Every
    job runs and completes once, and the engine's counters match the jobs at rest."""
    proxy, st, direct = proxied
    docs = [
        st.lifecycle.build(JobSpec(engine="testing", operation="ok", retry_config=RetryConfig(max_retries=0)), "admin")
        for _ in range(120)
    ]
    await st.lifecycle.insert_many(docs)
    proxy.drop_reply_to("update", "jobs", where=is_claim, times=3)
    worker = JobProcessor(st, st.settings, concurrency=8)
    await worker.start()
    try:

        async def finished():
            return (
                await direct.jobs.col.count_documents({"engine": "testing", "status": {"$in": ["completed", "failed"]}})
                == 120
            )

        await eventually(finished, timeout=60)
    finally:
        await worker.stop()
    assert len(proxy.dropped) == 3
    jobs = await direct.jobs.col.find({"engine": "testing"}, {"status": 1, "attempt": 1}).to_list(None)
    assert {j["status"] for j in jobs} == {"completed"}
    assert {j["attempt"] for j in jobs} == {1}
    engine = await direct.engines.get("testing")
    assert engine["queued"] == 0 and engine.get("running", 0) == 0 == sum((engine.get("holds") or {}).values())


async def test_a_cancel_whose_reply_was_lost_reports_the_cancel(proxied):
    proxy, st, direct = proxied
    job, _ = await st.lifecycle.submit(JobSpec(engine="lr", operation="ok"), owner="admin")
    proxy.drop_reply_to(
        "update", "jobs", where=lambda b: b["updates"][0]["u"].get("$set", {}).get("status") == "cancelled"
    )
    done = await st.lifecycle.cancel(job["_id"])
    assert len(proxy.dropped) == 1 and done["status"] == "cancelled"
    assert await counters_match(direct, "lr") and (await direct.engines.get("lr"))["queued"] == 0


async def test_a_permit_reservation_whose_reply_was_lost_is_known_to_its_worker(proxied):
    proxy, st, direct = proxied
    await st.engines.ensure("lr")
    worker = JobProcessor(st, st.settings, concurrency=4)
    # the driver retries a single-document write once: both replies are lost
    proxy.drop_reply_to(
        "update", "engines", where=lambda b: "holds." + worker.worker_id in str(b["updates"][0]["u"]), times=2
    )
    with pytest.raises(PyMongoError):
        await worker._reserve("lr", 2)
    assert len(proxy.dropped) == 2
    assert worker.held["lr"] == 2 == (await direct.engines.get("lr")).get("running")
    await worker._give_back("lr", 2)
    assert (await direct.engines.get("lr"))["running"] == 0
