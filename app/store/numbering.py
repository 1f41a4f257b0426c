"""Numbering: taking seqs for jobs about to enter `queued`, and the `inflight` markers that
hold a band's cursor until those jobs are written (docs/claiming.md, "Numbering").

It owns the `seq.<band>`, `queued`, `inflight.<tag>` and `wake` moves of an enqueue in the
engine document (app/store/engines.py says what each field means). `Enqueuer`
(app/store/enqueue.py) is its one user for jobs; the claimer reads the markers through
`cursor_ceiling`.

Invariants:
- A seq is counted in `queued` by the write that takes it, and its marker stays until the
  job written with it is visible, or will never be: a claimer that sees a marker of a band
  leaves that band's cursor where it is.
- Every marker is removed once (unsetting twice is harmless), by the next write to its
  engine: an enqueue's own, a lone enqueue's before it returns, or the flusher's. Markers
  of a process that died are dropped by maintenance after a minute (`drop_stale_inflight`).
- In a stream of single enqueues the seqs come from this process's blocks
  (app/store/seqblocks.py); a block's unused seqs are given back from `queued` in the write
  that removes its marker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pymongo import ReturnDocument

from .bands import band_floor
from .seqblocks import Block, SeqBlocks

CLEAR_DELAY = 0.005  # seconds a landed marker waits for the next enqueue to carry its removal
STREAK_GAP = 0.02  # an enqueue this soon after the previous one of its engine is part of a stream


class Numbering:
    def __init__(self, col, keys, clock, ensure: Callable[[str], Awaitable[dict]]) -> None:
        self.col, self.keys, self.clock, self._ensure = col, keys, clock, ensure
        self._known: set[str] = set()  # engines whose document exists
        self._landed: dict[str, list[str]] = {}  # inflight markers whose writes have landed
        self._giveback: Counter = Counter()  # engine -> jobs counted for seqs a closed block never used
        self.blocks = SeqBlocks(self._block_landed)
        self._flusher: asyncio.Task | None = None
        self._last: dict[str, float] = {}  # engine -> when this process last took its seqs

    @asynccontextmanager
    async def enqueue(self, engine: str, key: str, n: int, jobs: int | None = None, deferred: list | None = None):
        """Take `n` consecutive sequence numbers of a band for jobs about to enter `queued`
        (yields the first) and count them as queued. Until the block has written the jobs,
        an `inflight` marker holds the band's cursor where it is, so a claimer can never move
        it past a job whose write has not landed yet. On exit the marker goes and claimers
        are woken (`_clear`). `key` is the band (`band(priority, tenant)`). `deferred`: the
        marker is appended there instead, `(engine, tag)`, for the caller to `land` once the
        jobs are visible (after the commit of the transaction that wrote them, app/producer.py).
        A single job in a stream takes its seq from this process's block (app/store/seqblocks.py)."""
        at = time.monotonic()
        streaming = at - self._last.get(engine, float("-inf")) < STREAK_GAP
        single = n == 1 and jobs in (None, 1) and deferred is None
        blocked = single and streaming  # the seq comes from, or opens, this process's block
        if deferred is None:  # a transaction's markers land after its commit, not here
            self._last[engine] = at
        held = await self.blocks.take_or_wait(engine, key) if blocked else None
        if held is not None:
            (blk, first), tag = held, None
        else:
            take = self.blocks.size(engine, key, streaming) if single else n
            first, tag, blk = await self._take(engine, key, take, jobs, blocked)
        try:
            yield first
        finally:
            if blk is not None:
                self.blocks.release(blk)
            elif deferred is not None:
                deferred.append((engine, tag))
            elif streaming:
                self._land(engine, [tag])
            else:
                await self._clear(engine, [tag])

    async def _take(
        self, engine: str, key: str, take: int, jobs: int | None, blocked: bool
    ) -> tuple[int, str, Block | None]:
        """The write that takes `take` seqs of a band, counts them and sets their marker:
        the first seq and the marker's tag. `blocked`: the seqs open a block (returned),
        which lands the marker; its first seq is the caller's, held until `release`."""
        tag = f"{key}_{uuid.uuid4().hex[:12]}"
        # Markers of earlier enqueues that have landed go in this same write, with the
        # wake-up and the count of closed blocks' unused seqs, instead of a write of their
        # own (see `_clear`). `jobs` (default n) is how many jobs will use the n numbers: a
        # sparse range is fine.
        landed, back = self._landed.pop(engine, []), self._giveback.pop(engine, 0)
        update: dict[str, Any] = {
            "$inc": {f"seq.{key}": take, "queued": (take if jobs is None or blocked else jobs) - back},
            "$set": {f"inflight.{tag}": self.clock.now()},
        }
        if landed:
            update["$unset"] = {f"inflight.{t}": "" for t in landed}
            update["$inc"]["wake"] = 1
        if blocked:
            self.blocks.taking(engine, key)
        # Never an upsert here: SecantusDB can apply a racing upsert yet return nothing, and
        # a retry would then count the jobs twice. The document is created first, once.
        try:
            if engine not in self._known:
                await self._ensure(engine)
                self._known.add(engine)
            await self.keys.open_band(engine, key)
            doc = await self.col.find_one_and_update({"_id": engine}, update, return_document=ReturnDocument.AFTER)
        except BaseException:
            self._land(engine, landed, back)  # cleared later; unsetting twice is harmless
            if blocked:
                self.blocks.taken(engine, key)
            raise
        first = doc["seq"][key] - take
        blk = None
        if blocked:
            blk = self.blocks.opened(engine, key, tag, first, take)
            self.blocks.taken(engine, key)
        return first, tag, blk

    def land(self, markers: list[tuple[str, str]]) -> None:
        """Markers whose jobs are visible now (or never will be): cleared, claimers woken."""
        for engine, tag in markers:
            self._land(engine, [tag])

    def _block_landed(self, blk: Block, unused: int) -> None:
        self._land(blk.engine, [blk.tag], unused)

    def _land(self, engine: str, tags: list[str], back: int = 0) -> None:
        """Queue `tags` for removal, and `back` jobs counted for seqs never used for giving
        back, in the next write to the engine (an enqueue's, or the flusher's)."""
        if tags or back:
            self._landed.setdefault(engine, []).extend(tags)
            self._giveback[engine] += back
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.create_task(self._clear_landed())

    def _cleared(self, engine: str, tags: list[str]) -> tuple[dict, int]:
        """The write that removes `tags`, wakes claimers and gives back the unused count."""
        back = self._giveback.pop(engine, 0)
        inc = {"wake": 1, "queued": -back} if back else {"wake": 1}
        update: dict[str, Any] = {"$inc": inc}
        if tags:
            update["$unset"] = {f"inflight.{t}": "" for t in tags}
        return update, back

    async def _clear(self, engine: str, tags: list[str]) -> None:
        """A lone enqueue (none of its engine within STREAK_GAP before it) clears its marker
        and wakes claimers itself, before it returns: the wake-up is on the path from submit
        to start, and no later enqueue is coming soon to carry it. Markers of this engine
        that landed meanwhile go in the same write. If the write fails the marker is left to
        the flusher."""
        tags = tags + self._landed.pop(engine, [])
        update, back = self._cleared(engine, tags)
        try:
            await self.col.update_one({"_id": engine}, update)
        except asyncio.CancelledError:  # (the submit was cancelled as it returned)
            self._land(engine, tags, back)
            raise
        except Exception:
            self._land(engine, tags, back)

    async def _clear_landed(self) -> None:
        """Remove the markers of enqueues whose writes have landed and wake claimers: one
        write per engine for everything that landed meanwhile, off the submitter's path,
        after CLEAR_DELAY. While an engine's enqueues come in a stream, the next one usually
        comes first and carries them in its own write: on SecantusDB every write to an
        engine document costs about 2 ms, and one client submitting jobs one after another
        paid for two of them per job (REST submit, one client: 238 -> 260-274/s). A marker
        whose process died first goes stale and is dropped by maintenance."""
        await asyncio.sleep(CLEAR_DELAY)
        while self._landed:
            engine, tags = self._landed.popitem()
            update, _ = self._cleared(engine, tags)
            try:
                await self.col.update_one({"_id": engine}, update)
            except Exception:  # the database blinked: maintenance drops the marker later
                pass

    async def flush(self) -> None:
        """Close this process's seq blocks and wait until every landed enqueue has cleared
        its marker (tests, shutdown)."""
        self.blocks.close_all()
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])

    @staticmethod
    def cursor_ceiling(engine: dict, key: str) -> int | None:
        """While a band has writes in flight its cursor stays where it is."""
        if any(tag.rpartition("_")[0] == key for tag in engine.get("inflight") or {}):
            return (engine.get("cursor") or {}).get(key, band_floor(key))
        return None

    async def drop_stale_inflight(self, engine: dict, older_than) -> int:
        """Markers left by a writer that died mid-enqueue; orphan sweeping covers its jobs."""
        stale = [tag for tag, at in (engine.get("inflight") or {}).items() if at < older_than]
        if stale:
            await self.col.update_one({"_id": engine["_id"]}, {"$unset": {f"inflight.{t}": "" for t in stale}})
        return len(stale)

    async def count_left_queue(self, engine: str, n: int) -> None:
        if n:
            await self.col.update_one({"_id": engine}, {"$inc": {"queued": -n}})
