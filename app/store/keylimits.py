"""`KeyLimits`: the per-key rate and concurrency limits of engines (docs/limits.md, "Per-key
limits"), kept in the engine's own document so that the claimer reads them with it:

- `key`, `key_rate`, `key_rate_per_s`, `key_burst`, `key_concurrency`: the configuration;
- `lanes.<key id>`: `{lane, name}`, the lane a key's jobs are numbered in (app/domain/
  limitkeys.py), assigned once with `lane_next` and never reused;
- `keys.k<lane>`: `{running, tokens, at}`, the key's running count and token bucket;
- `kholds.<worker>.k<lane>`: the key permits each worker holds.

Invariant: `keys.k<L>.running == sum over workers of kholds.<worker>.k<L>` (every write moves
both by the same amount), and a draw never takes the running count past `key_concurrency`,
so the limit holds across every process. Key permits are taken per claim (`draw`), given
back per job (`release`), and a dead worker's go back with its engine permits (`drop`).
A bucket is refilled by the database's clock, as the engine's is (app/store/permits.py).
"""

from __future__ import annotations

import time
from typing import Any

from pymongo import ReturnDocument

from ..domain.limitkeys import VALUE_CHARS, key_id, key_value, lane_base
from ..domain.rates import default_burst, parse_rate
from .bands import band_lane
from .permits import tokens_now

SPEC_TTL = 2.0  # seconds an enqueuer trusts the key spec it read: a changed key applies after it
KEY_FIELDS = ("key", "key_rate", "key_rate_per_s", "key_burst", "key_concurrency")


class KeyLimits:
    def __init__(self, col) -> None:
        self.col = col
        self._spec: dict[str, tuple[str | None, float]] = {}  # engine -> (key spec, read at)
        self._lanes: dict[tuple[str, str], int] = {}  # (engine, key id) -> lane: never changes
        self._bands: set[tuple[str, str]] = set()  # lane bands whose seq and cursor exist

    @staticmethod
    def config(
        key: Any = ..., key_rate: Any = ..., key_burst: int | None = None, key_concurrency: Any = ...
    ) -> tuple[dict, dict]:
        """The `$set` and `$unset` of a change to the per-key limits (validated by the
        caller). `...` keeps a field, None clears it; `key=None` clears them all."""
        sets: dict[str, Any] = {}
        unsets: dict[str, str] = {}
        if key is None:
            return sets, dict.fromkeys(KEY_FIELDS, "")
        if key is not ...:
            sets["key"] = key
        if key_rate is None:
            unsets.update(dict.fromkeys(("key_rate", "key_rate_per_s", "key_burst"), ""))
        elif key_rate is not ...:
            n, per_s = parse_rate(key_rate)
            sets.update(
                {"key_rate": key_rate.strip(), "key_rate_per_s": per_s, "key_burst": key_burst or default_burst(n)}
            )
        elif key_burst is not None:
            sets["key_burst"] = key_burst
        if key_concurrency is None:
            unsets["key_concurrency"] = ""
        elif key_concurrency is not ...:
            sets["key_concurrency"] = key_concurrency
        return sets, unsets

    async def spec(self, engine: str) -> str | None:
        cached = self._spec.get(engine)
        if cached is None or time.monotonic() - cached[1] > SPEC_TTL:
            doc = await self.col.find_one({"_id": engine}, {"key": 1})
            cached = ((doc or {}).get("key"), time.monotonic())
            self._spec[engine] = cached
        return cached[0]

    async def assign(self, docs: list[dict]) -> None:
        """Give each new job of an engine with a limit key its key's lane (`lane`,
        `limit_key`), before anything numbers it. Jobs of other engines stay in lane 0."""
        for d in docs:
            spec = await self.spec(d["engine"])
            if spec is None:
                continue
            value = key_value(spec, d)
            kid = key_id(d["tenant"], spec, value)
            lane = self._lanes.get((d["engine"], kid))
            if lane is None:
                lane = self._lanes[(d["engine"], kid)] = await self._lane(d["engine"], kid, d["tenant"], value)
            d["lane"], d["limit_key"] = lane, value[:VALUE_CHARS]

    async def _lane(self, engine: str, kid: str, tenant: str, value: str) -> int:
        field = f"lanes.{kid}"
        name = f"{tenant}/{value[:VALUE_CHARS]}"
        doc = await self.col.find_one_and_update(
            {"_id": engine, field: {"$exists": False}},
            [
                {"$set": {"lane_next": {"$add": [{"$ifNull": ["$lane_next", 0]}, 1]}}},
                {"$set": {field: {"lane": "$lane_next", "name": {"$literal": name}}}},
            ],
            {field: 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:  # another process assigned it first
            doc = await self.col.find_one({"_id": engine}, {field: 1})
        return doc["lanes"][kid]["lane"]

    async def open_band(self, engine: str, band: str) -> None:
        """A lane band's seq and cursor start at its lane's base, once, before its first seq
        is taken (a `$inc` on a missing field would start it at 0, in lane 0's range)."""
        if not band_lane(band) or (engine, band) in self._bands:
            return
        base = lane_base(band_lane(band))
        await self.col.update_one(
            {"_id": engine, f"seq.{band}": {"$exists": False}},
            {"$set": {f"seq.{band}": base, f"cursor.{band}": base}},
        )
        self._bands.add((engine, band))

    async def draw(self, engine: dict, lane: int, worker: str, n: int) -> int:
        """Take up to `n` starts from a lane's key, in one atomic update: at most its bucket's
        whole tokens and its room under `key_concurrency`. Returns how many (maybe 0)."""
        k, hold = f"keys.k{lane}", f"kholds.{worker}.k{lane}"
        rated, capped = bool(engine.get("key_rate_per_s")), bool(engine.get("key_concurrency"))
        take: list = [n]
        if rated:
            take.append({"$floor": tokens_now("$key_rate_per_s", "$key_burst", f"${k}.tokens", f"${k}.at")})
        if capped:
            take.append({"$subtract": ["$key_concurrency", {"$ifNull": [f"${k}.running", 0]}]})
        sets: dict = {f"{k}.took": "$_take"}
        if rated:
            left = tokens_now("$key_rate_per_s", "$key_burst", f"${k}.tokens", f"${k}.at")
            sets.update({f"{k}.tokens": {"$subtract": [left, "$_take"]}, f"{k}.at": "$$NOW"})
        if capped:
            sets[f"{k}.running"] = {"$add": [{"$ifNull": [f"${k}.running", 0]}, "$_take"]}
            sets[hold] = {"$add": [{"$ifNull": [f"${hold}", 0]}, "$_take"]}
        after = await self.col.find_one_and_update(
            {"_id": engine["_id"]},
            [{"$set": {"_take": {"$max": [0, {"$min": take}]}}}, {"$set": sets}, {"$unset": ["_take"]}],
            {f"{k}.took": 1},
            return_document=ReturnDocument.AFTER,
        )
        return int(((after or {}).get("keys") or {}).get(f"k{lane}", {}).get("took", 0))

    async def refund(self, engine: dict, lane: int, worker: str, n: int) -> None:
        """Starts drawn for jobs that were not there or that another claimer took: a token is
        spent, and a key permit held, only by a start. The next draw caps the bucket again."""
        if n <= 0:
            return
        k, hold = f"keys.k{lane}", f"kholds.{worker}.k{lane}"
        inc = {f"{k}.tokens": n} if engine.get("key_rate_per_s") else {}
        if engine.get("key_concurrency"):
            inc.update({f"{k}.running": -n, hold: -n})
        if inc:
            await self.col.update_one({"_id": engine["_id"]}, {"$inc": inc})

    async def release(self, engine: str, worker: str, lanes: dict[int, int]) -> int:
        """Jobs of these lanes' keys ended (`{lane: how many}`): their permits go back in one
        write, and waiting workers are woken if a key was full. A lane whose holds the
        rescuer already dropped is left alone. Returns how many permits went back."""
        guards = {f"kholds.{worker}.k{lane}": {"$gte": n} for lane, n in lanes.items() if n > 0}
        if not guards:
            return 0
        before = await self.col.find_one_and_update(
            {"_id": engine, **guards},
            {
                "$inc": {
                    f: -n
                    for lane, n in lanes.items()
                    if n > 0
                    for f in (f"keys.k{lane}.running", f"kholds.{worker}.k{lane}")
                }
            },
            {"keys": 1, "key_concurrency": 1},
            return_document=ReturnDocument.BEFORE,
        )
        if before is None:  # some lane's holds are gone: each on its own
            if len(guards) == 1:
                return 0
            return sum([await self.release(engine, worker, {lane: n}) for lane, n in lanes.items()])
        cap = before.get("key_concurrency") or 0
        keys = before.get("keys") or {}
        if any((keys.get(f"k{lane}") or {}).get("running", 0) >= cap for lane in lanes):
            await self.col.update_one({"_id": engine}, {"$inc": {"wake": 1}})
        return sum(lanes.values())

    async def drop(self, worker: str) -> int:
        """Give back every key permit a dead worker held, guarded by the holds as read, so a
        race with the worker's own release (a stopping worker's last returns) reads again
        instead of double counting or leaving the worker's entry behind."""
        dropped = 0
        field = f"kholds.{worker}"
        for _ in range(10):
            docs = await self.col.find({field: {"$exists": True}}, {field: 1}).to_list(None)
            if not docs:
                break
            for doc in docs:
                held = (doc.get("kholds") or {}).get(worker) or {}
                inc = {f"keys.{k}.running": -n for k, n in held.items() if n}
                res = await self.col.update_one(
                    {"_id": doc["_id"], field: held},
                    {"$unset": {field: ""}, **({"$inc": {**inc, "wake": 1}} if inc else {})},
                )
                dropped += sum(held.values()) if res.modified_count else 0
        return dropped
