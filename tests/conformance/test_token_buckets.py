"""The pipeline updates behind rate limits and per-key limits (app/store/permits.py,
app/store/keylimits.py) on whatever server `MONGODB_URL` names: a bucket refilled by the
server's clock (`$$NOW` as milliseconds) and capped at its burst, dotted paths set inside a
pipeline `$set`, a key's running count held at its cap, and a key's value kept as data
(`$literal`), never as a field name or an expression."""

from __future__ import annotations

import asyncio


async def test_an_engine_bucket_is_capped_at_its_burst_and_refills_by_the_servers_clock(store):
    # 1/s: the second draw finds nothing unless a second passed in between (at 10/s, a
    # loaded machine's 200 ms between two draws refilled two tokens, and the test failed).
    await store.engines.set_limits("testing", rate="1/s", burst=3)
    first = await store.engines.draw("testing", "w1", 5, idle=5)
    assert first["took"] == 3 and first["tokens"] < 1
    assert (await store.engines.draw("testing", "w1", 5, idle=5))["took"] == 0
    await asyncio.sleep(4.5)  # 4.5 tokens' worth, capped at the burst of 3
    assert (await store.engines.draw("testing", "w1", 5, idle=5))["took"] == 3


async def test_a_keys_draw_holds_its_concurrency_and_its_bucket(store, jobs):
    await store.engines.set_limits("testing", key="params.account", key_rate="6/min", key_burst=2, key_concurrency=1)
    job = await jobs.queued(parameters={"account": "a"})
    engine = await store.engines.get("testing")
    lane = job["lane"]
    assert await store.engines.keys.draw(engine, lane, "w1", 5) == 1  # the concurrency, not the burst
    assert await store.engines.keys.draw(engine, lane, "w2", 5) == 0
    assert await store.engines.keys.release("testing", "w1", {lane: 1}) == 1
    assert await store.engines.keys.draw(engine, lane, "w2", 5) == 1  # the burst's second token
    await store.engines.keys.release("testing", "w2", {lane: 1})
    assert await store.engines.keys.draw(engine, lane, "w2", 5) == 0  # no token left yet
    doc = await store.engines.get("testing")
    state = doc["keys"][f"k{lane}"]
    assert state["running"] == 0 and state["tokens"] < 1 and doc["kholds"]["w2"][f"k{lane}"] == 0


async def test_a_keys_value_is_kept_as_data(store, jobs):
    await store.engines.set_limits("testing", key="params.account")
    odd = await jobs.queued(parameters={"account": "$concat.x"})
    other = await jobs.queued(parameters={"account": ["x", {"y": 1}]})
    again = await jobs.queued(parameters={"account": "$concat.x"})
    assert odd["lane"] == again["lane"] != other["lane"]
    names = sorted(v["name"] for v in (await store.engines.get("testing"))["lanes"].values())
    assert names == ["default/$concat.x", 'default/["x",{"y":1}]']
