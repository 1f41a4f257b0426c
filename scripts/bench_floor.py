"""The floors `scripts/bench` shows beside its rows: the same writes without Switchyard's
code, through the same driver and client options (`app.store.connect`), into a `jobs`
collection with Switchyard's indexes.

- The REST single-job submit's floor: a no-op FastAPI POST endpoint that does one
  `insert_one` of a job-sized document, served by uvicorn with serve's HTTP options in a
  process of its own. The bench drives it with the same client loop as `POST /jobs/submit`
  (`bench_switchyard.rest_submit_rate`), so what Switchyard adds above it is its own work:
  auth, validation, admission, dedupe, seqs and counts, events.

      python scripts/bench_floor.py MONGODB_URL PORT

- `enqueue_floor`: one client writing job documents one at a time, as one `insert_one`
  (what Celery's `delay()` and `agenda.now()` send) and as Switchyard's two writes (the
  engine document's `findAndModify`, then the insert).
- `batch_floor`: `insert_many` of 1,000 job documents, the REST batch's own write.
- `insert_while_draining`: a bare `insert_one` loop on an idle deployment and while two
  workers drain a queue: how much the drain slows any writer on this server.
- The relay's floor (`event_sink`): the least an event relay does, run beside a drain with
  Switchyard's relay off: one change stream on `jobs` asked at the relay's busy pace, and
  one insert a reply of the page of its events (an event a status change) into `events`,
  with its indexes (`bench_switchyard.drain(sink=True)`).

      python scripts/bench_floor.py relay MONGODB_URL DB RESUME_TOKEN
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB = "bench_floor"


def make_app(url: str):
    from bson import ObjectId
    from fastapi import FastAPI

    from app.domain.models import JobSpec
    from app.settings import Settings
    from app.store import connect

    st = connect(url, Settings(), db_name=DB)
    # A job document as Switchyard writes it, built once; each request inserts a copy.
    template = st.lifecycle.build(JobSpec(engine="general", operation="noop"), "bench")
    col = st.client[DB]["jobs"]

    @asynccontextmanager
    async def lifespan(_app):
        await st.client.drop_database(DB)
        await st.start()  # Switchyard's indexes on `jobs`, as the other floors have them
        yield
        await st.close()

    api = FastAPI(lifespan=lifespan)

    @api.post("/floor", status_code=201)
    async def floor(body: dict):
        doc = dict(template, _id=str(ObjectId()))
        await col.insert_one(doc)
        return {"id": doc["_id"], "status": doc["status"]}

    return api


def _template(st) -> dict:
    from app.domain.models import JobSpec

    return st.lifecycle.build(JobSpec(engine="general", operation="noop"), "bench")


async def _insert_rate(col, template: dict, seconds: float, engines=None) -> float:
    """Job documents written one at a time for `seconds`; with `engines`, each after a
    `findAndModify` of an engine document, as Switchyard's enqueue does."""
    import time

    from bson import ObjectId
    from pymongo import ReturnDocument

    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        if engines is not None:
            await engines.find_one_and_update(
                {"_id": "floor"}, {"$inc": {"seq.p5": 1, "queued": 1}}, return_document=ReturnDocument.AFTER
            )
        await col.insert_one(dict(template, _id=str(ObjectId())))
        n += 1
    return n / (time.monotonic() - t0)


async def _fresh(url: str, db: str):
    from app.settings import Settings
    from app.store import connect

    st = connect(url, Settings(), db_name=db)
    await st.client.drop_database(db)
    await st.start()  # Switchyard's indexes on `jobs`
    return st


async def enqueue_floor(url: str, seconds: float) -> dict:
    """One client: `one_insert`, an `insert_one` per job; `two_writes`, the engine's
    `findAndModify` and the insert (each on a fresh database)."""
    out = {}
    for name in ("one_insert", "two_writes"):
        st = await _fresh(url, f"bench_floor_{name}")
        try:
            engines = None
            if name == "two_writes":
                engines = st.client[st.db.name]["engines"]
                await engines.insert_one({"_id": "floor", "seq": {"p5": 0}, "queued": 0})
            out[name] = await _insert_rate(st.jobs.col, _template(st), seconds, engines)
        finally:
            await st.close()
    return out


async def batch_floor(url: str, batches: int, size: int = 1000) -> dict:
    """`insert_many` of `size` job documents, `batches` times in a row, one client."""
    import time

    from bson import ObjectId

    st = await _fresh(url, "bench_floor_batch")
    try:
        template, took = _template(st), []
        for _ in range(batches):
            docs = [dict(template, _id=str(ObjectId())) for _ in range(size)]
            t = time.monotonic()
            await st.jobs.col.insert_many(docs, ordered=False)
            took.append(time.monotonic() - t)
        return {"batches": batches, "size": size, "per_s": batches * size / sum(took)}
    finally:
        await st.close()


async def insert_while_draining(url: str, seconds: float, depth: int) -> dict:
    """A bare `insert_one` loop into a collection of its own, beside `serve` and two idle
    workers, then while they drain `depth` no-op jobs queued at once."""
    import asyncio

    import bench_switchyard as sy

    from app.domain.models import JobSpec

    async with sy.serving(url, "bench_floor_busy", workers=2):
        st = connect_to(url, "bench_floor_busy")
        await st.start()  # the clock; the schema is there already
        side = st.client["bench_floor_busy"]["side"]
        try:
            template = _template(st)
            idle = await _insert_rate(side, template, seconds)
            spec = JobSpec(engine="general", operation="noop")
            await st.lifecycle.insert_many([st.lifecycle.build(spec, "bench") for _ in range(depth)])
            await asyncio.sleep(0.5)  # the workers have started
            busy = await _insert_rate(side, template, seconds)
            left = (await st.engines.get("general")).get("queued", 0)
            return {"idle_per_s": idle, "draining_per_s": busy, "ratio": busy / idle, "still_queued": left}
        finally:
            await st.close()


def connect_to(url: str, db: str):
    from app.settings import Settings
    from app.store import connect

    return connect(url, Settings(queue_limits={"general": 10_000}), db_name=db)


async def event_sink(url: str, db: str, start: str, pace: float = 0.05) -> None:
    """Until terminated: the relay's floor, from the resume token `start`. Prints `ready`
    once its stream is open. A round trip at most every `pace` s, as the relay's while
    changes come (app/store/quirks.Pace)."""
    import asyncio
    import time
    from datetime import UTC, datetime

    from pymongo import ASCENDING

    from app.store.eventpages import pages_of

    st = connect_to(url, db)
    events = st.client[db]["events"]
    await events.create_index([("job_id", ASCENDING), ("_id", ASCENDING)], sparse=True)
    await events.create_index([("workflow_id", ASCENDING), ("_id", ASCENDING)], sparse=True)
    status_set = {"updateDescription.updatedFields.status": {"$exists": True}}
    pipeline = [
        {"$match": {"ns.coll": "jobs", "$or": [{"operationType": "insert"}, status_set]}},
        {"$project": {"documentKey": 1, "fullDocument.status": 1, "updateDescription.updatedFields.status": 1}},
    ]
    seq = 0
    async with await st.client[db].watch(pipeline, resume_after={"_data": start}, max_await_time_ms=5_000) as stream:
        print("ready", flush=True)
        while True:
            started = time.monotonic()
            changes = [await stream.try_next()]
            while changes[-1] is not None and len(getattr(getattr(stream, "_cursor", None), "_data", ())):
                changes.append(await stream.try_next())
            docs = []
            for ch in filter(None, changes):
                status = (ch.get("fullDocument") or ch["updateDescription"]["updatedFields"])["status"]
                seq += 1
                docs.append(
                    {
                        "_id": seq,
                        "token": ch["_id"]["_data"],
                        "type": f"job.{status}",
                        "kind": "job",
                        "status": status,
                        "at": datetime.now(UTC),
                        "job_id": ch["documentKey"]["_id"],
                    }
                )
            if docs:
                await events.insert_many(pages_of(docs))  # the log's own form: a page a reply
            await asyncio.sleep(max(0.0, pace - (time.monotonic() - started)))


def main() -> None:
    import asyncio

    if sys.argv[1] == "relay":
        asyncio.run(event_sink(*sys.argv[2:5]))
        return
    import uvicorn

    from app.http_limits import uvicorn_options
    from app.settings import Settings

    url, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(make_app(url), host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(Settings()))


if __name__ == "__main__":
    main()
