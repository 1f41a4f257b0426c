"""The `leases` collection: named leader leases, each with a checkpoint.

Some loops run in one process of a deployment at a time (maintenance, the event relay, the
notifier). Each holds a lease document `{_id: name, holder, expires_at, state}`, renewed
well within its length on the database clock. Invariant: `state` (the loop's checkpoint)
is only written under the holder's own lease, so a deposed leader that wakes up late cannot
move the checkpoint; at worst it repeats work, which its loop makes idempotent. The one
exception is `seed`, which only writes a lease that has never saved a checkpoint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from . import quirks

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # a seeded lease is free to take


class LeaseStore:
    def __init__(self, db: AsyncDatabase, clock) -> None:
        self.col = db["leases"]
        self.clock = clock

    async def acquire(self, name: str, holder: str, seconds: float) -> dict | None:
        """Take or renew the lease; returns its document (with `state`) when held."""
        doc = await self.take(name, holder, seconds)
        return doc if doc["holder"] == holder else None

    async def take(self, name: str, holder: str, seconds: float) -> dict:
        """Take or renew the lease in one round trip, and return the lease as it now is:
        held when its `holder` is ours, else its `expires_at` says when it may be taken.
        Tiny collection: `find_one_and_update` is fine here (DESIGN.md §5)."""
        now = self.clock.now()
        ours = {
            "$or": [
                {"$eq": [{"$ifNull": ["$holder", None]}, holder]},
                {"$lt": [{"$ifNull": ["$expires_at", EPOCH]}, now]},
            ]
        }
        for attempt in (0, 1):
            try:
                doc = await self._take(name, holder, now + timedelta(seconds=seconds), ours)
            except DuplicateKeyError:  # two first takers upserted at once: the other won
                if attempt:
                    raise
                continue
            doc = await quirks.upserted(doc, lambda: self.col.find_one({"_id": name}))
            if doc is not None:
                return doc
        raise RuntimeError(f"lease {name!r} was neither taken nor found")

    async def _take(self, name: str, holder: str, until, ours: dict) -> dict:
        return await self.col.find_one_and_update(
            {"_id": name},
            [
                {
                    "$set": {
                        "holder": {"$cond": [ours, holder, "$holder"]},
                        "expires_at": {"$cond": [ours, until, "$expires_at"]},
                        "state": {"$ifNull": ["$state", {}]},
                    }
                }
            ],
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )

    async def seed(self, name: str, state: dict[str, Any]) -> bool:
        """Give a lease that has never saved a checkpoint this one (creating the lease, free,
        if need be). Whoever first holds it starts from there. False: it had one already."""
        try:
            res = await self.col.update_one(
                {"_id": name, "state.token": None},
                {
                    "$set": {f"state.{k}": v for k, v in state.items()},
                    "$setOnInsert": {"holder": None, "expires_at": EPOCH},
                },
                upsert=True,
            )
        except DuplicateKeyError:  # it exists, with a checkpoint
            return False
        return bool(res.modified_count or res.upserted_id)

    async def release(self, name: str, holder: str) -> None:
        await self.col.update_one({"_id": name, "holder": holder}, {"$set": {"expires_at": self.clock.now()}})

    async def save(self, name: str, holder: str, state: dict[str, Any]) -> bool:
        """Write the checkpoint if `holder` still holds the lease."""
        res = await self.col.update_one(
            {"_id": name, "holder": holder}, {"$set": {f"state.{k}": v for k, v in state.items()}}
        )
        return res.matched_count == 1

    async def get(self, name: str) -> dict | None:
        return await self.col.find_one({"_id": name})
