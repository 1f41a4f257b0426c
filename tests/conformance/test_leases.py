"""Leader leases (app/store/leases.py) on whatever server `MONGODB_URL` names: one
`findAndModify` with a pipeline update and `upsert` takes or renews a lease, so racing first
takers end with exactly one holder and every other taker told when it may try again."""

from __future__ import annotations

import asyncio


async def test_racing_first_takers_end_with_one_holder_and_no_errors(store):
    for round_ in range(5):
        name = f"race-{round_}"
        got = await asyncio.gather(*(store.leases.acquire(name, f"h{i}", 10) for i in range(16)))
        holders = [doc["holder"] for doc in got if doc is not None]
        assert len(holders) == 1
        assert (await store.leases.take(name, "late", 10))["holder"] == holders[0]  # it says who


async def test_a_lease_is_renewed_by_its_holder_and_taken_once_it_expired(store):
    first = await store.leases.acquire("solo", "a", 10)
    again = await store.leases.acquire("solo", "a", 10)
    assert again is not None and again["expires_at"] >= first["expires_at"]
    assert await store.leases.acquire("solo", "b", 10) is None
    await store.leases.release("solo", "a")  # expires now: free from the next millisecond on
    await asyncio.sleep(0.01)
    assert (await store.leases.acquire("solo", "b", 10))["holder"] == "b"
    assert not await store.leases.save("solo", "a", {"seq": 1})  # a deposed holder moves no checkpoint
    assert await store.leases.save("solo", "b", {"seq": 2})
