"""The `events` collection: the ordered, expiring log of job and workflow events (expired
by `EventRetention`, app/store/retention.py), stored in pages of consecutive events
(app/store/eventpages.py): what an append inserts is one page, or a few.

An event's `_id` is its seq, given here at append; `token` is the change it came from (see
app/domain/events.py). Invariant: seqs are given in change order, one after the last seq in
the log, and inserted in that order, so the events visible at any moment are a prefix of the
log, without gaps. That is what lets a reader that has seen seq N ask for `_id > N` and get
no gaps and no duplicates, and why `tail` may switch freely between what this process's
relay hands over, the change stream and polling.

A change yields one event: an appender knows the log up to a seq (`last`), and one that
finds that seq's successor taken (a deposed relay still finishing, or its successor) reads
the events past it and drops those whose token is among them before it numbers the rest
again. The relay's takeover covers the changes it replays (`tokens_after`). No unique index
on `token` is needed, which saves every insert a unique check (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure
from pymongo.read_concern import ReadConcern

from ..domain.redact import redact
from ..logs import get_logger
from .db import ensure_index
from .eventpages import MAX, events_in, from_page, last_of, only, pages_of
from .feed import next_batch
from .quirks import Pace
from .retention import EventRetention

log = get_logger("switchyard.events")
REDACTED = ("name", "progress", "error", "reason")
RELAY_LEASE = "event-relay"  # app/notifications/relay.py: its checkpoint holds a seq the log reached


class EventStore:
    def __init__(self, db: AsyncDatabase, settings, gate=None) -> None:
        self.db = db
        self.col = db["events"]
        # What an appender decides from reading the log (where it ends, which changes are
        # in) it reads majority-committed: a write it saw that a failover then rolled back
        # would otherwise leave a gap, or a change skipped for an event that is gone.
        self.committed = self.col.with_options(read_concern=ReadConcern("majority"))
        self.retention = EventRetention(self.col, settings)  # its head mark floors `last_seq`
        self.settings = settings
        self.gate = gate
        self.secantus = bool(gate is not None and gate.enabled)  # the gate is on exactly on SecantusDB (db.py)
        # This process's relay, while it leads, hands what it appended to this process's
        # tails (`_local`), which then need no change stream (see `tail`).
        self.local = False
        self._local: set[_Inbox] = set()
        self.top = 0  # the seq of the last event `append` inserted

    async def ensure_indexes(self) -> None:
        c = self.col
        # A page's jobs and workflows (arrays: multikey; an event of the earlier form holds one).
        # Sparse, not partial: SecantusDB's planner never uses a partial index for these.
        await ensure_index(c, [("job_id", ASCENDING), ("_id", ASCENDING)], sparse=True)
        await ensure_index(c, [("workflow_id", ASCENDING), ("_id", ASCENDING)], sparse=True)
        # Indexes of earlier versions: expiry reads `_id` windows (app/store/retention.py)
        # where a TTL index cost every insert an entry and, on SecantusDB, a sweep of the log;
        # an event's identity is kept by `append` where a unique index on `token` cost every
        # insert a unique check.
        for gone in {"retention", "token"} & set(await c.index_information()):
            try:
                await c.drop_index(gone)
            except OperationFailure as exc:
                if exc.code != 27:  # IndexNotFound: another process dropped it first
                    raise

    async def append(self, events: list[dict], floor: int = 0, last: int | None = None) -> int:
        """Give `events` (in change order) the seqs after the log's last (and after `floor`,
        a seq the log once reached: expiry may have emptied it), and insert them in that
        order, in one insert of their pages. `last`: the log's last seq as the caller knows
        it (the leading relay counts them), which saves asking; the caller has made sure no
        event at or below it is one of these (the relay's takeover reads `tokens_after` its
        checkpoint). `last` and `floor` are seqs the log ended at, never one inside a page
        (app/store/eventpages.py): what `top`, `last_seq` and a checkpoint hold. Past it, an
        event whose token is already in the log is skipped: a guess that is behind costs a
        read and a retry, never a gap or a duplicate. Returns how many were new; each event
        holds the seq it was last given, and `top` the last seq inserted."""
        for e in events:  # what jobs wrote freely; the rest (ids, type, token) is ours
            for f in REDACTED:
                if f in e:
                    e[f] = redact(e[f])
        added, todo, clean = 0, events, True
        for _ in range(len(events) + 10):
            if not todo:
                break
            base = max(await self.last_seq() if last is None else last, floor)
            for i, e in enumerate(todo):
                e["_id"] = base + 1 + i
            pages = pages_of(todo)
            try:
                await self.col.insert_many(pages, ordered=True)
                added += len(todo)
                self.top = todo[-1]["_id"]
                break
            except BulkWriteError as exc:
                errors, clean = exc.details.get("writeErrors", []), False
                if not errors or not all(_seq_taken(e) for e in errors):
                    raise
                at = sum(len(p["events"]) for p in pages[: errors[0]["index"]])  # ordered: those went in
                added += at
                if at:
                    self.top = todo[at - 1]["_id"]
                # Another appender took that seq. It may have written some of these same
                # changes (a deposed relay still finishing, or the one that took over).
                # One read of the events past what went in says which, and where the log
                # ends: it grows only at its end, so what is added after this read lands
                # past the new `last`, where the next insert finds it taken.
                after = todo[at]["_id"] - 1
                found = await self._after(after)
                last, seen = max([after, *found]), set(found.values())
                todo = [e for e in todo[at:] if e.get("token") not in seen]
                if after + 1 not in found:  # the seq is taken by a write not yet committed
                    await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"events: {len(todo)} still unwritten after {len(events) + 10} tries")
        if added:
            # Handed over as inserted when every event went in as first numbered (the common
            # case); after a skip or a renumbering the tails read the log instead.
            for inbox in list(self._local):
                inbox.put(events if clean else [], stale=not clean)
        return added

    async def tokens_after(self, seq: int) -> set[str]:
        """The tokens of the events after `seq`: what a relay taking over from a checkpoint
        at `seq` may replay."""
        return {t for t in (await self._after(seq)).values() if t}

    async def _after(self, seq: int) -> dict[int, str | None]:
        start = await self._start(self.committed, seq)
        fields = {"token": 1, "last": 1, "events._id": 1, "events.token": 1}
        pages = await self.committed.find({"_id": start}, fields).to_list(None)
        return {e["_id"]: e.get("token") for p in pages for e in events_in(p, seq)}

    @staticmethod
    async def _start(col, after: int) -> dict:
        """The `_id` range of the pages with events after seq `after`: the page that holds
        `after + 1` starts at most MAX seqs before it (one bounded read)."""
        before = await col.find({"_id": {"$lte": after, "$gt": after - MAX}}, {"last": 1}).sort("_id", -1).to_list(1)
        return from_page(before, after)

    async def last_seq(self) -> int:
        """The log's last seq (or the last it reached, when expiry emptied it: the relay's
        checkpoint, and expiry's head mark, are floors). Read from the relay's checkpoint on:
        a sorted read of the whole log grows with it on SecantusDB (200 ms at 20,000
        events), the events after a checkpoint are at most a minute's."""
        lease = await self.db["leases"].find_one({"_id": RELAY_LEASE}, {"state.seq": 1})
        checkpoint = int(((lease or {}).get("state") or {}).get("seq") or 0)
        floor = max(self.top, checkpoint, await self.retention.head() - 1)
        doc = await self.committed.find_one({"_id": {"$gt": floor - MAX}}, {"last": 1}, sort=[("_id", -1)])
        return max(last_of(doc), floor) if doc else floor

    async def since(
        self, after: int, *, job_id: str | None = None, workflow_id: str | None = None, limit: int = 1000
    ) -> list[dict]:
        """Events after seq `after`, oldest first, for one job, one workflow, or all."""
        after = int(after)
        job_id = None if job_id is None else str(job_id)
        workflow_id = None if workflow_id is None or job_id is not None else str(workflow_id)
        filt: dict = {"_id": await self._start(self.col, after)}
        fields = None
        if job_id is not None:
            filt["job_id"] = job_id
            fields = only(after, "job_id", job_id)
        elif workflow_id is not None:
            filt["workflow_id"] = workflow_id
            fields = only(after, "workflow_id", workflow_id)
        out: list[dict] = []
        # A page holds at least one event after `after`, except the first (the one holding
        # `after` itself may hold none of these): `limit + 1` pages at most.
        cursor = self.col.find(filt, fields).sort("_id", 1).limit(limit + 1).batch_size(min(limit + 1, 64))
        try:
            async for page in cursor:
                out += events_in(page, after, job_id, workflow_id)
                if len(out) >= limit:
                    break
        finally:
            await cursor.close()
        return out[:limit]

    async def tail(self, after: int, poll_seconds: float = 0.5) -> AsyncIterator[list[dict]]:
        """Batches of new events after seq `after`, forever, in seq order: from what this
        process's relay appends while it leads (no round trip at all), else from a change
        stream while the server gives one, else by polling."""
        last = after
        while True:
            try:
                if self.local:
                    async for batch in self._follow_local(last):
                        last = batch[-1]["_id"]
                        yield batch
                    continue
                async with await self.col.watch(
                    [{"$match": {"operationType": "insert"}}], max_await_time_ms=Pace.AWAIT_MS
                ) as stream:
                    # Opened first, caught up second: nothing written in between is missed.
                    while batch := await self.since(last):
                        last = batch[-1]["_id"]
                        yield batch
                    pace = Pace(self.secantus, busy=0.04)
                    while stream.alive and not self.local:
                        batch = [
                            e
                            for c in await next_batch(stream, 1000, gate=self.gate, pace=pace)
                            if c.get("fullDocument")
                            for e in events_in(c["fullDocument"], last)
                        ]
                        if batch:
                            last = batch[-1]["_id"]
                            yield batch
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # no change streams here (or they broke): poll a while
                log.warning("events.tail_polling", error=repr(exc))
                for _ in range(20):
                    while batch := await self.since(last):
                        last = batch[-1]["_id"]
                        yield batch
                    await asyncio.sleep(poll_seconds)

    async def _follow_local(self, last: int) -> AsyncIterator[list[dict]]:
        """What this process's relay appends, while it leads. Listening first, caught up
        second; any gap (an event this process did not append, a skip, an overflow) is read
        from the log, so the batches stay the log's prefix, in order."""
        inbox = _Inbox()
        self._local.add(inbox)
        try:
            while batch := await self.since(last):
                last = batch[-1]["_id"]
                yield batch
            while self.local:
                events = await inbox.get(timeout=1.0)  # and look again whether we still lead
                if events is None:
                    continue
                fresh = [e for e in events if e["_id"] > last]
                if not inbox.take_stale() and all(e["_id"] == last + 1 + i for i, e in enumerate(fresh)):
                    if fresh:
                        last = fresh[-1]["_id"]
                        yield fresh
                    continue
                while batch := await self.since(last):
                    last = batch[-1]["_id"]
                    yield batch
        finally:
            self._local.discard(inbox)


class _Inbox:
    """One local tail's queue of appended events. Bounded: past it, or after an append that
    was not clean, it is `stale` and the tail reads the log instead."""

    MAX = 10_000

    def __init__(self) -> None:
        self.items: list[dict] = []
        self.stale = False
        self._ready = asyncio.Event()

    def put(self, events: list[dict], stale: bool = False) -> None:
        if stale or len(self.items) + len(events) > self.MAX:
            self.items.clear()
            self.stale = True
        else:
            self.items.extend(events)
        self._ready.set()

    def take_stale(self) -> bool:
        stale, self.stale = self.stale, False
        return stale

    async def get(self, timeout: float) -> list[dict] | None:
        """What came since the last call, or None after `timeout` with nothing."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return None
        self._ready.clear()
        items, self.items = self.items, []
        return items


def _seq_taken(error: dict) -> bool:
    """A write error of an insert into the log that means another appender took the seq:
    a duplicate `_id`. Any other error (another unique index) is not for `append` to retry."""
    if error.get("code") != 11000:
        return False
    pattern = error.get("keyPattern")
    return pattern == {"_id": 1} if pattern else " _id_ " in str(error.get("errmsg", ""))
