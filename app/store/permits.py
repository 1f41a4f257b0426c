"""The engine document's concurrency permits and rate-limit tokens (mixed into
`EngineStore`, app/store/engines.py).

Permits: `running` and `holds.<worker>`. A worker takes permits before it claims and gives
them back after. Invariant: `running == sum(holds)` (every write moves both by the same
amount; `EngineStore.reconcile` repairs a drift), and a reservation never makes `running`
exceed `limit`, so the limit holds across all processes.

Tokens (only on an engine with a rate, docs/limits.md "Rate limits"): `rate_per_s`,
`burst`, `rate_tokens` and `rate_at` form a token bucket. Every claim on such an engine
first draws one token per job in one pipeline update that also tops up the permits it
needs (`draw`), so the rate holds across every worker process and machine. The bucket is
refilled from `rate_at` by the database's clock (`$$NOW`), never a worker's.
"""

from __future__ import annotations

from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

_NOW_MS = {"$toLong": "$$NOW"}  # (SecantusDB cannot subtract two dates: compare them as ms)


def tokens_now(per_s="$rate_per_s", burst="$burst", tokens="$rate_tokens", at="$rate_at") -> dict:
    """A bucket's tokens at `$$NOW`: refilled since `at` by `per_s`, capped at `burst`; a
    bucket never drawn from is full. The arguments name its fields (the engine's by default;
    a limit key's in app/store/keylimits.py)."""
    since = {"$toLong": {"$ifNull": [at, "$$NOW"]}}
    elapsed = {"$divide": [{"$max": [0, {"$subtract": [_NOW_MS, since]}]}, 1000]}
    have = {"$ifNull": [tokens, burst]}
    return {"$min": [burst, {"$add": [have, {"$multiply": [elapsed, per_s]}]}]}


class PermitsMixin:
    col: object
    keys: object  # KeyLimits (app/store/keylimits.py)

    async def reserve(self, engine: str, worker: str, n: int) -> bool:
        """Take `n` permits for `worker`, only if the engine is not paused and `running + n`
        stays within `limit`."""
        res = await self.col.update_one(
            {
                "_id": engine,
                "paused": False,
                "$expr": {"$lte": [{"$add": [{"$ifNull": ["$running", 0]}, n]}, "$limit"]},
            },
            {"$inc": {"running": n, f"holds.{worker}": n}},
        )
        return res.modified_count == 1

    async def holds_of(self, engine: str, worker: str) -> int | None:
        """The permits of `engine` that `worker` holds, as recorded (None: no engine)."""
        doc = await self.col.find_one({"_id": engine}, {f"holds.{worker}": 1})
        return None if doc is None else (doc.get("holds") or {}).get(worker, 0)

    async def release(self, engine: str, worker: str, n: int) -> bool:
        """Give back `n` permits of `worker`. A no-op (False) when the worker's holds were
        already dropped by the rescuer."""
        if n <= 0:
            return True
        before = await self.col.find_one_and_update(
            {"_id": engine, f"holds.{worker}": {"$gte": n}},
            {"$inc": {"running": -n, f"holds.{worker}": -n}},
            {"running": 1, "limit": 1},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:
            return False
        if before.get("running", 0) >= before["limit"]:
            # Only a saturated engine has workers waiting for a permit. Waking every idle
            # worker on every release made them all peek at once (the chaos claim race).
            # The release has landed whatever happens to the wake-up: raising here made the
            # caller keep permits it had given back, and run more jobs than the limit
            # (chaos fail_command). A starved worker that misses it looks again on its poll.
            try:
                await self.col.update_one({"_id": engine}, {"$inc": {"wake": 1}})
            except PyMongoError:
                pass
        return True

    async def drop_holds(self, worker: str) -> int:
        """Return every permit a dead worker held, its limit keys' too. Guarded by the value
        read, so a race with the worker's own release retries instead of double counting."""
        dropped = await self.keys.drop(worker)
        for _ in range(10):
            docs = await self.col.find({f"holds.{worker}": {"$exists": True}}, {f"holds.{worker}": 1}).to_list(None)
            if not docs:
                break
            for doc in docs:
                n = doc["holds"][worker]
                res = await self.col.update_one(
                    {"_id": doc["_id"], f"holds.{worker}": n},
                    {"$inc": {"running": -n, "wake": 1}, "$unset": {f"holds.{worker}": ""}},
                )
                dropped += n if res.modified_count else 0
        return dropped

    async def draw(self, engine: str, worker: str, n: int, idle: int) -> dict | None:
        """A rated engine: draw up to `n` tokens, one per job to claim, and top the worker's
        permits up to cover them (it holds `idle` unused ones). Takes `k = min(n, whole tokens,
        idle + limit - running)`, possibly 0, and `max(0, k - idle)` permits, all in one
        atomic update. Returns `{took, tokens, at, per_s}` (the bucket after the draw, `at`
        the database's time of it), or None when the engine is paused or has no rate."""
        p = f"holds.{worker}"
        room = {"$subtract": [{"$add": [idle, "$limit"]}, {"$ifNull": ["$running", 0]}]}
        after = await self.col.find_one_and_update(
            {"_id": engine, "paused": False, "rate_per_s": {"$gt": 0}},
            [
                {"$set": {"_tok": tokens_now()}},
                {"$set": {"_take": {"$max": [0, {"$min": [n, {"$floor": "$_tok"}, room]}]}}},
                {"$set": {"_p": {"$max": [0, {"$subtract": ["$_take", idle]}]}}},
                {
                    "$set": {
                        "running": {"$add": [{"$ifNull": ["$running", 0]}, "$_p"]},
                        p: {"$add": [{"$ifNull": [f"${p}", 0]}, "$_p"]},
                        "rate_tokens": {"$subtract": ["$_tok", "$_take"]},
                        "rate_at": "$$NOW",
                        "rate_took": "$_take",  # this update's draw, read back below
                    }
                },
                {"$unset": ["_tok", "_take", "_p"]},
            ],
            {"rate_took": 1, "rate_tokens": 1, "rate_at": 1, "rate_per_s": 1},
            return_document=ReturnDocument.AFTER,
        )
        if after is None:
            return None
        return {
            "took": int(after["rate_took"]),
            "tokens": after["rate_tokens"],
            "at": after["rate_at"],
            "per_s": after["rate_per_s"],
        }

    async def refund(self, engine: str, n: int) -> None:
        """Tokens drawn for jobs that another claimer took first, or that were not there: a
        token is spent only by a start. The next draw caps the bucket at `burst` again."""
        if n > 0:
            await self.col.update_one({"_id": engine, "rate_per_s": {"$gt": 0}}, {"$inc": {"rate_tokens": n}})
