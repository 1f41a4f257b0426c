"""The `webhook_deliveries` collection: the outbox of webhook deliveries, with retry,
back-off and a record of every attempt (docs/webhooks.md).

States (`DeliveryState`, in the `state` field): `pending` (due at `next_attempt_at`) →
`sending` (claimed by one sender, under a token until `lease_until`) → `delivered`, or back
to `pending` with exponential back-off (and jitter) after a failure, or `dead` after
`webhook_max_attempts`; `held` while its webhook is paused. A redelivery moves a dead or
delivered one back to `pending` with its tries reset.

Invariants:
- `_id` is `<event seq>:<webhook id>`: an event gives a webhook at most one delivery,
  however often the notifier re-reads the log, and the id (the `Switchyard-Delivery` header)
  is the same on every retry, so a receiver can drop copies.
- Every move out of `sending` is guarded by the claim's token: a sender whose lease ran out
  (and whose delivery another sender took) writes nothing. A delivery whose sender died is
  taken back after its lease, with that try counted, so one that kills its sender cannot
  loop forever.
- `body` is the JSON text fixed when the delivery was written: every retry sends the same
  bytes (each signed afresh with its own timestamp).
- `log` keeps the last `LOG_LIMIT` attempts, each `{at, status_code, error, duration_ms}`.
- A finished delivery expires (`expire_at`, a TTL): delivered ones after the event log's
  retention, dead ones after four times that.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from ..errors import Conflict, LeaseLost, NotFound
from .db import ensure_ttl, outbox_next_due

LOG_LIMIT = 50


class DeliveryState(StrEnum):
    PENDING = "pending"
    """Due at `next_attempt_at`. Left by a sender's claim."""
    SENDING = "sending"
    """Claimed by one sender. Left by that sender's delivered / failed / hold / discard, or
    by the next claim round once `lease_until` has passed (back to pending)."""
    DELIVERED = "delivered"
    """The receiver answered 2xx. Left only by a redelivery."""
    DEAD = "dead"
    """Out of tries. Left only by a redelivery."""
    HELD = "held"
    """Its webhook is paused. Left by the resume (back to pending)."""


class Attempt(TypedDict):
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryDoc(TypedDict):
    _id: str  # "<seq>:<webhook id>"
    webhook_id: str
    tenant: str
    seq: int
    event_type: str
    body: str
    state: str  # a DeliveryState
    tries: int  # counted against webhook_max_attempts; reset by a redelivery
    next_attempt_at: datetime
    created_at: datetime
    last_error: str | None
    log: list[Attempt]
    token: NotRequired[str]
    lease_until: NotRequired[datetime]
    delivered_at: NotRequired[datetime]
    expire_at: NotRequired[datetime]


def delivery_id(seq: int, webhook_id: str) -> str:
    return f"{int(seq)}:{webhook_id}"


class DeliveryStore:
    def __init__(self, db: AsyncDatabase, settings, clock) -> None:
        self.col = db["webhook_deliveries"]
        self.settings, self.clock = settings, clock

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("state", ASCENDING), ("next_attempt_at", ASCENDING)])
        await self.col.create_index([("webhook_id", ASCENDING), ("seq", DESCENDING)])
        await ensure_ttl(self.col, "expire_at", 0)

    async def enqueue(self, deliveries: list[dict]) -> int:
        """Write deliveries (`_id`, `webhook_id`, `tenant`, `seq`, `event_type`, `body`);
        ones already there are left alone. Returns how many were new."""
        if not deliveries:
            return 0
        now = self.clock.now()
        docs = [
            {
                **d,
                "state": DeliveryState.PENDING.value,
                "tries": 0,
                "next_attempt_at": now,
                "created_at": now,
                "last_error": None,
                "log": [],
            }
            for d in deliveries
        ]
        try:
            return len((await self.col.insert_many(docs, ordered=False)).inserted_ids)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
            return exc.details.get("nInserted", 0)

    async def next_due(self, until: datetime) -> datetime | None:
        """When the next delivery is due, looking no further than `until` (`outbox_next_due`)."""
        return await outbox_next_due(self.col, "state", DeliveryState.PENDING.value, DeliveryState.SENDING.value, until)

    async def claim_due(self, limit: int, lease_seconds: float) -> list[DeliveryDoc]:
        """Claim up to `limit` due deliveries, each under its own token, counting a try;
        first take back the ones whose sender's lease ran out."""
        now = self.clock.now()
        stale = await self.col.find(
            {"state": DeliveryState.SENDING.value, "lease_until": {"$lt": now}}, {"_id": 1}
        ).to_list(100)
        for doc in stale:
            await self.col.update_one(
                {"_id": doc["_id"], "state": DeliveryState.SENDING.value, "lease_until": {"$lt": now}},
                {"$set": {"state": DeliveryState.PENDING.value, "next_attempt_at": now}},
            )
        if limit <= 0:
            return []
        due = (
            await self.col.find({"state": DeliveryState.PENDING.value, "next_attempt_at": {"$lte": now}})
            .sort("next_attempt_at", 1)
            .limit(limit)
            .to_list(limit)
        )
        claimed = []
        for doc in due:
            token = uuid.uuid4().hex
            res = await self.col.update_one(
                {"_id": doc["_id"], "state": DeliveryState.PENDING.value, "tries": doc["tries"]},
                {
                    "$set": {
                        "state": DeliveryState.SENDING.value,
                        "token": token,
                        "lease_until": now + timedelta(seconds=lease_seconds),
                    },
                    "$inc": {"tries": 1},
                },
            )
            if res.modified_count:
                claimed.append({**doc, "token": token, "tries": doc["tries"] + 1})
        return claimed

    async def delivered(self, did: str, token: str, attempt: Attempt) -> None:
        now = self.clock.now()
        expire = now + timedelta(seconds=int(self.settings.event_retention_seconds))
        await self._guarded(
            did,
            token,
            {
                "$set": {
                    "state": DeliveryState.DELIVERED.value,
                    "delivered_at": now,
                    "last_error": None,
                    "expire_at": expire,
                },
                "$unset": {"token": "", "lease_until": ""},
                "$push": {"log": {"$each": [attempt], "$slice": -LOG_LIMIT}},
            },
        )

    async def failed(self, did: str, token: str, attempt: Attempt, tries: int) -> DeliveryState:
        """Back to pending with back-off, or dead when the tries are used up."""
        s, now = self.settings, self.clock.now()
        update: dict[str, Any] = {"last_error": attempt["error"]}
        if tries >= s.webhook_max_attempts:
            state = DeliveryState.DEAD
            update["expire_at"] = now + timedelta(seconds=4 * int(s.event_retention_seconds))
        else:
            state = DeliveryState.PENDING
            delay = min(s.webhook_retry_max_seconds, s.webhook_retry_base_seconds * 2 ** (tries - 1))
            delay *= random.uniform(0.8, 1.0)  # jitter: a receiver back from an outage is not hit in lockstep
            update["next_attempt_at"] = now + timedelta(seconds=delay)
        update["state"] = state.value
        await self._guarded(
            did,
            token,
            {
                "$set": update,
                "$unset": {"token": "", "lease_until": ""},
                "$push": {"log": {"$each": [attempt], "$slice": -LOG_LIMIT}},
            },
        )
        return state

    async def hold(self, did: str, token: str) -> None:
        """Its webhook is paused: wait, the try given back."""
        await self._guarded(
            did,
            token,
            {
                "$set": {"state": DeliveryState.HELD.value},
                "$unset": {"token": "", "lease_until": ""},
                "$inc": {"tries": -1},
            },
        )

    async def discard(self, did: str, token: str) -> None:
        """Its webhook is gone."""
        await self.col.delete_one({"_id": did, "state": DeliveryState.SENDING.value, "token": token})

    async def release_held(self, webhook_id: str) -> int:
        """A webhook was resumed: its held deliveries are due now. Idempotent, so a reply
        lost to a failover is made good by calling it again."""
        res = await self.col.update_many(
            {"webhook_id": str(webhook_id), "state": DeliveryState.HELD.value},
            {"$set": {"state": DeliveryState.PENDING.value, "next_attempt_at": self.clock.now()}},
        )
        return res.modified_count

    async def redeliver(self, did: str, webhook_id: str) -> DeliveryDoc:
        """A dead or delivered delivery back to pending, due now, with its tries reset."""
        doc = await self.get(did, webhook_id)
        if doc["state"] not in (DeliveryState.DEAD, DeliveryState.DELIVERED):
            raise Conflict(f"delivery {did!r} is {doc['state']}: only a dead or delivered one is redelivered")
        res = await self.col.update_one(
            {"_id": did, "state": doc["state"]},
            {
                "$set": {"state": DeliveryState.PENDING.value, "tries": 0, "next_attempt_at": self.clock.now()},
                "$unset": {"expire_at": "", "delivered_at": ""},
            },
        )
        if res.modified_count == 0:  # it moved meanwhile: say what it is now
            raise Conflict(f"delivery {did!r} changed meanwhile; read it again")
        return await self.get(did, webhook_id)

    async def _guarded(self, did: str, token: str, update: dict) -> None:
        res = await self.col.update_one({"_id": did, "state": DeliveryState.SENDING.value, "token": token}, update)
        if res.matched_count == 0:
            raise LeaseLost(f"delivery {did} is no longer claimed with this token")

    async def get(self, did: str, webhook_id: str | None = None) -> DeliveryDoc:
        doc = await self.col.find_one({"_id": str(did)})
        if doc is None or (webhook_id is not None and doc["webhook_id"] != webhook_id):
            raise NotFound(f"delivery {did!r} not found", field="delivery_id")
        return doc

    async def list(
        self, webhook_id: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[DeliveryDoc], int | None]:
        """Newest first (by event seq); `before` is the previous page's `next_cursor`."""
        filt: dict[str, Any] = {"webhook_id": str(webhook_id)}
        if before is not None:
            filt["seq"] = {"$lt": int(before)}
        docs = await self.col.find(filt).sort("seq", -1).limit(limit + 1).to_list(limit + 1)
        return docs[:limit], (docs[limit - 1]["seq"] if len(docs) > limit else None)

    async def delete_for(self, webhook_id: str) -> int:
        return (await self.col.delete_many({"webhook_id": str(webhook_id)})).deleted_count
