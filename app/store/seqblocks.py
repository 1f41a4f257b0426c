"""Seq blocks: the numbers one process takes ahead for its own stream of single enqueues.

A job entering `queued` needs a seq from its band (`Numbering.enqueue`), and taking one is
a write to the engine document, every claimer's document. One client enqueueing jobs one at
a time paid that write for every job, on top of the job's own insert. In a stream (each
enqueue within `STREAK_GAP` of the last of its engine) this process takes a block of seqs
in that one write instead, and hands them to the next enqueues of the band without a write.

Invariants:
- A block is counted in the engine's `queued` and held by its `inflight` marker from the
  write that takes it. Claimers leave the band's cursor alone while any marker is there, so
  no job written later with one of the block's seqs can end up below the cursor.
- A block closes when its seqs run out or `BLOCK_AGE` after it was taken, whichever comes
  first, and no seq is handed out after that. Its marker is landed (cleared, with a wake-up
  and the count of the seqs it never used given back) once every enqueue that took a seq
  from it has returned: only then is every job written with its seqs visible, or given up.
  A process that dies with a block open leaves a stale marker, dropped by maintenance, and
  a count the reconciler mends, as any enqueue cut short does.
- Seq order is enqueue order within a process. Across processes enqueueing into one band at
  the same time it is the order of their blocks, so FIFO between them holds to within one
  block's age.

Sizes adapt: a stream starts with blocks of one seq; a block used up doubles the next (up to
`BLOCK_MAX`); one closed by age sizes the next to what it used. So a stream of a few jobs a
second takes a seq per job as before, and a tight loop writes the engine about once per
`BLOCK_AGE`, which also bounds how long an idle worker waits to be woken for its jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

BLOCK_MAX = 32  # seqs one block takes at most
BLOCK_AGE = 0.02  # seconds a block hands out seqs before it closes (as long as STREAK_GAP)


@dataclass
class Block:
    engine: str
    key: str
    tag: str  # its `inflight` marker
    next: int  # the next seq to hand out
    end: int  # one past its last seq
    size: int
    users: int = 0  # enqueues holding one of its seqs that have not returned
    closed: bool = False
    landed: bool = False
    timer: asyncio.TimerHandle | None = None


class SeqBlocks:
    """This process's open blocks, one per (engine, band) at most. `land(block, unused)` is
    called once per block, when it is closed and no enqueue holds one of its seqs."""

    def __init__(self, land: Callable[[Block, int], None]) -> None:
        self._land = land
        self._open: dict[tuple[str, str], Block] = {}
        self._size: dict[tuple[str, str], int] = {}  # the next block's size, per band
        self._taking: dict[tuple[str, str], asyncio.Event] = {}  # a band's block being taken

    async def take_or_wait(self, engine: str, key: str) -> tuple[Block, int] | None:
        """A seq from the band's open block, waiting for a block this process is taking
        already (concurrent enqueues share its write); None when the caller must take one,
        which it announces with `taking` and ends with `taken`."""
        while (held := self.take(engine, key)) is None and (ev := self._taking.get((engine, key))) is not None:
            await ev.wait()
        return held

    def taking(self, engine: str, key: str) -> None:
        self._taking[(engine, key)] = asyncio.Event()

    def taken(self, engine: str, key: str) -> None:
        """The take announced by `taking` ended (a block opened, or the write failed)."""
        if (ev := self._taking.pop((engine, key), None)) is not None:
            ev.set()

    def take(self, engine: str, key: str) -> tuple[Block, int] | None:
        """A seq from the band's open block, held until `release`; None without one."""
        blk = self._open.get((engine, key))
        if blk is None:
            return None
        seq = blk.next
        blk.next += 1
        blk.users += 1
        if blk.next >= blk.end:
            self._close(blk)
        return blk, seq

    def size(self, engine: str, key: str, streaming: bool) -> int:
        """How many seqs the band's next take should be: one outside a stream."""
        if not streaming:
            self._size.pop((engine, key), None)
            return 1
        return self._size.get((engine, key), 1)

    def opened(self, engine: str, key: str, tag: str, first: int, size: int) -> Block:
        """Record a block just taken (`size` seqs from `first`), its first seq held by the
        caller until `release`."""
        blk = Block(engine, key, tag, next=first + 1, end=first + size, size=size, users=1)
        if (old := self._open.get((engine, key))) is not None:  # a concurrent take's
            self._close(old)
        if blk.next >= blk.end:
            self._close(blk)
        else:
            self._open[(engine, key)] = blk
            blk.timer = asyncio.get_running_loop().call_later(BLOCK_AGE, self._close, blk)
        return blk

    def release(self, blk: Block) -> None:
        """An enqueue that took a seq from `blk` returned (its job written, or given up)."""
        blk.users -= 1
        if blk.closed and not blk.users:
            self._landing(blk)

    def close_all(self) -> None:
        """Close every open block now (shutdown, tests); each lands once its users return."""
        for blk in list(self._open.values()):
            self._close(blk)

    def _close(self, blk: Block) -> None:
        if blk.closed:
            return
        blk.closed = True
        if blk.timer is not None:
            blk.timer.cancel()
        if self._open.get((blk.engine, blk.key)) is blk:
            del self._open[(blk.engine, blk.key)]
        used = blk.next - (blk.end - blk.size)
        grow = used >= blk.size
        self._size[(blk.engine, blk.key)] = min(blk.size * 2, BLOCK_MAX) if grow else max(1, used)
        if not blk.users:
            self._landing(blk)

    def _landing(self, blk: Block) -> None:
        if not blk.landed:
            blk.landed = True
            self._land(blk, blk.end - blk.next)
