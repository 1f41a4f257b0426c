"""Entering `queued`: the only code that takes seqs from an engine and counts jobs in its
`queued` counter (`Numbering.enqueue`, app/store/numbering.py).

Invariant: a job gets a fresh, higher seq from its band every time it enters `queued`
(docs/claiming.md), and the engine's `queued` counter moves with it. Every write here is
made inside `Numbering.enqueue`, which counts the jobs before the write; what the write
did not move is given back at once. When the write fails, or its reply is lost, the jobs
are read back: those that are queued with one of the seqs taken here landed, and the count
of the rest is given back, so no failed path leaves a phantom `queued` count. If even the
read-back fails, the counter is left as it is and the reconciler (`EngineStore.reconcile`)
mends it from the jobs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from pymongo import UpdateOne

from ..domain.flowsteps import FLOW_ENGINE
from ..domain.states import JobStatus
from .db import chunks, find_in
from .documents import JobDoc, band_of
from .quirks import BulkGate

QUEUED = JobStatus.QUEUED.value


@dataclass
class TxLedger:
    """What enqueueing inside a caller's transaction leaves for after it (app/producer.py):
    the bands' in-flight `markers` to land, the `queued` count per engine to give back on an
    abort, and steps to move once committed (`ready`)."""

    markers: list[tuple[str, str]] = field(default_factory=list)
    queued: Counter = field(default_factory=Counter)
    ready: list[JobDoc] = field(default_factory=list)


class Enqueuer:
    def __init__(self, col, engines, numbers, clock, gate: BulkGate) -> None:
        self.col, self.engines, self.numbers, self.clock, self.gate = col, engines, numbers, clock, gate

    async def _enter(
        self, engine: str, key: str, members: list[JobDoc], span: int, write: Callable[[int], Awaitable[int]]
    ) -> int:
        """Take `span` seqs of band `key` for `members`, run `write(first)`, which returns how
        many of them it moved, and give back the count of the rest. Returns how many moved."""
        async with self.numbers.enqueue(engine, key, span, jobs=len(members)) as first:
            try:
                moved = await write(first)
            except BaseException:
                moved = await self._landed(members, first, span)
                await self.numbers.count_left_queue(engine, len(members) - moved)
                if not moved:
                    raise
                return moved
        await self.numbers.count_left_queue(engine, len(members) - moved)
        return moved

    async def _landed(self, members: list[JobDoc], first: int, span: int) -> int:
        """How many of `members` hold one of the seqs taken (a write whose reply was lost).
        Whatever their status now: a claim keeps the seq, and one that took the job already
        counted it out. Raises if the read fails too: then the count stays for the reconciler."""
        docs = await find_in(self.col, [m["_id"] for m in members], None, {"seq": 1})
        return sum(first <= d.get("seq", -1) < first + span for d in docs)

    async def insert(self, docs: list[JobDoc], session=None, deferred: list | None = None) -> int:
        """Insert new job documents (`new_job_document` output); queued ones take their seqs
        with one `$inc` per (engine, band). Returns how many queued jobs landed. Every job of
        an engine with a limit key gets its key's lane first: it keeps it for life.

        `session`: the jobs are written in the caller's transaction, while the seqs, counts
        and markers are taken outside it (the engine document is every claimer's: holding it
        in a transaction would stall them). The markers go to `deferred` for the caller to
        land after the commit; after an abort it gives the counts back (app/producer.py)."""
        await self.engines.keys.assign(docs)
        groups: dict[tuple[str, str], list[JobDoc]] = defaultdict(list)
        for d in docs:
            if d["status"] == QUEUED:
                groups[(d["engine"], band_of(d))].append(d)
        for engine in {d["engine"] for d in docs} - {e for e, _ in groups} - {FLOW_ENGINE}:  # no queue of its own
            await self.engines.ensure(engine)
        # Every band's numbers are taken before one `insert_many` writes them all (a
        # 10,000-step workflow is one insert).
        async with AsyncExitStack() as stack:
            for (engine, key), members in groups.items():
                first = await stack.enter_async_context(
                    self.numbers.enqueue(engine, key, len(members), deferred=deferred)
                )
                for n, d in enumerate(members):
                    d["seq"] = first + n
            try:
                if session is not None:
                    await self.col.insert_many(docs, ordered=False, session=session)
                else:
                    async with self.gate.hold(len(docs)):
                        await self.col.insert_many(docs, ordered=False)
            except BaseException:
                if session is not None:  # nothing of a failed write in a transaction stays
                    for (engine, _), members in groups.items():
                        await self.numbers.count_left_queue(engine, len(members))
                    raise
                # Lost reply, or some documents refused (a duplicate _id): what landed holds
                # our seq, whatever its status now (a worker may have claimed it already);
                # the rest is given back, and any loss is raised.
                found = {
                    d["_id"]: d.get("seq") for d in await find_in(self.col, [d["_id"] for d in docs], None, {"seq": 1})
                }
                missing = 0
                for (engine, _), members in groups.items():
                    gone = sum(found.get(d["_id"]) != d["seq"] for d in members)
                    await self.numbers.count_left_queue(engine, gone)
                    missing += gone
                unqueued = [d["_id"] for d in docs if d["status"] != QUEUED]
                if missing or len(await find_in(self.col, unqueued, None, {"_id": 1})) < len(unqueued):
                    raise
        return sum(len(m) for m in groups.values())

    async def move(self, jobs: list[JobDoc], guard: dict[str, Any], update: dict[str, Any]) -> int:
        """Move existing `jobs` into queued with fresh seqs: one `$inc` per band and one
        `bulk_write` of `update_one`s, each guarded by `guard` plus its `_id` (a `None` value
        in `guard` means "the value this job was read with"). `update` is added to the move's
        own `$set`. Returns how many moved."""
        groups: dict[tuple[str, str], list[JobDoc]] = defaultdict(list)
        for j in jobs:
            groups[(j["engine"], band_of(j))].append(j)
        now = self.clock.now()
        moved = 0
        for (engine, key), members in groups.items():

            async def write(first: int, members=members) -> int:
                ops = [
                    UpdateOne(
                        {"_id": j["_id"], **{k: (j[k] if v is None else v) for k, v in guard.items()}},
                        {
                            **update,
                            "$set": {**update.get("$set", {}), "status": QUEUED, "seq": first + i, "queued_at": now},
                        },
                    )
                    for i, j in enumerate(members)
                ]
                return (await self.col.bulk_write(ops, ordered=False)).modified_count

            moved += await self._enter(engine, key, members, len(members), write)
        return moved

    async def ready(self, steps: list[JobDoc], exact: bool = False) -> int:
        """pending → queued for steps with nothing left to wait on: one `update_many` per
        (engine, band) and chunk, the seq computed on the server from each step's `ord` (its
        place in the workflow), so a fan-out of thousands is a few dozen writes. The numbers
        may be sparse; windows skip gaps. `exact`: guarded on the exact `waiting_on` map read,
        for a fan-out's direct children."""
        groups: dict[tuple, list[JobDoc]] = defaultdict(list)
        for s in steps:
            # The map's keys in the order read: on MongoDB equality on an embedded document
            # compares field order too, and the server returns the stored order.
            waited = tuple(s.get("waiting_on") or {}) if exact else ()
            groups[(s["engine"], band_of(s), waited)].append(s)
        moved = 0
        for (engine, key, waited), group in groups.items():
            group.sort(key=lambda m: m["ord"])
            # One enqueue per chunk: the band's cursor waits only for its own chunk, so
            # workers start on the first steps while later chunks are still being written.
            for members in chunks(group):
                lo, span = members[0]["ord"], members[-1]["ord"] - members[0]["ord"] + 1

                async def write(first: int, members=members, lo=lo, waited=waited) -> int:
                    res = await self.col.update_many(
                        {
                            "_id": {"$in": [m["_id"] for m in members]},
                            "status": JobStatus.PENDING.value,
                            "waiting_on": {p: 1 for p in waited},
                        },
                        [
                            {
                                "$set": {
                                    "status": QUEUED,
                                    "seq": {"$add": [first - lo, "$ord"]},
                                    "queued_at": self.clock.now(),
                                    "waiting_on": {"$literal": {}},
                                }
                            }
                        ],
                    )
                    return res.modified_count

                moved += await self._enter(engine, key, members, span, write)
        return moved

    async def left(self, engine: str, n: int) -> None:
        """`n` jobs of `engine` left queued other than by a claim (a cancel)."""
        await self.numbers.count_left_queue(engine, n)
