"""Event completeness, BSON-sized batches, start-up after a changed setting, and start-up on
an older or a newer schema, on any server."""

from __future__ import annotations

import asyncio
import uuid

from app.domain.models import JobSpec
from app.notifications.relay import EventRelay
from app.store import connect
from app.store.db import SCHEMA_VERSION
from app.store.lifecycle import Exit
from app.worker import outcome as oc
from tests.helpers import eventually


async def test_n_transitions_give_exactly_n_events_with_unique_ids(store, settings, jobs):
    relay = EventRelay(store, settings, lease_seconds=2.0)
    task = asyncio.create_task(relay.run())
    try:

        async def leading():
            return relay.leading

        await eventually(leading)
        made = [await jobs.completed(engine="ev") for _ in range(10)]  # queued, running, completed each

        async def all_in():
            return len([e for e in await store.events.since(0) if e.get("engine") == "ev"]) >= 30

        await eventually(all_in)
        events = [e for e in await store.events.since(0) if e.get("engine") == "ev"]
        assert len(events) == 30 and len({e["_id"] for e in events}) == 30 and len({e["token"] for e in events}) == 30
        assert sorted({e["job_id"] for e in events}) == sorted(j["_id"] for j in made)
        seqs = [e["_id"] for e in await store.events.since(0)]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gap-free
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_results_at_the_cap_complete_in_one_batch(store, jobs):
    """Three results near the cap are more than one command may carry: the batch is split
    by encoded size, and every job completes."""
    near_cap = "x" * (oc.MAX_RESULT_BYTES - 1024)
    assert isinstance(oc.classify_result({"blob": near_cap}), oc.Success)
    claimed = [await jobs.running(engine="big") for _ in range(3)]
    lost = await store.lifecycle.leave_running(
        [Exit(j, j["lease_token"], "complete", result={"blob": near_cap}, execution_ms=1) for j in claimed]
    )
    assert lost == set()
    for j in claimed:
        doc = await store.jobs.get(j["_id"])
        assert doc["status"] == "completed" and len(doc["result"]["blob"]) == len(near_cap)


async def test_the_result_cap_is_measured_in_bson():
    ints = list(range(2_000_000))  # about 15 MB as JSON, more as BSON (each element carries its index)
    out = oc.classify_result(ints[:1_500_000])
    assert isinstance(out, oc.Failure) and out.code == "result_too_large"


async def test_start_up_after_a_retention_setting_changed(db_url, settings, store):
    changed = settings.model_copy(update={"event_retention_seconds": settings.event_retention_seconds + 3600})
    again = connect(db_url, changed, db_name=store.db.name)
    await again.start()  # IndexOptionsConflict unless collMod
    try:
        info = await again.db["notifications"].index_information()
        assert info["retention"]["expireAfterSeconds"] == changed.event_retention_seconds * 4
        assert "retention" not in await again.db["events"].index_information()  # expired by range
        await again.lifecycle.submit(JobSpec(engine="up", operation="ok"), owner="admin")
    finally:
        await again.close()


async def test_only_one_process_migrates_and_a_current_database_is_left_alone(db_url, settings, store):
    """`store` migrated its fresh database at start; more processes starting at once find it
    current and build nothing."""
    from pymongo import monitoring

    class Builds(monitoring.CommandListener):
        n = 0

        def started(self, event):
            if event.command_name == "createIndexes" and event.database_name == store.db.name:
                Builds.n += 1

        def succeeded(self, event):
            pass

        def failed(self, event):
            pass

    others = [connect(db_url, settings, db_name=store.db.name, event_listeners=[Builds()]) for _ in range(3)]
    try:
        await asyncio.gather(*(o.start() for o in others))
        assert Builds.n == 0
        assert await store.db["meta"].find_one({"_id": "schema"}, {"_id": 0}) == store.schema()
    finally:
        for o in others:
            await o.close()


async def test_the_exact_fan_out_guard_matches_the_map_as_stored(store, jobs):
    """A fan-out's child is queued guarded on its whole `waiting_on` map; MongoDB compares
    an embedded document's field order too, so the guard uses the order the server returns."""
    doc = store.lifecycle.build(jobs.spec(), "admin", workflow_id="wf-order", step_key="c", depends_on=["zz", "aa"])
    doc.update(status="pending", waiting_on={"zz": 1, "aa": 1}, parent_ids=["zz", "aa"], ord=0)  # not sorted
    doc.pop("queued_at", None)
    await store.lifecycle.insert_many([doc])
    (read,) = await store.jobs.by_ids(
        [doc["_id"]], None, {"engine": 1, "priority": 1, "tenant": 1, "ord": 1, "waiting_on": 1}
    )
    assert await store.enqueuer.ready([read], exact=True) == 1
    assert (await store.jobs.get(doc["_id"]))["status"] == "queued"


async def test_switchyard_migrate_brings_a_database_to_the_schema(db_url, settings, store):
    import os
    import subprocess
    import sys

    name = store.db.name + "_m"
    env = {**os.environ, "MONGODB_URL": db_url, "MONGODB_DB": name, "SWITCHYARD_LOG_LEVEL": "WARNING"}
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    try:
        assert out.returncode == 0, out.stderr
        meta = await store.client[name]["meta"].find_one({"_id": "schema"}, {"_id": 0})
        assert meta == store.schema()
        assert "retention" in await store.client[name]["jobs"].index_information()
    finally:
        await store.client.drop_database(name)


async def test_change_events_carry_no_results_errors_or_progress_data(store, jobs):
    """A change event may not pass 16 MiB either: the relay's stream leaves out the bulky
    fields, so a result at the cap cannot stop it."""
    seen: list[dict] = []

    async def consume():
        async for changes, _ in store.feed.batches(None):
            seen.extend(changes)

    task = asyncio.create_task(consume())
    try:
        await asyncio.sleep(0.5)
        job = await jobs.running(engine="feed")
        await store.lifecycle.progress(job["_id"], job["lease_token"], 50, "half", {"big": "x" * 1000})
        await store.lifecycle.complete(job, job["lease_token"], {"blob": "x" * (oc.MAX_RESULT_BYTES - 1024)}, 1)

        async def completed():
            return any(
                (c.get("updateDescription") or {}).get("updatedFields", {}).get("status") == "completed" for c in seen
            )

        await eventually(completed)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    updates = [c["updateDescription"]["updatedFields"] for c in seen if c["operationType"] == "update"]
    assert not [u for u in updates if any(k.split(".")[0] in ("result", "errors", "parameters") for k in u)]
    progress = [u["progress"] for u in updates if "progress" in u]
    assert progress and all("data" not in p for p in progress)


async def test_start_migrates_an_older_schema_and_records_this_ones(store):
    meta = store.db["meta"]
    await meta.replace_one({"_id": "schema"}, {"version": SCHEMA_VERSION - 1}, upsert=True)
    await store.events.col.create_index("at", expireAfterSeconds=3600, name="retention")  # older versions'
    await store.events.col.create_index("token", unique=True, sparse=True, name="token")
    await store.start()
    assert await meta.find_one({"_id": "schema"}, {"_id": 0}) == store.schema()
    assert {"retention", "token"}.isdisjoint(await store.events.col.index_information())


def _changes(n: int) -> list[dict]:
    return [
        {"token": uuid.uuid4().hex, "type": "job.queued", "kind": "job", "status": "queued", "job_id": f"j{i}"}
        for i in range(n)
    ]


async def _log(store) -> list[tuple[int, str]]:
    return [(e["_id"], e["token"]) for e in await store.events.since(0)]


async def test_two_relays_appending_the_same_changes_log_each_once_in_order(store, db_url, settings):
    """A deposed relay still finishing and the one that took over append the same changes,
    each from where it last knew the log, in either order and overlapping: each change
    is in the log once, and seqs stay consecutive."""
    other = connect(db_url, settings, db_name=store.db.name)
    await other.start()
    try:
        start = await store.events.last_seq()
        changes = _changes(8)
        assert await store.events.append([dict(c) for c in changes[:5]], last=start) == 5  # the deposed one
        # the successor knew the log up to `start`: it replays all 8
        assert await other.events.append([dict(c) for c in changes], last=start) == 3
        # the deposed one finishes its next batch, late: all of it is in already
        assert await store.events.append([dict(c) for c in changes[5:]], last=start + 5) == 0
        log = await _log(store)
        assert [t for _, t in log] == [c["token"] for c in changes]
        assert [seq for seq, _ in log] == list(range(start + 1, start + 9))
        # others' events in between are kept, and only the copies are skipped
        more = _changes(4)
        assert await other.events.append([dict(c) for c in more[:2]], last=start + 8) == 2
        assert await store.events.append([dict(c) for c in more], last=start + 8) == 2
        assert [t for _, t in await _log(store)] == [c["token"] for c in changes + more]
    finally:
        await other.close()


async def test_an_appender_raced_right_after_its_read_still_logs_each_change_once(store, db_url, settings):
    """The other appender writes between the read that follows a collision and the next
    insert: that insert finds its seq taken again, so nothing is written twice."""
    other = connect(db_url, settings, db_name=store.db.name)
    await other.start()
    try:
        start = await store.events.last_seq()
        changes = _changes(8)
        assert await other.events.append([dict(c) for c in changes[:2]], last=start) == 2
        read, raced = store.events._after, []

        async def read_then_race(seq):
            found = await read(seq)
            if not raced:
                raced.append(seq)
                assert await other.events.append([dict(c) for c in changes[2:6]], last=start + 2) == 4
            return found

        store.events._after = read_then_race
        assert await store.events.append([dict(c) for c in changes], last=start) == 2
        assert raced == [start]
        log = await _log(store)
        assert [t for _, t in log] == [c["token"] for c in changes]
        assert [seq for seq, _ in log] == list(range(start + 1, start + 9))
    finally:
        store.events.__dict__.pop("_after", None)
        await other.close()


async def test_what_an_appender_reads_of_the_log_is_majority_committed_and_sees_its_appends(store):
    """The log's end and the tokens past a seq decide what `append` numbers and skips: read
    majority-committed, so a write that a failover rolls back cannot leave a gap or a
    skipped change. An acknowledged append (written with majority) is in those reads."""
    assert store.events.committed.read_concern.level == "majority"
    start = await store.events.last_seq()
    changes = _changes(3)
    assert await store.events.append([dict(c) for c in changes], last=start) == 3
    store.events.top = 0  # last_seq would otherwise start from this process's own count
    assert await store.events.last_seq() == start + 3
    assert await store.events.tokens_after(start) == {c["token"] for c in changes}


async def test_a_relay_taking_over_skips_what_its_predecessor_logged_after_the_checkpoint(store, settings):
    """The predecessor appended, then died before saving its checkpoint: the successor
    replays from the checkpoint and adds nothing twice."""
    start = await store.events.last_seq()
    changes = _changes(6)
    await store.events.append([dict(c) for c in changes[:4]], last=start)
    done = await store.events.tokens_after(start)  # what EventRelay.lead reads at takeover
    replay = [dict(c) for c in changes if c["token"] not in done]
    assert await store.events.append(replay, last=await store.events.last_seq()) == 2
    assert [t for _, t in await _log(store)] == [c["token"] for c in changes]


async def test_start_leaves_a_newer_schema_alone(store):
    """Mid rolling deploy an older process must not migrate back what a newer one migrated."""
    meta = store.db["meta"]
    newer = {"version": SCHEMA_VERSION + 1, "event_retention_seconds": 60}
    await meta.replace_one({"_id": "schema"}, newer, upsert=True)
    await store.events.col.drop_indexes()
    await store.start(wait_seconds=1)
    assert await meta.find_one({"_id": "schema"}, {"_id": 0}) == newer
    assert list(await store.events.col.index_information()) == ["_id_"]  # nothing re-created
