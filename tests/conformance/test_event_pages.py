"""The event log's pages (app/store/eventpages.py) on whatever server `MONGODB_URL` names:
a page's jobs found through the multikey index, readers resuming inside a page, a log of
both forms, and an append that collides part way through its pages."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from app.store import eventpages
from app.store.eventpages import only, pages_of


def event(job: str, workflow: str | None = None, at: datetime | None = None) -> dict:
    e = {"token": uuid.uuid4().hex, "type": "job.queued", "kind": "job", "status": "queued", "job_id": job}
    if workflow:
        e["workflow_id"] = workflow
    if at:
        e["at"] = at
    return e


def test_a_page_lists_its_jobs_and_workflows_once_and_its_newest_time():
    t = datetime(2026, 12, 3, tzinfo=UTC)
    evs = [event("a", "w", t), event("b", at=t + timedelta(seconds=2)), event("a", "w"), event("c", at=t)]
    for i, e in enumerate(evs, start=7):
        e["_id"] = i
    (page,) = pages_of(evs)
    assert (page["_id"], page["last"], page["job_id"], page["workflow_id"]) == (7, 10, ["a", "b", "c"], ["w"])
    assert page["at"] == t + timedelta(seconds=2) and page["events"] == evs
    (bare,) = pages_of([{"_id": 1, "token": "t", "type": "job.queued"}])
    assert "job_id" not in bare and "workflow_id" not in bare and "at" not in bare


def test_a_page_closes_at_its_byte_budget(monkeypatch):
    monkeypatch.setattr(eventpages, "MAX_BYTES", 1000)
    evs = [dict(event(f"j{i}"), _id=i, stage="x" * 300) for i in range(1, 8)]
    evs[4]["stage"] = "y" * 5000  # larger than a page alone: a page of its own
    pages = pages_of(evs)
    assert [(p["_id"], p["last"]) for p in pages] == [(1, 2), (3, 4), (5, 5), (6, 7)]
    assert [e for p in pages for e in p["events"]] == evs


def test_events_split_into_pages_of_at_most_max(monkeypatch):
    monkeypatch.setattr(eventpages, "MAX", 4)
    evs = [dict(event(f"j{i}"), _id=i) for i in range(1, 11)]
    assert [(p["_id"], p["last"]) for p in pages_of(evs)] == [(1, 4), (5, 8), (9, 10)]


async def test_a_jobs_events_come_from_the_pages_that_hold_it(store):
    evs = [event("a"), event("b"), event("a"), event("c", "w"), event("a", "w")]
    assert await store.events.append(evs, 0, 0) == 5
    assert await store.events.col.count_documents({}) == 1  # one page
    assert [e["_id"] for e in await store.events.since(0, job_id="a")] == [1, 3, 5]
    assert [e["_id"] for e in await store.events.since(0, workflow_id="w")] == [4, 5]
    assert await store.events.since(0, job_id="nobody") == []


async def test_a_reader_resuming_inside_a_page_gets_only_what_follows(store):
    await store.events.append([event("a") for _ in range(3)], 0, 0)
    await store.events.append([event("a" if i % 2 else "b") for i in range(6)], 0, 3)
    assert await store.events.col.count_documents({}) == 2  # pages [1..3] and [4..9]
    assert [e["_id"] for e in await store.events.since(5)] == [6, 7, 8, 9]
    assert [e["_id"] for e in await store.events.since(5, job_id="a")] == [7, 9]
    assert [e["_id"] for e in await store.events.since(2, limit=3)] == [3, 4, 5]  # across a page's edge
    assert await store.events.tokens_after(7) == {e["token"] for e in await store.events.since(7)}
    assert await store.events.since(9) == []
    # The page holding `after` may hold the job only up to it: read, it counts for nothing.
    await store.events.append([event("b"), event("c")], 0, 9)
    assert [e["_id"] for e in await store.events.since(8, job_id="b", limit=1)] == [10]


async def test_a_log_of_single_events_and_pages_reads_as_one(store):
    """Events of the log's earlier form (a document each) and pages after them."""
    old = [dict(event("a" if i == 2 else f"o{i}"), _id=i, at=store.clock.now()) for i in range(1, 4)]
    await store.events.col.insert_many(old)
    store.events.top = 0
    assert await store.events.last_seq() == 3
    assert await store.events.append([event("a"), event("n")]) == 2  # numbered after the old ones
    assert [e["_id"] for e in await store.events.since(0)] == [1, 2, 3, 4, 5]
    assert [e["_id"] for e in await store.events.since(0, job_id="a")] == [2, 4]
    assert [e["_id"] for e in await store.events.since(2)] == [3, 4, 5]
    store.events.top = 0
    assert await store.events.last_seq() == 5


async def test_an_append_colliding_on_a_later_page_keeps_what_went_in_and_numbers_on(store, monkeypatch):
    monkeypatch.setattr(eventpages, "MAX", 4)
    # Another appender already wrote seq 5, where this append's second page starts.
    theirs = dict(event("x"), _id=5)
    await store.events.col.insert_one(pages_of([theirs])[0])
    ours = [event(f"j{i}") for i in range(8)]
    assert await store.events.append(ours, 0, 0) == 8
    log = await store.events.since(0)
    assert [e["_id"] for e in log] == list(range(1, 10))
    assert [e["token"] for e in log] == [e["token"] for e in ours[:4]] + [theirs["token"]] + [
        e["token"] for e in ours[4:]
    ]
    assert store.events.top == 9


async def test_a_filtered_read_brings_only_that_jobs_later_events_over_the_wire(store):
    await store.events.col.insert_one(dict(event("a"), _id=1))  # the earlier form
    await store.events.append([event("a"), event("b"), event("a"), event("b")], 0, 1)
    docs = await store.events.col.find({"job_id": "a"}, only(2, "job_id", "a")).sort("_id", 1).to_list(None)
    assert [[e["_id"] for e in d["events"]] for d in docs] == [[1], [4]]  # a page of one comes whole
    assert docs[0]["events"][0]["token"] and set(docs[1]) == {"_id", "last", "events"}
