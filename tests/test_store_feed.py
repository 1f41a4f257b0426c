"""`app/store/feed.py`: the bulk gate holds this process's change-stream round trips while
it inserts in bulk, and the held stream then reads every change it would have read."""

from __future__ import annotations

import asyncio

from app.domain.models import JobSpec
from app.store.feed import next_batch
from app.store.quirks import BulkGate


async def test_small_inserts_do_not_close_the_gate():
    gate = BulkGate()
    async with gate.hold(BulkGate.MIN_DOCS - 1):
        await asyncio.wait_for(gate.wait(), 0.1)


async def test_gate_opens_only_when_the_last_holder_leaves():
    gate = BulkGate()
    first, second = gate.hold(BulkGate.MIN_DOCS), gate.hold(BulkGate.MIN_DOCS)
    await first.__aenter__()
    await second.__aenter__()
    waiter = asyncio.create_task(gate.wait())
    await first.__aexit__(None, None, None)
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await second.__aexit__(None, None, None)
    await asyncio.wait_for(waiter, 1)


async def test_a_held_stream_reads_the_bulk_insert_after_it(store):
    """The stream waits while `insert_many` holds the gate, then gets the changes."""
    docs = [store.lifecycle.build(JobSpec(engine="general", operation="echo"), "t/u") for _ in range(BulkGate.MIN_DOCS)]
    async with await store.jobs.col.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=50) as stream:
        async with store.bulk.hold(len(docs)):
            reader = asyncio.create_task(next_batch(stream, 10_000, gate=store.bulk))
            await store.jobs.col.insert_many(docs)
            await asyncio.sleep(0.2)
            assert not reader.done()  # held: no round trip while the insert runs
        seen = {c["documentKey"]["_id"] for c in await asyncio.wait_for(reader, 10)}
        while len(seen) < len(docs):
            seen |= {c["documentKey"]["_id"] for c in await asyncio.wait_for(next_batch(stream, 10_000), 10)}
    assert seen == {d["_id"] for d in docs}
