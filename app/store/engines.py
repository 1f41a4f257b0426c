"""The `engines` collection: one small document per engine (queue).

It holds what every worker must agree on:
- `limit`, `paused`: the queue controls of seed 001, deployment-wide (set only by the
  bootstrap admin, docs/security.md);
- `paused_tenants.<tenant>`: a tenant's own pause: its bands are not claimed while every
  other tenant's are;
- `held_until` and `held_keys.<key>`: provider back-pressure (a handler raised
  `RateLimited`): until that time no band of the engine (`held_until`), or none of the
  key's bands (`held_keys."tenant:<name>"`), is claimed. Only ever moved later (`$max`);
  an expired hold is inert and is left in place;
- `budget_held.<tenant>`: `{until, period}`, the tenant reached its cost budget
  (app/store/budgets.py, which alone writes it): none of the tenant's bands is claimed until
  `until`, the period's end. Unlike back-pressure it is set and unset outright, since a
  raised budget must lift it at once;
- `seq.<band>`: the next sequence number of a band, one per (priority, tenant): `pN` for
  tenant `default`, `pN:<tenant>` for the others; enqueue takes numbers here (with
  `inflight.<tag>` markers and `queued`, all moved by app/store/numbering.py);
- `cursor.<band>`: every job of the band with a lower seq has left `queued` (orphans aside,
  see `Claimer.requeue_orphans`); claimers start their window here;
- `running` and `holds.<worker>`: the concurrency permits (app/store/permits.py).
  Invariant: `running == sum(holds)`, and `running` never exceeds `limit` by a reservation.
  A dead worker's holds are dropped by the rescuer, so no permit outlives its worker's lease;
- `rate`, `rate_per_s`, `burst`, `rate_tokens`, `rate_at`: the engine's rate limit, a token
  bucket drawn from with the permits (app/store/permits.py); absent when no rate is set;
- `key`, `lanes`, `keys`, `kholds` and the `key_*` settings: per-key limits, owned by
  `KeyLimits` (app/store/keylimits.py); `weights.<tenant>`: the tenants' claim weights;
- `queued`: a counter kept with `$inc` next to every move in and out of `queued` (high by
  the unused numbers of open seq blocks, app/store/seqblocks.py, until they close);
- `wake`: bumped whenever claimers may have new work (enqueue, resume, limit raised, permits
  returned to a saturated engine); workers watch it through a change stream.

The collection is tiny, so `$expr` guards and `find_one_and_update` are fine here.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from ..domain.rates import default_burst, parse_rate
from ..errors import NotFound
from ..settings import Settings
from .bands import (  # noqa: F401 (the band helpers, imported from here too)
    DEFAULT_TENANT,
    band,
    band_floor,
    band_lane,
    budget_hold,
    busy_bands,
    held_until,
    next_hold_end,
    parse_band,
    tenant_key,
)
from .keylimits import KeyLimits
from .numbering import Numbering
from .permits import PermitsMixin

RATE_FIELDS = ("rate", "rate_per_s", "burst", "rate_tokens", "rate_at", "rate_took")


class EngineStore(PermitsMixin):
    def __init__(self, db: AsyncDatabase, settings: Settings, clock) -> None:
        self.col = db["engines"]
        self.keys = KeyLimits(self.col)
        self.numbers = Numbering(self.col, self.keys, clock, self.ensure)
        self.settings = settings
        self.clock = clock

    async def ensure_indexes(self) -> None:
        return None  # looked up by _id only

    def _defaults(self, engine: str) -> dict[str, Any]:
        out = {"limit": self.settings.default_limit(engine), "paused": False, "created_at": self.clock.now()}
        if (spec := self.settings.queue_rates.get(engine)) is not None:
            out.update(rate_fields(spec))
        if (keyed := self.settings.queue_keys.get(engine)) is not None:
            out.update(KeyLimits.config(**keyed)[0])
        return out

    async def ensure(self, engine: str) -> dict:
        """The engine's document, created on first use with its default limit."""
        doc = await self.col.find_one({"_id": engine})
        if doc is None:
            await self.col.update_one({"_id": engine}, {"$setOnInsert": self._defaults(engine)}, upsert=True)
            doc = await self.col.find_one({"_id": engine})
        return doc

    async def get(self, engine: str) -> dict:
        doc = await self.col.find_one({"_id": engine})
        if doc is None:
            raise NotFound(f"unknown queue {engine!r}", field="name")
        return doc

    async def list(self) -> list[dict]:
        return await self.col.find({}).sort("_id", 1).to_list(None)

    async def advance_cursor(self, engine: str, key: str, seq: int) -> None:
        await self.after_claim(engine, {key: seq}, 0)

    async def after_claim(self, engine: str, cursors: dict[str, int], taken: int) -> None:
        """One write after a claim: move band cursors forward (never back) and count the
        claimed jobs out of `queued`."""
        update: dict[str, Any] = {}
        if cursors:
            update["$max"] = {f"cursor.{key}": seq for key, seq in cursors.items()}
        if taken:
            update["$inc"] = {"queued": -taken}
        if update:
            await self.col.update_one({"_id": engine}, update)

    async def reconcile(self, count_queued, names: list[str] | None = None, pause: float = 1.0) -> list[dict]:
        """Re-derive the counters from the truth and correct those that drifted (a write
        whose reply was lost, a process that died between a job's write and its count).
        Returns one `{engine, counter, was, now}` per correction.

        - `queued` is compared with `count_queued(engine)` (the jobs) twice, `pause` apart,
          and corrected only when neither it nor the count moved in between and no enqueue
          is in flight at the second look: a claim or enqueue in progress moves one of them
          (an enqueue counts before its write lands), so a transient
          difference is never taken for drift. An engine under constant load is corrected
          once it rests.
        - `running` must equal the sum of `holds`; both live in this document, so it is
          recomputed from them in one guarded write."""
        await self.numbers.flush()  # this process's landed enqueues and open blocks, before the read
        docs = [d for d in await self.list() if names is None or d["_id"] in names]
        out: list[dict] = []
        seen: dict[str, tuple[int, int]] = {}
        for d in docs:
            seen[d["_id"]] = (d.get("queued", 0), await count_queued(d["_id"]))
            running, held = d.get("running", 0), sum((d.get("holds") or {}).values())
            if running != held:
                res = await self.col.update_one(
                    {"_id": d["_id"], "running": running},
                    [
                        {
                            "$set": {
                                "running": {
                                    "$sum": {
                                        "$map": {
                                            "input": {"$objectToArray": {"$ifNull": ["$holds", {}]}},
                                            "in": "$$this.v",
                                        }
                                    }
                                }
                            }
                        }
                    ],
                )
                if res.modified_count:
                    out.append({"engine": d["_id"], "counter": "running", "was": running, "now": held})
        drifted = {name: v for name, v in seen.items() if v[0] != v[1]}
        if drifted:
            await asyncio.sleep(pause)
        for name, (counted, jobs) in drifted.items():
            d = await self.col.find_one({"_id": name}, {"queued": 1, "inflight": 1})
            if d is None or d.get("inflight") or d.get("queued", 0) != counted or await count_queued(name) != jobs:
                continue
            if (await self.col.update_one({"_id": name, "queued": counted}, {"$set": {"queued": jobs}})).modified_count:
                out.append({"engine": name, "counter": "queued", "was": counted, "now": jobs})
        return out

    # --- queue controls ------------------------------------------------------------------
    async def set_paused(self, engine: str, paused: bool, tenant: str | None = None) -> dict:
        """Pause or resume the whole engine (`tenant` None), or one tenant's work in it."""
        await self.ensure(engine)
        field = "paused" if tenant is None else f"paused_tenants.{tenant}"
        update: dict[str, Any] = {"$set": {field: True}} if paused else {"$inc": {"wake": 1}}
        if not paused:
            update["$set" if tenant is None else "$unset"] = {field: False if tenant is None else ""}
        return await self.col.find_one_and_update({"_id": engine}, update, return_document=ReturnDocument.AFTER)

    async def hold(self, engine: str, key: str | None, until: datetime) -> None:
        """Provider back-pressure: no worker claims the engine's jobs (key None) or the key's
        until `until`. A hold is only ever extended: two jobs told "wait 5 s" and "wait 30 s"
        hold for 30. Read by the claimer from the engine document it reads anyway."""
        field = "held_until" if key is None else f"held_keys.{key}"
        await self.col.update_one({"_id": engine}, {"$max": {field: until}})

    async def set_limit(self, engine: str, limit: int) -> dict:
        return await self.set_limits(engine, limit=limit)

    async def set_limits(
        self,
        engine: str,
        *,
        limit: int | None = None,
        rate: Any = ...,
        burst: int | None = None,
        weights: dict[str, float | None] | None = None,
        **keyed: Any,
    ):
        """The concurrency `limit` and the rate limit: `rate` a spec (`60/min`) starts a full
        bucket of `burst` (default: `default_burst`), None clears it, `...` keeps it (a
        `burst` alone then resizes the bucket; the caller checks the engine has a rate).
        `weights`: tenant weights to set (None removes one). `keyed`: the per-key limits,
        as `KeyLimits.config` takes them."""
        await self.ensure(engine)
        update: dict[str, Any] = {"$set": {}, "$inc": {"wake": 1}, "$unset": {}}
        if limit is not None:
            update["$set"]["limit"] = limit
        if rate is None:
            update["$unset"].update({f: "" for f in RATE_FIELDS})
        elif rate is not ...:
            update["$set"].update(rate_fields(rate, burst))
            update["$unset"].update({"rate_tokens": "", "rate_at": ""})  # a full bucket
        elif burst is not None:
            update["$set"]["burst"] = burst
        for tenant, w in (weights or {}).items():
            if w is None:
                update["$unset"][f"weights.{tenant}"] = ""
            else:
                update["$set"][f"weights.{tenant}"] = w
        sets, unsets = KeyLimits.config(**keyed)
        update["$set"].update(sets)
        update["$unset"].update(unsets)
        for op in ("$set", "$unset"):
            if not update[op]:
                del update[op]
        return await self.col.find_one_and_update({"_id": engine}, update, return_document=ReturnDocument.AFTER)

    def watch(self, max_await_ms: int = 500):
        """A change stream of the writes that may give claimers new work; each round trip
        waits up to `max_await_ms` for one."""
        return self.col.watch(
            [
                {
                    "$match": {
                        "$or": [
                            {"operationType": "insert"},
                            {"updateDescription.updatedFields.wake": {"$exists": True}},
                        ]
                    }
                }
            ],
            max_await_time_ms=max_await_ms,
        )


def rate_fields(spec: str, burst: int | None = None) -> dict[str, Any]:
    """The engine document's fields for a rate spec (validated by the caller)."""
    n, per_s = parse_rate(spec)
    return {"rate": spec.strip(), "rate_per_s": per_s, "burst": burst or default_burst(n)}
