"""`Claimer`: the claim, and the per-engine state it keeps between claims (its caches).

The claim (docs/claiming.md): read the engine document, take the highest band with work
(not paused, not held by provider back-pressure: both read from that same document),
find a window of candidates with plain equality plus a seq range bounded on both sides,
claim them in one `update_many({_id: {$in}, status: "queued"})` stamped with a fresh lease
token, then read them back by token. Its cost depends on the window, never on queue depth.

Contention: claimers that all start at the head of a band split the same few candidates,
and each loser pays another round. Two measures keep them apart:
- Line: the workers holding permits of the engine (`holds` in its document) are ranked by
  id. The one at rank r starts its first round in a band r claim batches past the cursor,
  or past where its own last such claim ended if that is further on (the cursor it read
  lags behind the claims of the others). A round ahead never moves the cursor, since what
  it skipped may still be queued; rank 0 sweeps from the cursor. If nothing is there, or
  the cursor has stood still for HEAD_PATIENCE (rank 0 is busy with long jobs, or gone),
  the claimer takes from the cursor itself, so the head of a band never starves. With two
  workers draining 2,000 jobs, the candidates lost to the other fell from about 770 to 170
  (docs/claiming.md).
- Spread: a claimer that still found its round contested widens its window (`_spread`,
  per engine, doubling up to MAX_SPREAD) and tries a random sample of it; uncontested
  rounds narrow it again.
A lone claimer therefore stays strictly FIFO, and concurrent claimers are FIFO up to
(holders - 1) claim batches plus the width of the windows they share: no looser than the
order in which the jobs of concurrent claims start anyway.

Invariant behind the cursor: a job gets a new, higher seq every time it enters `queued`, so
once a window's candidates have left `queued` nothing below them can become claimable again,
except a job whose seq was taken but whose write landed after a claimer passed it (an
orphan). `requeue_orphans` gives those a fresh seq.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import timedelta

from pymongo.errors import PyMongoError

from ..domain.limitkeys import shares, unspend
from ..domain.states import JobStatus
from .db import find_in
from .documents import BAND_FIELDS
from .engines import DEFAULT_TENANT, band_floor, band_lane, busy_bands, parse_band

QUEUED = JobStatus.QUEUED.value
MAX_WINDOW = 1 << 20
MAX_SPREAD = 16  # see `claim`: how far past the head a contended claimer may pick
HEAD_PATIENCE = 1.0  # seconds a band's cursor may stand still before claimers ahead serve its head


class Claimed(list):
    """The jobs a claim took; `dry` says it saw every band of the engine run out, as opposed
    to losing its candidates to other claimers (then there is more to take at once);
    `key_permits`: each job of a limit key's lane holds one of its key's permits, to give back
    when it ends (app/store/keylimits.py)."""

    def __init__(self, jobs=(), *, dry: bool, key_permits: bool = False) -> None:
        super().__init__(jobs)
        self.dry = dry
        self.key_permits = key_permits


class Claimer:
    def __init__(self, col, settings, clock, engines, numbers, lifecycle) -> None:
        self.col, self.settings, self.clock = col, settings, clock
        self.engines, self.numbers, self.lifecycle = engines, numbers, lifecycle
        self._spread: dict[str, int] = {}  # per engine: claim contention (see the module's docstring)
        self._ahead: dict[tuple[str, str], tuple] = {}  # per band: (cursor, since when, end of our last claim ahead)
        self._passes: dict[tuple[str, int], dict[str, float]] = {}  # per (engine, priority): tenants' stride passes

    async def window(
        self,
        engine: str,
        priority: int,
        tenant: str,
        lo: int,
        hi: int,
        need: int,
        projection: dict | None = None,
        ahead: int = 4,
    ) -> tuple[list[dict], int]:
        """Candidates from the first non-empty window at or after `lo`, probing in growing
        steps. Returns them and the new lower bound (everything below it has left queued).
        The window is `ahead` times `need` (at least 64): SecantusDB reads all of it."""
        width = max(64, need * ahead)
        while lo < hi:
            filt = {
                "engine": engine,
                "status": QUEUED,
                "priority": priority,
                "tenant": tenant,
                "seq": {"$gte": lo, "$lt": lo + width},
            }
            found = await self.col.find(filt, projection).sort("seq", 1).limit(need).to_list(need)
            if found:
                return found, found[0]["seq"]
            lo += width
            width = min(width * 4, MAX_WINDOW)
        return [], hi

    async def peek(self, engine: dict, k: int) -> int:
        """How many jobs (up to `k`) a claim could take now: the same window queries as a
        claim, read-only. Lets a worker size its permit reservation, and lets a worker that
        lost the race for a job find out without writing anything."""
        seen = 0
        for _, p, tenant, lo, hi in busy_bands(engine, now=self.clock.now()):
            if seen < k:
                found, _ = await self.window(engine["_id"], p, tenant, lo, hi, k - seen, {"seq": 1})
                seen += len(found)
        return seen

    async def explain_window(
        self, engine: str, priority: int, lo: int, width: int, need: int, tenant: str = DEFAULT_TENANT
    ) -> dict:
        """The server's `executionStats` plan for one claim window (for tests and docs)."""
        filt = {
            "engine": engine,
            "status": QUEUED,
            "priority": priority,
            "tenant": tenant,
            "seq": {"$gte": lo, "$lt": lo + width},
        }
        return await self.col.database.command(
            {
                "explain": {"find": self.col.name, "filter": filt, "sort": {"seq": 1}, "limit": need},
                "verbosity": "executionStats",
            }
        )

    async def claim(self, engine: dict, worker: str, k: int) -> Claimed:
        """Lease up to `k` queued jobs of `engine` (its document as read) to `worker`: strict
        priority order; within a priority, FIFO per tenant and an even share between the
        tenants with queued jobs (docs/security.md). The caller must hold `k` permits."""
        name = engine["_id"]
        token = uuid.uuid4().hex
        now = self.clock.now()
        stamp = {
            "lease_owner": worker,
            "lease_token": token,
            "lease_expires_at": now + timedelta(seconds=self.settings.lease_seconds),
            "started_at": now,
        }
        taken = 0
        moved: dict[str, int] = {}
        mine: list[dict] = []  # rounds we won outright: the candidates as read, stamped here
        contested: list[str] = []  # rounds another claimer shared: the token tells which we won
        bands = list(busy_bands(engine, now=now))  # held bands (back-pressure) are skipped
        lows = {b[0]: b[3] for b in bands}
        holders = sorted(w for w, n in (engine.get("holds") or {}).items() if n > 0 or w == worker)
        rank = holders.index(worker) if worker in holders else len(holders)

        async def take(key: str, p: int, tenant: str, hi: int, want: int) -> int:
            """Up to `want` jobs from one band, in a few rounds if other claimers beat us."""
            nonlocal mine, contested, rank
            got = 0
            for _ in range(4):
                lo = lows[key]
                if got >= want or lo >= hi:
                    break
                spread = self._spread.get(name, 1)
                # Ahead only while the head is being served: once the cursor has stood still for
                # HEAD_PATIENCE (rank 0 busy or gone), we take from the head ourselves.
                seen, since, end = self._ahead.get((name, key), (None, 0.0, 0))
                if seen != lo:
                    seen, since = lo, time.monotonic()
                    self._ahead[(name, key)] = (seen, since, end)
                served = time.monotonic() - since < HEAD_PATIENCE
                offset = rank * self.settings.claim_batch if served and not got and spread == 1 else 0
                if offset:
                    start = max(lo, end) + offset
                    found, _ = await self.window(name, p, tenant, start, hi, want - got)
                    if not found:
                        self._ahead[(name, key)] = (seen, since, 0)
                        rank = 0
                        continue
                    self._ahead[(name, key)] = (seen, since, found[-1]["seq"] + 1)
                else:
                    # uncontended: a window as wide as the claim; contended: gaps, so wider
                    found, lows[key] = await self.window(
                        name, p, tenant, lo, hi, (want - got) * spread, ahead=1 if spread == 1 else 4
                    )
                if not found:
                    break
                tried = (
                    found
                    if spread == 1
                    else sorted(random.sample(found, min(want - got, len(found))), key=lambda f: f["seq"])
                )
                ids = [f["_id"] for f in tried]
                try:
                    n = await self.lifecycle.take(ids, stamp)
                except PyMongoError:
                    contested += ids  # it may have landed: the token tells, below
                    raise
                if n == len(tried):
                    mine += [
                        {**f, **stamp, "status": JobStatus.RUNNING.value, "attempt": f.get("attempt", 0) + 1}
                        for f in tried
                    ]
                    self._spread[name] = max(1, spread // 2)
                else:
                    contested += ids
                    self._spread[name] = min(MAX_SPREAD, spread * 2)
                got += n
                if offset:
                    continue
                # every tried candidate has left queued, ours or not; an untried one may not have
                tried_ids = set(ids)
                untried = [f["seq"] for f in found if f["_id"] not in tried_ids]
                lows[key] = min(untried) if untried else found[-1]["seq"] + 1
            return got

        async def take_band(b: tuple, want: int) -> int:
            """`take`, after drawing the band's limit key's starts when it has one."""
            key, p, tenant, _, hi = b
            lane = band_lane(key)
            if not (lane and keyed) or want <= 0:
                return await take(key, p, tenant, hi, want) if want > 0 else 0
            drawn = await self.engines.keys.draw(engine, lane, worker, want)
            got = await take(key, p, tenant, hi, drawn) if drawn else 0
            await self.engines.keys.refund(engine, lane, worker, drawn - got)
            return got

        # Strict priority; within a priority, shares between tenants by weight (stride
        # scheduling over this claimer's claims, app/domain/limitkeys.py), each tenant's share
        # taken from its bands (its limit keys' lanes) from a rotating start; then what is
        # left goes to any band, so no slot idles while there is work.
        # A write whose reply is lost (`update_many` is not a retryable write) ends the claim:
        # what it took is found by the token, run, and counted like any other.
        failure: Exception | None = None
        weights = engine.get("weights") or {}
        keyed = bool(engine.get("key_rate_per_s") or engine.get("key_concurrency"))
        try:
            for p in sorted({b[1] for b in bands}):
                same = [b for b in bands if b[1] == p]
                start = random.randrange(len(same))
                same = same[start:] + same[:start]
                tenants: dict[str, list[tuple]] = {}
                for b in same:
                    tenants.setdefault(b[2], []).append(b)
                w = {t: float(weights.get(t, 1.0)) for t in tenants}
                passes = self._passes.setdefault((name, p), {})
                quota = shares(w, k - taken, passes)
                for t, own in tenants.items():
                    # A tenant's share from one band after another, from the rotated start: a
                    # claim touches as few limit keys as it can (each costs a draw and a
                    # window), and the rotation shares the keys out over claims.
                    got, q = 0, quota[t]
                    for b in own:
                        if got < q:
                            got += await take_band(b, q - got)
                    unspend(passes, t, q - got, w[t])
                    taken += got
                for b in same:
                    if taken < k:
                        got = await take_band(b, k - taken)
                        passes[b[2]] = passes.get(b[2], 0.0) + got / w[b[2]]
                        taken += got
                if taken >= k:
                    break
        except PyMongoError as exc:
            failure = exc
        for key, _, _, lo, _ in bands:
            end_ = lows[key]
            ceiling = self.numbers.cursor_ceiling(engine, key)
            if ceiling is not None:
                end_ = min(end_, ceiling)
            if end_ > lo:
                moved[key] = end_
        docs = mine
        if contested:
            try:
                docs += await self._read_back(contested, token)
            except PyMongoError as exc:
                failure = failure or exc
        taken = len(docs)
        try:
            await self.engines.after_claim(name, moved, taken)
        except Exception:  # bookkeeping only (cursors, the queued counter): the jobs are ours
            if not taken:  # now, and failing here would leave them running unrun until rescued
                raise
        if failure is not None and not docs:
            raise failure
        dry = failure is None and all(lows[key] >= hi for key, _, _, _, hi in bands)
        docs.sort(key=lambda d: (d["priority"], d["seq"]))
        return Claimed(docs, dry=dry, key_permits=keyed and bool(engine.get("key_concurrency")))

    async def _read_back(self, ids: list[str], token: str) -> list[dict]:
        """The jobs among `ids` that carry our lease token. After a lost reply the server
        may still be unreachable for a moment: a few tries, then the jobs stay leased to us
        unrun, and the rescuer refunds their attempt (no start was recorded for the lease)."""
        for delay in (0.2, 1.0, None):
            try:
                return await find_in(self.col, ids, {"lease_token": token})
            except PyMongoError:
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        return []

    async def requeue_orphans(self, engine: dict, limit: int = 100) -> int:
        """Queued jobs below their band's cursor get a fresh seq so claimers see them. They
        exist only if a writer died mid-enqueue, so its stale marker goes first."""
        await self.numbers.drop_stale_inflight(engine, self.clock.now() - timedelta(seconds=60))
        moved = 0
        for key, cursor in (engine.get("cursor") or {}).items():
            p, tenant = parse_band(key)
            stray = (
                await self.col.find(
                    {
                        "engine": engine["_id"],
                        "status": QUEUED,
                        "priority": p,
                        "tenant": tenant,
                        "seq": {"$gte": band_floor(key), "$lt": cursor},
                    },
                    {**BAND_FIELDS, "seq": 1},
                )
                .limit(limit)
                .to_list(limit)
            )
            if stray:
                moved += await self.lifecycle.reseq(stray)
        return moved
