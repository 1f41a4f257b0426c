"""The relay writes events in batches and its streams stay cheap: every transition still
yields its event, in order, with gap-free seqs; a batch of events is one insert; the leading
relay's hub follows its appends without a stream of its own; at rest the relay, the notifier
and the hub send at most 2 commands a second, counted at the wire (scripts/wirecount.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from pathlib import Path

import pytest

from app.notifications.hub import Subscriber, Subscription
from app.notifications.relay import EventRelay
from app.notifications.runtime import Live
from app.store import connect, quirks
from tests.helpers import eventually

_spec = importlib.util.spec_from_file_location("wirecount", Path(__file__).parent.parent / "scripts" / "wirecount.py")
wirecount = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("wirecount", wirecount)
_spec.loader.exec_module(wirecount)


@pytest.fixture
async def counted(db_url, settings, store):
    """A second store on the test's database whose commands pass through a WireCounter."""
    upstream = db_url.split("//", 1)[1].split("/", 1)[0].split("?", 1)[0].split(",", 1)[0].rsplit("@", 1)[-1]
    wc = await wirecount.WireCounter(upstream).start()
    st = connect(wc.url(db_url), settings, db_name=store.db.name, secantus=quirks.is_secantus(db_url))
    yield st, wc
    await st.close()
    await wc.stop()


def _commands(wc) -> dict:
    """What was asked of the database, without the driver's handshakes and heartbeats."""
    return {k: v for k, v in wc.counts.items() if k not in ("hello", "ismaster", "isMaster")}


async def _run(relay):
    task = asyncio.create_task(relay.run())
    await eventually(lambda: _true(relay.leading), timeout=10)
    return task


async def _true(v) -> bool:
    return bool(v)


async def _stop(*tasks) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_every_transition_yields_its_event_in_order_and_the_local_hub_gets_them_all(store, settings, jobs):
    live = Live(store, settings, background=False, lease_seconds=10.0)
    task = await _run(live.relay)
    sub = Subscriber(visible=lambda e: True, max_queue=10_000)
    await live.hub.attach(sub)
    await live.hub.subscribe(sub, Subscription(all=True), None)
    try:
        await eventually(lambda: _true(store.events.local), timeout=10)
        probe = await jobs.queued()  # the relay streams from "now": wait until it does
        await eventually(lambda: store.events.since(0, job_id=probe["_id"]), timeout=10)
        # a job's transitions in quick succession (often in one batch), between other jobs'
        made = []
        for _ in range(10):
            made += [await jobs.completed(), await jobs.queued()]

        ids = {job["_id"] for job in made}

        async def all_in():
            evs = await store.events.since(0, limit=10_000)
            return evs if sum(e.get("job_id") in ids for e in evs) == 40 else None  # 10 x 3 + 10 x 1

        log = await eventually(all_in, timeout=20)
        assert [e["_id"] for e in log] == list(range(log[0]["_id"], log[0]["_id"] + len(log)))  # gap-free
        for job in made:
            mine = [e["type"] for e in log if e.get("job_id") == job["_id"]]
            want = ["job.queued", "job.running", "job.completed"] if job["status"] == "completed" else ["job.queued"]
            assert mine == want
        assert all(v is not None for e in log for v in e.values())  # stored without empty fields

        async def delivered():
            got = []
            while not sub.queue.empty():
                got.append(sub.queue.get_nowait()[0]["_id"])
            delivered.seen += got
            return delivered.seen if delivered.seen and delivered.seen[-1] == log[-1]["_id"] else None

        delivered.seen = []
        seen = await eventually(delivered, timeout=10)
        assert seen == [e["_id"] for e in log if e["_id"] >= seen[0]]  # in order, none twice, none missed
    finally:
        await live.hub.stop()
        await _stop(task)


async def test_a_batch_of_events_is_one_insert_and_needs_no_read_of_the_last_seq(counted):
    st, wc = counted
    events = [
        {"token": uuid.uuid4().hex, "type": "job.queued", "kind": "job", "status": "queued", "job_id": f"j{i}"}
        for i in range(300)
    ]
    wc.reset()
    assert await st.events.append(events[:150], 0, 0) == 150
    assert _commands(wc) == {"insert": 1}
    assert await st.events.append(events[150:200], 0, 150) == 50
    assert [e["_id"] for e in events[:200]] == list(range(1, 201))
    # A stale guess of the last seq (where the log once ended) costs a retry, never a gap
    # or a duplicate.
    wc.reset()
    assert await st.events.append(events[200:], 0, 150) == 100
    assert [e["_id"] for e in await st.events.since(0, limit=1000)] == list(range(1, 301))
    assert st.events.top == 300


async def test_the_relay_writes_a_burst_of_changes_in_few_inserts(counted, store, jobs, settings):
    st, wc = counted
    relay = EventRelay(st, settings, lease_seconds=10.0)
    task = await _run(relay)
    try:
        probe = await jobs.queued()
        await eventually(lambda: store.events.since(0, job_id=probe["_id"]), timeout=10)
        wc.reset()
        await store.lifecycle.insert_many([store.lifecycle.build(jobs.spec(), "admin") for _ in range(100)])

        async def all_in():
            return len(await store.events.since(0, limit=10_000)) >= 101

        await eventually(all_in, timeout=20)
        assert 1 <= wc.counts.get("insert", 0) <= 3, dict(wc.counts)  # 100 events: a reply's changes, one insert
    finally:
        await _stop(task)


async def test_relay_notifier_and_hub_at_rest_send_at_most_two_commands_a_second(counted, jobs, store, settings):
    st, wc = counted
    live = Live(st, settings, background=False, lease_seconds=10.0)
    tasks = [await _run(live.relay), asyncio.create_task(live.notifier.run())]
    try:
        await eventually(lambda: _true(live.notifier.leading and st.events.local), timeout=15)
        job = await jobs.queued()
        await eventually(lambda: store.events.since(0, job_id=job["_id"]), timeout=10)
        await asyncio.sleep(2.0)  # settled: the event fanned out, the checkpoints saved
        wc.reset()
        await asyncio.sleep(10.0)
        rate = wc.rate()
        assert rate <= 2.0, dict(wc.counts)
        assert wc.counts.get("getMore", 0) <= 5, dict(wc.counts)  # the relay's one stream; the hub has none
        # and the first event after the quiet spell comes without waiting for a poll
        job = await jobs.queued()
        await eventually(lambda: store.events.since(0, job_id=job["_id"]), timeout=5)
    finally:
        await live.hub.stop()
        await _stop(*tasks)
