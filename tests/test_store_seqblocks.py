"""Seq blocks (`app/store/seqblocks.py`, used by `app/store/numbering.py`): a stream of single enqueues takes its seqs in blocks,
and every block is held by its marker until the jobs written with its seqs are visible."""

from __future__ import annotations

import asyncio

import pytest
from pymongo.errors import AutoReconnect

from app.store import seqblocks
from tests.test_store_counters import Faulty, spec, truth


class Counting:
    """The engines collection, counting the writes that take seqs."""

    def __init__(self, col) -> None:
        self._col, self.takes = col, 0

    def __getattr__(self, name):
        return getattr(self._col, name)

    async def find_one_and_update(self, *a, **kw):
        self.takes += 1
        return await self._col.find_one_and_update(*a, **kw)


@pytest.fixture(autouse=True)
def stream(monkeypatch):
    """Every enqueue here is part of a stream, however slow a loaded machine makes it."""
    monkeypatch.setattr("app.store.numbering.STREAK_GAP", 60.0)


@pytest.fixture
def counting(store):
    col = store.numbers.col
    store.numbers.col = Counting(col)
    yield store.numbers.col
    store.numbers.col = col


async def test_a_stream_of_single_enqueues_takes_its_seqs_in_blocks(jobs, store, counting, monkeypatch):
    monkeypatch.setattr(seqblocks, "BLOCK_AGE", 60.0)  # only running out closes a block here
    made = [await jobs.queued(engine="counted") for _ in range(40)]
    assert counting.takes == 7  # blocks of 1, 1, 2, 4, 8, 16, 32 (the first enqueue is lone)
    assert [j["seq"] for j in made] == sorted(j["seq"] for j in made)  # FIFO within a process
    assert len({j["seq"] for j in made}) == 40
    await store.numbers.flush()
    doc = await store.engines.get("counted")
    assert not doc.get("inflight") and await truth(store, "counted") == (40, 40)  # 24 unused given back


async def test_an_open_block_holds_the_cursor_until_its_jobs_are_written(jobs, store, monkeypatch):
    """Claims take the block's jobs as they land, but the band's cursor stays below the
    block's seqs while it is open: a seq handed out later is never left behind it."""
    monkeypatch.setattr(seqblocks, "BLOCK_AGE", 60.0)
    first = [await jobs.queued(engine="counted") for _ in range(3)]  # the third opens a block of 2
    got = await store.claimer.claim(await store.engines.get("counted"), "w1", 10)
    assert {j["_id"] for j in got} == {j["_id"] for j in first}
    doc = await store.engines.get("counted")
    assert doc["inflight"] and doc.get("cursor", {}).get("p5", 0) <= first[-1]["seq"]
    late = await jobs.queued(engine="counted")  # the block's second seq
    assert late["seq"] == first[-1]["seq"] + 1
    (again,) = await store.claimer.claim(await store.engines.get("counted"), "w1", 10)
    assert again["_id"] == late["_id"]
    await store.numbers.flush()
    doc = await store.engines.get("counted")
    assert not doc.get("inflight") and await truth(store, "counted") == (0, 0)


async def test_a_block_closes_by_age_and_wakes_claimers(jobs, store, monkeypatch):
    """Without a flush or another enqueue: the block's age closes it, its marker goes with a
    wake-up, and the count of its unused seqs is given back."""
    monkeypatch.setattr(seqblocks, "BLOCK_AGE", 1.0)
    for _ in range(3):
        await jobs.queued(engine="counted")
    doc = await store.engines.get("counted")
    assert doc["inflight"] and doc["queued"] == 4  # the open block counts both its seqs
    wake = doc.get("wake", 0)
    for _ in range(100):
        await asyncio.sleep(0.05)
        doc = await store.engines.get("counted")
        if not doc.get("inflight"):
            break
    assert not doc.get("inflight") and doc["wake"] > wake
    assert await truth(store, "counted") == (3, 3)


async def test_concurrent_enqueues_share_one_take(jobs, store, counting, monkeypatch):
    monkeypatch.setattr(seqblocks, "BLOCK_AGE", 60.0)
    await jobs.queued(engine="counted")
    await jobs.queued(engine="counted")  # a stream: the next takes a block of 2
    before = counting.takes
    made = await asyncio.gather(*(jobs.queued(engine="counted") for _ in range(2)))
    assert counting.takes == before + 1 and made[1]["seq"] == made[0]["seq"] + 1
    await store.numbers.flush()
    assert await truth(store, "counted") == (4, 4)


async def test_a_failed_write_with_a_seq_from_a_block_gives_its_count_back(jobs, store, monkeypatch):
    monkeypatch.setattr(seqblocks, "BLOCK_AGE", 60.0)
    for _ in range(3):
        await jobs.queued(engine="counted")  # the third opens a block of 2: one seq left
    store.enqueuer.col = Faulty(store.enqueuer.col, "insert_many", land=False)
    with pytest.raises(AutoReconnect):
        await store.lifecycle.submit(spec(), owner="admin")
    assert store.enqueuer.col.fired == 1
    await store.numbers.flush()
    doc = await store.engines.get("counted")
    assert not doc.get("inflight") and await truth(store, "counted") == (3, 3)


async def test_a_lone_enqueue_takes_one_seq_and_ends_the_stream(jobs, store, monkeypatch):
    """Outside a stream nothing is taken ahead: seqs stay dense, and the next stream starts
    again from blocks of one."""
    monkeypatch.setattr(seqblocks, "BLOCK_AGE", 60.0)
    monkeypatch.setattr("app.store.numbering.STREAK_GAP", 0.0)
    made = [await jobs.queued(engine="counted") for _ in range(5)]
    assert [j["seq"] for j in made] == list(range(made[0]["seq"], made[0]["seq"] + 5))
    doc = await store.engines.get("counted")
    assert not doc.get("inflight") and doc["seq"]["p5"] == made[-1]["seq"] + 1
