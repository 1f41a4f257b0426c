"""The change feed of `jobs` and `workflows`: the database's own log of every write to them,
read through one change stream, resumable by token.

This is the outbox that events come from. Every transition is a single-document write, and
the server records that write in its log atomically with the write itself; reading the log
back (and resuming by token after a crash) is how an event can never be lost between a
transition and its publication. The feed reaches back as far as the server's log does
(the oplog window on MongoDB, `--oplog-retention-seconds` on SecantusDB).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from ..domain.events import JOB_STATIC, WORKFLOW_STATIC
from .db import find_in
from .quirks import BulkGate, Pace

HISTORY_LOST = {260, 280, 286}  # InvalidResumeToken, ChangeStreamFatalError, ChangeStreamHistoryLost


async def next_batch(
    stream, max_batch: int, min_interval: float = 0.0, gate: BulkGate | None = None, pace: Pace | None = None
) -> list[dict]:
    """What the next server reply holds: waits (up to the stream's max await) for the
    first change, then takes only what is already buffered, so no change waits for a later
    one. (The driver has no public count of buffered changes; without the private one this
    yields one change at a time, which is slower but still correct.)

    `min_interval` spaces the server round trips: SecantusDB answers a waiting getMore on
    any write to the database, and each one scans its oplog under a global lock, so a busy
    server would otherwise be asked hundreds of times a second; changes wait on the server
    meanwhile and come in the next reply (after the buffered ones taken here). `pace`
    (quirks.Pace) spaces them instead, by what the last reply brought. `gate` holds the
    round trip while this process writes in bulk."""
    if pace is not None:
        await pace.wait()
    if gate is not None:
        await gate.wait()
    started = time.monotonic()
    first = await stream.try_next()
    rest = min_interval - (time.monotonic() - started)
    if rest > 0:  # at most one round trip per interval, busy or idle
        await asyncio.sleep(rest)
    if first is None:
        if pace is not None:
            pace.done(0, time.monotonic() - started)
        return []
    batch = [first]
    while len(batch) < max_batch and len(getattr(getattr(stream, "_cursor", None), "_data", ())):
        change = await stream.try_next()
        if change is None:
            break
        batch.append(change)
    if pace is not None:
        pace.done(len(batch), 0.0)
    return batch


BULKY = ("parameters", "result", "errors", "steps")


class HistoryLost(Exception):
    """The resume point is older than the server's log: events in between are gone."""


class ChangeFeed:
    def __init__(self, db: AsyncDatabase, gate: BulkGate | None = None) -> None:
        self.db = db
        self.gate = gate
        self.secantus = bool(gate is not None and gate.enabled)  # the gate is on exactly on SecantusDB (db.py)

    async def batches(
        self, resume_token: Any | None, *, max_batch: int = 1000
    ) -> AsyncIterator[tuple[list[dict], Any]]:
        """Yields `(changes, token)`: the changes one server reply brought, in log order,
        and the token to resume after them. An empty batch with a new token means only that
        time passed."""
        pipeline = [
            {
                "$match": {
                    "ns.coll": {"$in": ["jobs", "workflows"]},
                    "operationType": {"$in": ["insert", "update", "replace"]},
                    # A workflow's steps are created with it: its own insert stands for them,
                    # so a 10,000-step workflow is one change here, not 10,001.
                    "$nor": [{"operationType": "insert", "fullDocument.workflow_id": {"$type": "string"}}],
                    # An update means an event only if it sets the status or the progress (a
                    # lease, a heartbeat, a counter does not): most of a running job's writes.
                    "$or": [
                        {"operationType": {"$ne": "update"}},
                        {"updateDescription.updatedFields.status": {"$exists": True}},
                        {"updateDescription.updatedFields.progress": {"$exists": True}},
                    ],
                }
            },
            # Events need none of the bulky fields, and a change event, like a document, may
            # not pass 16 MiB: a result near the cap would stop the relay for good. Removed by
            # name, which is cheap (filtering every updated field by its top-level name cost
            # most of the server's time in the relay's stream): the store sets these fields
            # whole (`result`), or in pieces of bounded size (`errors.3`, a `$push` of an
            # entry of at most 2,000 characters). Nor what the relay does not read (it keeps
            # `_id`, the resume token).
            {
                "$unset": [
                    *(f"fullDocument.{f}" for f in BULKY),
                    *(f"updateDescription.updatedFields.{f}" for f in BULKY),
                    "updateDescription.updatedFields.progress.data",
                    "fullDocument.progress.data",
                    "updateDescription.removedFields",
                    "updateDescription.truncatedArrays",
                    "clusterTime",
                ]
            },
        ]
        try:
            pace = Pace(self.secantus)
            async with await self.db.watch(
                pipeline, resume_after=resume_token, max_await_time_ms=Pace.AWAIT_MS
            ) as stream:
                while stream.alive:
                    batch = await next_batch(stream, max_batch, gate=self.gate, pace=pace)
                    yield batch, stream.resume_token
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST:
                raise HistoryLost(str(exc)) from exc
            raise

    async def position(self) -> Any:
        """A resume token for this moment in the database's log: `batches(position)` later
        yields every change made after it."""
        async with await self.db.watch(
            [{"$match": {"ns.coll": {"$in": ["jobs", "workflows"]}}}], max_await_time_ms=1
        ) as s:
            await s.try_next()
            return s.resume_token

    async def static(self, kind: str, ids: list[str]) -> dict[str, dict]:
        """The unchanging fields of jobs or workflows, by id (a query per 64 ids)."""
        if not ids:
            return {}
        col, fields = (self.db["jobs"], JOB_STATIC) if kind == "job" else (self.db["workflows"], WORKFLOW_STATIC)
        return {d["_id"]: d for d in await find_in(col, ids, None, {f: 1 for f in fields})}
