"""Claims, permits, promotion, rescue and orphans (`claimer.py`, `lifecycle.py`, `engines.py`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from app.domain.retry import RetryConfig


async def claim(store, engine: str, k: int, worker: str = "w1"):
    return await store.claimer.claim(await store.engines.get(engine), worker, k)


async def test_strict_priority_then_fifo(jobs, store):
    made = []
    for prio in (5, 9, 1, 5, 1, 3):
        made.append((prio, (await jobs.queued(priority=prio))["_id"]))
    got = []
    for _ in range(6):
        got += [(j["priority"], j["_id"]) for j in await claim(store, "testing", 1)]
    expected = sorted(made, key=lambda pj: pj[0])  # stable: FIFO inside a priority
    assert got == expected


async def test_batch_claim_spans_bands_in_order(jobs, store):
    for prio in (7, 2, 7, 2):
        await jobs.queued(priority=prio)
    batch = await claim(store, "testing", 3)
    assert [j["priority"] for j in batch] == [2, 2, 7]
    assert all(j["status"] == "running" and j["attempt"] == 1 for j in batch)
    assert len({j["lease_token"] for j in batch}) == 1


async def test_claimers_holding_permits_take_their_own_windows(jobs, store, settings, monkeypatch):
    """Two workers holding permits of an engine, reading the same cursor, claim disjoint
    windows: the second in line starts one claim batch ahead and, while the cursor moves,
    goes on from where it ended, so neither loses candidates to the other. When the cursor
    stands still for HEAD_PATIENCE (the first in line is busy), it takes from the head."""
    monkeypatch.setattr("app.store.claimer.HEAD_PATIENCE", 0.2)
    monkeypatch.setattr("app.store.seqblocks.BLOCK_MAX", 1)  # dense seqs: a batch ahead is `batch` jobs
    batch = settings.claim_batch
    made = [(await jobs.queued())["_id"] for _ in range(batch * 4)]
    await store.numbers.flush()  # no write in flight holds the cursor
    for w in ("w0", "w1"):
        assert await store.engines.reserve("testing", w, 1)
    engine = await store.engines.get("testing")
    first, second = await asyncio.gather(store.claimer.claim(engine, "w0", 8), store.claimer.claim(engine, "w1", 8))
    assert [j["_id"] for j in first] == made[:8]
    assert [j["_id"] for j in second] == made[batch : batch + 8]
    engine = await store.engines.get("testing")  # w0's claim moved the cursor: w1 stays ahead
    again = await store.claimer.claim(engine, "w1", 8)
    assert [j["_id"] for j in again] == made[2 * batch + 8 : 2 * batch + 16]
    still = await store.claimer.claim(await store.engines.get("testing"), "w1", 8)  # not for long yet
    assert [j["_id"] for j in still] == made[3 * batch + 16 : 3 * batch + 24]
    await asyncio.sleep(0.3)
    head = await store.claimer.claim(await store.engines.get("testing"), "w1", 8)  # it stood still too long
    assert [j["_id"] for j in head] == made[8:16]


async def test_a_claimer_ahead_in_line_still_gets_a_short_queue(jobs, store):
    made = [(await jobs.queued())["_id"] for _ in range(5)]
    for w in ("w0", "w1"):
        assert await store.engines.reserve("testing", w, 1)
    got = await claim(store, "testing", 8, worker="w1")  # nothing one batch ahead: from the cursor
    assert [j["_id"] for j in got] == made


async def test_concurrent_claimers_never_share_a_job(jobs, store):
    n = 300
    await asyncio.gather(*(jobs.queued() for _ in range(n)))
    owners: dict[str, str] = {}

    async def claimer(name: str):
        while True:
            got = await claim(store, "testing", 7, worker=name)
            if not got:
                engine = await store.engines.get("testing")
                if not any(engine.get("cursor", {}).get(b, 0) < s for b, s in engine.get("seq", {}).items()):
                    return
                continue
            for j in got:
                assert j["_id"] not in owners, "claimed twice"
                owners[j["_id"]] = name

    await asyncio.gather(*(claimer(f"w{i}") for i in range(8)))
    assert len(owners) == n
    assert len(set(owners.values())) > 1


async def test_permits_hold_the_limit(store):
    await store.engines.ensure("general")  # limit 2
    assert await store.engines.reserve("general", "a", 2)
    assert not await store.engines.reserve("general", "b", 1)
    assert await store.engines.release("general", "a", 1)
    assert await store.engines.reserve("general", "b", 1)
    doc = await store.engines.get("general")
    assert doc["running"] == 2 and doc["holds"] == {"a": 1, "b": 1}
    assert await store.engines.drop_holds("a") == 1
    doc = await store.engines.get("general")
    assert doc["running"] == 1 and "a" not in doc["holds"]
    assert not await store.engines.release("general", "a", 1)  # a dead worker's late release is a no-op
    assert (await store.engines.get("general"))["running"] == 1


async def test_pause_blocks_reservations(store):
    await store.engines.set_paused("general", True)
    assert not await store.engines.reserve("general", "a", 1)
    await store.engines.set_paused("general", False)
    assert await store.engines.reserve("general", "a", 1)


async def test_rescue_requeues_then_fails_a_poison_job(jobs, store):
    job = await jobs.running(retry_config=RetryConfig(max_retries=1))
    later = store.clock.now() + timedelta(seconds=60)
    expired = await store.jobs.expired_leases(later)
    assert [j["_id"] for j in expired] == [job["_id"]]
    assert await store.lifecycle.rescue(expired[0], later) == "queued"
    again = await store.jobs.get(job["_id"])
    assert again["retry_count"] == 1 and again["errors"][0]["code"] == "lease_expired"
    second = (await claim(store, job["engine"], 1))[0]
    assert second["attempt"] == 2
    assert await store.lifecycle.rescue(second, later) == "failed"
    dead = await store.jobs.get(job["_id"])
    assert dead["status"] == "failed" and "no attempts left" in dead["last_error"]["message"]


async def test_racing_rescuers_take_one_sequence_number(jobs, store):
    """Only the rescuer that wins the job takes a number (each number taken holds the
    band's cursor back until its write lands)."""
    job = await jobs.running()
    later = store.clock.now() + timedelta(seconds=60)
    (expired,) = await store.jobs.expired_leases(later)
    before = (await store.engines.get(job["engine"]))["seq"]["p5"]
    results = await asyncio.gather(*(store.lifecycle.rescue(expired, later) for _ in range(5)))
    assert sorted(results) == ["", "", "", "", "queued"]
    await store.numbers.flush()
    engine = await store.engines.get(job["engine"])
    assert engine["seq"]["p5"] == before + 1 and engine["queued"] == 1
    again = await store.jobs.get(job["_id"])
    assert again["status"] == "queued" and again["retry_count"] == 1 and len(again["errors"]) == 1


async def test_a_claim_says_whether_the_queue_ran_dry(jobs, store):
    for _ in range(3):
        await jobs.queued()
    part = await claim(store, "testing", 2)
    assert len(part) == 2 and not part.dry
    rest = await claim(store, "testing", 5)
    assert len(rest) == 1 and rest.dry
    assert (await claim(store, "testing", 5)).dry


async def test_contended_claimers_spread_and_still_take_everything_once(jobs, store):
    """Claimers that collide widen their window (random picks); nothing is taken twice or
    skipped, and a lone claimer afterwards is back to strict FIFO."""
    await asyncio.gather(*(jobs.queued() for _ in range(200)))
    owners: dict[str, str] = {}

    async def claimer(name: str):
        while (got := await claim(store, "testing", 4, worker=name)) or not got.dry:
            for j in got:
                assert owners.setdefault(j["_id"], name) == name, "claimed twice"

    await asyncio.gather(*(claimer(f"w{i}") for i in range(10)))
    assert len(owners) == 200
    assert max(store.claimer._spread.values()) > 1  # they did collide
    store.claimer._spread.clear()
    made = [(await jobs.queued())["_id"] for _ in range(6)]
    assert [j["_id"] for j in await claim(store, "testing", 6)] == made


async def test_release_wakes_claimers_only_when_the_engine_was_full(store):
    await store.engines.ensure("general")  # limit 2
    wake = lambda doc: doc.get("wake", 0)  # noqa: E731
    assert await store.engines.reserve("general", "a", 1)
    w0 = wake(await store.engines.get("general"))
    assert await store.engines.release("general", "a", 1)
    assert wake(await store.engines.get("general")) == w0  # nobody can be waiting for it
    assert await store.engines.reserve("general", "a", 2)
    assert await store.engines.release("general", "a", 1)
    assert wake(await store.engines.get("general")) == w0 + 1  # full: someone may be
    assert not await store.engines.release("general", "b", 1)  # holds nothing


async def test_rescue_ignores_live_leases(jobs, store):
    await jobs.running()
    assert await store.jobs.expired_leases(store.clock.now()) == []


async def test_orphan_below_the_cursor_is_requeued(jobs, store):
    a = await jobs.queued()
    b = await jobs.queued()
    await claim(store, "testing", 1)  # takes a; cursor moves past it
    await claim(store, "testing", 1)  # takes b
    # a job whose seq a claimer already passed: as if its insert landed late
    c = await jobs.queued()
    await store.jobs.col.update_one({"_id": c["_id"]}, {"$set": {"seq": a["seq"]}})
    await store.engines.advance_cursor("testing", "p5", c["seq"] + 1)
    assert await claim(store, "testing", 1) == []
    assert await store.claimer.requeue_orphans(await store.engines.get("testing")) == 1
    got = await claim(store, "testing", 1)
    assert [j["_id"] for j in got] == [c["_id"]]
    assert b["_id"] != c["_id"]


async def test_queue_counter_follows_claims_and_oldest_age(jobs, store):
    for _ in range(3):
        await jobs.queued()
    await store.numbers.flush()  # an open seq block counts its seqs until it closes
    doc = await store.engines.get("testing")
    assert doc["queued"] == 3 and await store.jobs.count_queued("testing") == 3
    oldest = await store.jobs.oldest_queued_at(doc)
    assert oldest is not None and oldest <= store.clock.now()


def _stages(plan: dict):
    yield plan
    for key in ("inputStage", "queryPlan"):
        if isinstance(plan.get(key), dict):
            yield from _stages(plan[key])
    for sub in plan.get("inputStages", []):
        yield from _stages(sub)


async def test_claim_window_is_an_index_scan_bounded_by_the_window(jobs, store):
    """On either server: the claim query uses the claim index, and the keys it examines are
    bounded by the window, not by the queue's depth."""
    spec = jobs.spec()
    await store.lifecycle.insert_many([store.lifecycle.build(spec, "admin") for _ in range(5000)])
    for lo in (0, 4000):
        plan = await store.claimer.explain_window("testing", 5, lo, 64, 16)
        winning = plan["queryPlanner"]["winningPlan"]
        scans = [s for s in _stages(winning) if s.get("stage") == "IXSCAN"]
        assert scans and scans[0]["keyPattern"] == {"engine": 1, "status": 1, "priority": 1, "tenant": 1, "seq": 1}
        assert plan["executionStats"]["totalKeysExamined"] <= 64 + 1
        assert plan["executionStats"]["totalDocsExamined"] <= 64


async def test_concurrent_submits_to_a_new_engine_count_exactly(jobs, store):
    await asyncio.gather(*(jobs.queued(engine="brand_new") for _ in range(200)))
    await store.numbers.flush()  # markers are cleared just after each write lands
    doc = await store.engines.get("brand_new")
    assert doc["queued"] == 200 == await store.jobs.count_queued("brand_new")
    assert not doc.get("inflight")
    seqs = {j["seq"] for j in await store.jobs.col.find({"engine": "brand_new"}, {"seq": 1}).to_list(None)}
    assert len(seqs) == 200 and max(seqs) < doc["seq"]["p5"]  # one number each, all taken


async def test_a_lone_enqueue_clears_its_marker_and_wakes_claimers_before_it_returns(jobs, store, monkeypatch):
    """No other enqueue of its engine came within STREAK_GAP: its wake-up is on the path from
    submit to start, so it is written before the enqueue returns, without a flush."""
    monkeypatch.setattr("app.store.numbering.STREAK_GAP", 0.0)
    await jobs.queued()
    wake = (await store.engines.get("testing")).get("wake", 0)
    await jobs.queued()
    doc = await store.engines.get("testing")
    assert not doc.get("inflight") and doc["wake"] == wake + 1


async def test_in_a_stream_the_next_enqueue_carries_the_markers_that_landed_before_it(jobs, store, monkeypatch):
    """Enqueues in a stream: a landed job's marker is removed, with the wake-up, by the next
    enqueue's own write when one comes within CLEAR_DELAY, else by a write of its own after it."""
    monkeypatch.setattr("app.store.numbering.STREAK_GAP", 60.0)
    monkeypatch.setattr("app.store.numbering.CLEAR_DELAY", 0.5)  # so the next enqueue surely comes first
    await jobs.queued()  # the first of the stream clears its own
    second = await jobs.queued()
    doc = await store.engines.get("testing")
    assert len(doc["inflight"]) == 1  # the second's marker waits for the next enqueue
    wake = doc.get("wake", 0)
    async with store.numbers.enqueue("testing", "p5", 1) as seq:
        doc = await store.engines.get("testing")
        assert len(doc["inflight"]) == 1  # only this enqueue's own
        assert doc["wake"] == wake + 1 and seq == second["seq"] + 1
        await store.lifecycle.insert_many([{**store.lifecycle.build(jobs.spec(), "admin"), "seq": seq}])
    await store.numbers.flush()
    doc = await store.engines.get("testing")
    assert not doc.get("inflight") and doc["wake"] == wake + 2


async def test_a_tenants_burst_does_not_starve_another_tenant(jobs, store):
    """Fairness: within a priority each tenant with queued jobs gets an even share of a
    claim, whatever the order of arrival; FIFO holds within each tenant."""
    engine = "shared"
    burst = [await jobs.queued(engine=engine, owner="acme/bulk") for _ in range(40)]
    late = [await jobs.queued(engine=engine, owner="globex/ann") for _ in range(2)]
    other = await jobs.queued(engine=engine, owner="admin")  # the default tenant's band
    first = await store.claimer.claim(await store.engines.get(engine), "w1", 6)
    by_tenant = {}
    for j in first:
        by_tenant.setdefault(j["tenant"], []).append(j["_id"])
    assert by_tenant["globex"] == [j["_id"] for j in late]  # both, though they came after 40
    assert by_tenant["default"] == [other["_id"]]
    assert by_tenant["acme"] == [j["_id"] for j in burst[:3]]  # FIFO within the tenant
    high = await jobs.queued(engine=engine, owner="acme/bulk", priority=1)
    second = await store.claimer.claim(await store.engines.get(engine), "w1", 1)
    assert [j["_id"] for j in second] == [high["_id"]]  # priority still comes first
    rest = await store.claimer.claim(await store.engines.get(engine), "w1", 100)
    assert [j["_id"] for j in rest] == [j["_id"] for j in burst[3:]]
    assert (await store.engines.get(engine))["queued"] == 0


async def test_a_claim_reads_past_gaps_in_one_call_and_stays_fifo(jobs, store):
    """Jobs gone from the middle of the line (cancelled here) leave gaps in the seqs: a
    claim still takes `k` jobs, oldest first, past the gap."""
    made = [(await jobs.queued())["_id"] for _ in range(60)]
    for job_id in made[2:40]:  # a wide gap after the first two
        await store.lifecycle.cancel(job_id)
    batch = await claim(store, "testing", 10)
    assert [j["_id"] for j in batch] == made[:2] + made[40:48]


async def test_a_lease_that_expires_before_its_handler_started_is_not_charged(jobs, store):
    """The claim charged the attempt; its worker recorded no start for the lease (the claim's
    reply was lost, or the worker died first): the rescuer refunds it, even with no retries."""
    await store.workers.register("wclaimer", engines=None, concurrency=1, kind="worker")
    job = await jobs.running(worker="wclaimer", retry_config=RetryConfig(max_retries=0))
    assert job["attempt"] == 1
    later = store.clock.now() + timedelta(seconds=60)
    (expired,) = await store.jobs.expired_leases(later)
    assert await store.lifecycle.rescue(expired, later) == "queued"
    again = await store.jobs.get(job["_id"])
    assert again["attempt"] == 0 and again["retry_count"] == 0 and not again.get("errors")
    assert "lease_token" not in again
    # the same job, started this time: the expiry is charged, and with no retries it fails
    second = (await claim(store, job["engine"], 1))[0]
    await store.workers.mark_started("wclaimer", second["lease_token"])
    (expired,) = await store.jobs.expired_leases(later)
    assert await store.lifecycle.rescue(expired, later) == "failed"
    assert (await store.jobs.get(job["_id"]))["last_error"]["code"] == "lease_expired"


async def test_a_heartbeat_forgets_the_start_marks_of_finished_leases(store):
    await store.workers.register("wbeat", engines=None, concurrency=1, kind="worker")
    await store.workers.mark_started("wbeat", "t1")
    await store.workers.mark_started("wbeat", "t2")
    assert await store.workers.beat("wbeat", [], ["t1"])
    assert await store.workers.handler_started("wbeat", "t1") is False
    assert await store.workers.handler_started("wbeat", "t2") is True
    assert await store.workers.handler_started("wunknown", "t2") is None


async def test_a_lone_clear_cancelled_midway_leaves_its_markers_to_the_flusher(jobs, store, monkeypatch):
    """A submit cancelled as it returns (a client gone) must not drop the markers it took."""
    job = await jobs.queued()
    await store.engines.col.update_one({"_id": "testing"}, {"$set": {"inflight.p5_cancelled": store.clock.now()}})
    real = store.engines.col.update_one

    async def cancelled(*a, **kw):
        raise asyncio.CancelledError

    monkeypatch.setattr(store.engines.col, "update_one", cancelled)
    with pytest.raises(asyncio.CancelledError):
        await store.numbers._clear("testing", ["p5_cancelled"])
    monkeypatch.setattr(store.engines.col, "update_one", real)
    await store.numbers.flush()
    doc = await store.engines.get("testing")
    assert "p5_cancelled" not in (doc.get("inflight") or {}) and job["seq"] < doc["seq"]["p5"]
