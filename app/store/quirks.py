"""The embedded server's quirks: what the store does differently because SecantusDB, the
embedded default, is not MongoDB, and what each choice costs on MongoDB.

Decided here, per server:
- **No `timeoutMS` on SecantusDB.** It recognises a retried write (the driver's one retry
  after a dropped connection) only when the retry is byte-identical to the first attempt,
  `maxTimeMS` included, and with `timeoutMS` set the driver sends the time left, which
  differs. A retried insert then fails with a duplicate key, and a retried `$inc` is applied
  twice (measured with tests/faultproxy.py, 2026-12-02, SecantusDB 0.7.0b3). On SecantusDB
  the store only bounds server selection (`serverSelectionTimeoutMS`); a socket timeout
  there kept a cancelled change-stream read from returning (the hub's shutdown hung).
  Cost on MongoDB: none; MongoDB gets `timeoutMS`, which it handles per the manual.

- **Plans as SecantusDB explains them** (`PLAN_ALLOWANCES`, read by the conformance suite,
  tests/conformance/plans.py): its `explain` shows an in-memory `SORT` above an index scan
  that already yields the sort order (the claim window), and a range on `_id` sorted by
  `_id` (the events log's `since`) as a collection scan, and it applies a sorted query's
  limit after the index scan, so a page of a tenant's jobs newest first examines every key
  of the tenant (or of the tenant and status) rather than one page. The suite still demands on
  SecantusDB what it can check there (an index scan with bounded keys where one is
  reported); on MongoDB it demands everything. Cost on MongoDB: none.

Kept where the code they shape lives (each says so in a comment), all correct on MongoDB:

| workaround | where | cost on MongoDB |
|---|---|---|
| `_id $in` lists chunked to `IN_CHUNK` ids (SecantusDB compares each document with the whole list) | `db.chunks`, `find_in`, `update_in` | one round trip more per 64 ids |
| claim windows bounded on both sides, plain equality in hot filters (no `$in`/`$or` on indexed fields) | `claimer.py` | none: the same queries are index-bounded |
| never `find_one_and_update` on `jobs` (it scans on SecantusDB) | `claimer.py`, `lifecycle.py` | a claim is two commands, not one |
| sparse rather than partial indexes (SecantusDB's planner ignores partial ones) | `jobs.py`, `events.py`, `retention.py` | slightly larger indexes |
| retention by a sparse `expires_at` range, not a TTL index on `jobs` (its sweeper decodes every document) | `retention.py` | a sweep query a minute |
| new jobs stored without their empty fields (every update re-encodes the whole document) | `app/domain/models.py` `SPARSE_FIELDS` | none |
| bulk inserts hold this process's change streams (`BulkGate`) | here; used by `enqueue.py`, `feed.py`, `events.py` | none: off on MongoDB |
| wake streams pace their round trips (a waiting `getMore` returns on any write) | here (`wake_pace`, `wake_spacing`); used by `app/worker/loops.py`, `maintenance.py` | none: no spacing on MongoDB |
| the event streams (relay, hub) pause after an empty reply (`Pace`) | here; used by `feed.py`, `events.py` | none: no pause on MongoDB |
| a racing upsert through `findAndModify` may answer nothing: read back (`upserted`) | here; used by `leases.py` | none: MongoDB never answers nothing |
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from functools import lru_cache

IN_CHUNK = 64  # most ids in one `_id: {$in: [...]}` (see the table above)
WAKE_SPACING = 0.02  # seconds between a worker's wake-stream round trips, on SecantusDB only
PLAN_ALLOWANCES = frozenset({"sort_over_index_scan", "id_range_scan", "limit_after_scan"})  # on SecantusDB only


@lru_cache(maxsize=32)
def is_secantus(url: str) -> bool:
    """Whether the server at `url` is SecantusDB (its `buildInfo` says so). A server that
    does not answer within 2 s is taken for MongoDB."""
    from pymongo import MongoClient

    try:
        with MongoClient(url, serverSelectionTimeoutMS=2_000, connectTimeoutMS=2_000) as c:
            return "secantusVersion" in c.admin.command("buildInfo")
    except Exception:
        return False


def timeout_options(url: str, timeout_ms: int, secantus: bool | None = None) -> dict:
    """The client's time limits: `timeoutMS` on MongoDB, the older per-phase limits on
    SecantusDB (see the module's docstring). `secantus` saves asking the server (a caller
    whose own event loop serves the way to it, such as a test proxy, must say)."""
    if is_secantus(url) if secantus is None else secantus:
        return {"serverSelectionTimeoutMS": timeout_ms}
    return {"timeoutMS": timeout_ms, "serverSelectionTimeoutMS": timeout_ms}


def wake_spacing(secantus: bool) -> float:
    """Seconds between a due stream's round trips (app/worker/maintenance.py): SecantusDB
    answers a waiting `getMore` on any write, so there an unspaced stream is a poll loop;
    MongoDB's waits for a match."""
    return WAKE_SPACING if secantus else 0.0


def wake_pace(secantus: bool) -> Pace:
    """The pacing of a worker's wake stream. SecantusDB answers a waiting `getMore` on any
    write, so there an unpaced stream is a poll loop. After a quiet spell it asks again at
    once (a reply that waited 0.1 s or more); replies that come sooner, with changes or
    not, space its round trips from 2 ms up to `WAKE_SPACING`, so the enqueue's own writes
    (its counter, then the job's insert) do not push back the wake-up that follows them by
    a whole spacing, and a stream on a busy server still asks at most every `WAKE_SPACING`.
    Cost on MongoDB: none (no pause: it answers only a match, or at the end of the wait)."""
    return Pace(secantus, busy=0.002, idle_max=WAKE_SPACING, quiet=0.1, batches=False)


async def upserted(doc: dict | None, read_back) -> dict | None:
    """What a `find_one_and_update(upsert=True, return_document=AFTER)` left. When racing
    upserts of one `_id` meet, SecantusDB answers one of them with nothing (16 first takers
    of a lease: 236 of 800 got None), where MongoDB returns the document or raises
    DuplicateKeyError: read the document back (`read_back()`). Cost on MongoDB: none."""
    return doc if doc is not None else await read_back()


class BulkGate:
    """This process's large inserts, during which its change streams hold their next round
    trip. On SecantusDB every open change stream decodes every write to the database under
    the storage lock, interleaved with the write itself: a 10,000-step workflow's insert took
    0.8 s longer with the relay's and the hub's streams open (docs/benchmarks.md). Held, the
    streams read the same changes right after, from where they were, so nothing is lost;
    this process's live events wait meanwhile, at most as long as the insert."""

    MIN_DOCS = 500  # smaller inserts are not worth delaying anyone's events

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled  # off on MongoDB, whose streams do not slow its writes
        self._holders = 0
        self._open = asyncio.Event()
        self._open.set()

    @asynccontextmanager
    async def hold(self, docs: int):
        if docs < self.MIN_DOCS or not self.enabled:
            yield
            return
        self._holders += 1
        self._open.clear()
        try:
            yield
        finally:
            self._holders -= 1
            if not self._holders:
                self._open.set()

    async def wait(self) -> None:
        await self._open.wait()


class Pace:
    """Spacing of an event stream's round trips (the relay's change feed, a hub's tail).
    Each waits on the server for up to `AWAIT_MS`; MongoDB answers sooner only for a
    matching change, SecantusDB for any write to any database, so there a stream that asked
    again at once after an empty early reply would make a round trip per unrelated write
    (lease renewals, heartbeats, the relay's own inserts) however many come. On SecantusDB
    an empty reply that came soon (under `QUIET` s) is followed by a pause that doubles from
    `busy` up to `IDLE_MAX`, and one after a quiet spell by none; a write made during a pause
    still wakes the next round trip at once, so an event waits at most `IDLE_MAX`, and none
    after a quiet spell (the first write of an enqueue is its engine's counter, which finds
    the stream waiting; the job's insert follows while it asks again).
    After a reply with changes the pause is `busy` on both servers: what comes meanwhile
    comes in one reply, and is written in one insert.
    Cost on MongoDB: none (it answers empty only when the wait is over, and gets no pause)."""

    AWAIT_MS = 5_000
    IDLE_MAX = 0.25
    QUIET = 1.0

    def __init__(
        self, secantus: bool, busy: float = 0.05, idle_max: float = IDLE_MAX, quiet: float = QUIET, batches: bool = True
    ) -> None:
        self.secantus, self.busy, self.idle_max, self.quiet = secantus, busy, idle_max, quiet
        self.batches = batches  # False: a reply with changes is paced like any other (wake streams)
        self._gap = 0.0
        self._next = 0.0

    def done(self, changes: int, waited: float) -> float:
        """A reply came with `changes` changes after `waited` seconds: when the next round
        trip may go. Returns the pause before it."""
        if changes and self.batches:
            self._gap, pause = 0.0, self.busy
        elif not self.secantus or waited >= self.quiet:
            self._gap, pause = 0.0, 0.0
        else:
            self._gap = pause = min(self.idle_max, max(self.busy, 2 * self._gap))
        self._next = time.monotonic() + pause
        return pause

    async def wait(self) -> None:
        rest = self._next - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
