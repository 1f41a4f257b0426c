"""The `rate_limits` and `audit` collections: per-tenant token buckets that hold across
API processes, and the audit log of admin and operator actions.

A bucket is one small document per (tenant, purpose), refilled and drawn from in a single
atomic update, so two API processes share one budget exactly (DESIGN.md §5: find-and-modify
is fine on a tiny collection).
"""

from __future__ import annotations

import math
from datetime import datetime

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


class RateLimits:
    def __init__(self, db: AsyncDatabase) -> None:
        self.col = db["rate_limits"]

    async def take(self, key: str, *, rate: float, burst: float, now: datetime, n: float = 1.0) -> float:
        """Draw `n` tokens from bucket `key` (refilled at `rate` per second up to `burst`).
        Returns 0 when granted, else the seconds until `n` tokens will be there."""
        try:
            await self.col.insert_one({"_id": key, "tokens": float(burst), "at": now})
        except DuplicateKeyError:
            pass
        elapsed = {"$divide": [{"$max": [0, {"$subtract": [now, "$at"]}]}, 1000]}
        doc = await self.col.find_one_and_update(
            {"_id": key},
            [
                {
                    "$set": {
                        "tokens": {
                            "$min": [float(burst), {"$add": ["$tokens", {"$multiply": [float(rate), elapsed]}]}]
                        },
                        "at": {"$max": ["$at", now]},
                    }
                },
                {
                    "$set": {
                        "granted": {"$gte": ["$tokens", float(n)]},
                        "tokens": {
                            "$cond": [{"$gte": ["$tokens", float(n)]}, {"$subtract": ["$tokens", float(n)]}, "$tokens"]
                        },
                    }
                },
            ],
            return_document=ReturnDocument.AFTER,
        )
        if doc["granted"]:
            return 0.0
        return max(0.001, (n - doc["tokens"]) / rate) if rate > 0 else math.inf


class AuditLog:
    def __init__(self, db: AsyncDatabase) -> None:
        self.col = db["audit"]

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("tenant", 1), ("_id", -1)])

    async def record(
        self,
        *,
        actor: str,
        role: str,
        tenant: str,
        action: str,
        target: str | None,
        details: dict | None,
        now: datetime,
    ) -> None:
        await self.col.insert_one(
            {
                "_id": str(ObjectId()),
                "at": now,
                "actor": actor,
                "role": role,
                "tenant": tenant,
                "action": action,
                "target": target,
                "details": details or {},
            }
        )

    async def list(self, *, tenant: str | None, after: str | None, limit: int) -> tuple[list[dict], str | None]:
        # A tenant's log has its own entries and the deployment-wide ones (tenant "*").
        filt: dict = {} if tenant is None else {"tenant": {"$in": [str(tenant), "*"]}}
        if after:
            filt["_id"] = {"$lt": str(after)}
        docs = await self.col.find(filt).sort("_id", -1).limit(limit + 1).to_list(limit + 1)
        return docs[:limit], (docs[limit - 1]["_id"] if len(docs) > limit else None)
