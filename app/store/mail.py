"""The `mail_outbox` collection: email waiting to be sent, with retry and backoff.

States: `pending` (due at `next_attempt_at`) → `sending` (claimed by one sender, under a
lease token until `lease_until`) → `sent`, or back to `pending` after a failure, or `dead`
after `mail_max_attempts`. Invariants:
- `_id` is `<event seq>:<user>`: one event gives a user at most one email, however often the
  notifier re-reads it.
- Every move out of `sending` is guarded by the claim's token. A sender that dies mid-send
  leaves the message `sending`; after its lease it is retried with the same Message-ID, so a
  mail server that saw the first try can tell the copy apart.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from ..errors import LeaseLost
from .db import outbox_next_due


class MailStore:
    def __init__(self, db: AsyncDatabase, settings, clock) -> None:
        self.col = db["mail_outbox"]
        self.settings, self.clock = settings, clock

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("status", ASCENDING), ("next_attempt_at", ASCENDING)])
        await self.col.create_index("sent_at", expireAfterSeconds=30 * 24 * 3600, name="retention")

    async def enqueue(self, messages: list[dict]) -> int:
        """Add messages (`_id`, `to`, `subject`, `body`); ones already there are left alone."""
        if not messages:
            return 0
        now = self.clock.now()
        docs = [
            {**m, "status": "pending", "attempts": 0, "created_at": now, "next_attempt_at": now, "last_error": None}
            for m in messages
        ]
        try:
            return len((await self.col.insert_many(docs, ordered=False)).inserted_ids)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
            return exc.details.get("nInserted", 0)

    async def next_due(self, until: datetime) -> datetime | None:
        """When the next message is due, looking no further than `until` (`outbox_next_due`)."""
        return await outbox_next_due(self.col, "status", "pending", "sending", until)

    async def claim_due(self, limit: int, lease_seconds: float) -> list[dict]:
        """Claim up to `limit` due messages, each with its own token; first take back the
        ones whose sender's lease ran out."""
        now = self.clock.now()
        stale = await self.col.find({"status": "sending", "lease_until": {"$lt": now}}, {"_id": 1}).to_list(100)
        for doc in stale:
            await self.col.update_one(
                {"_id": doc["_id"], "status": "sending", "lease_until": {"$lt": now}},
                {"$set": {"status": "pending", "next_attempt_at": now}},
            )
        due = (
            await self.col.find({"status": "pending", "next_attempt_at": {"$lte": now}})
            .sort("next_attempt_at", 1)
            .limit(limit)
            .to_list(limit)
        )
        claimed = []
        for doc in due:
            token = uuid.uuid4().hex
            res = await self.col.update_one(
                {"_id": doc["_id"], "status": "pending", "attempts": doc["attempts"]},
                {
                    "$set": {
                        "status": "sending",
                        "token": token,
                        "lease_until": now + timedelta(seconds=lease_seconds),
                    },
                    "$inc": {"attempts": 1},
                },
            )
            if res.modified_count:
                claimed.append({**doc, "token": token, "attempts": doc["attempts"] + 1})
        return claimed

    async def sent(self, mail_id: str, token: str) -> None:
        await self._guarded(
            mail_id,
            token,
            {"$set": {"status": "sent", "sent_at": self.clock.now()}, "$unset": {"token": "", "lease_until": ""}},
        )

    async def failed(self, mail_id: str, token: str, error: str, attempts: int) -> str:
        """Back to pending with backoff, or `dead` when attempts are used up. Returns the status."""
        s = self.settings
        if attempts >= s.mail_max_attempts:
            status, update = "dead", {"status": "dead", "last_error": error}
        else:
            delay = min(s.mail_retry_max_seconds, s.mail_retry_base_seconds * 2 ** (attempts - 1))
            status = "pending"
            update = {
                "status": status,
                "last_error": error,
                "next_attempt_at": self.clock.now() + timedelta(seconds=delay),
            }
        await self._guarded(mail_id, token, {"$set": update, "$unset": {"token": "", "lease_until": ""}})
        return status

    async def _guarded(self, mail_id: str, token: str, update: dict) -> None:
        res = await self.col.update_one({"_id": mail_id, "status": "sending", "token": token}, update)
        if res.matched_count == 0:
            raise LeaseLost(f"mail {mail_id} is no longer claimed with this token")

    async def counts(self) -> dict[str, int]:
        cursor = await self.col.aggregate(
            [{"$match": {"status": {"$ne": "sent"}}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        )
        rows = await cursor.to_list(None)
        return {r["_id"]: r["n"] for r in rows}

    async def get(self, mail_id: str) -> dict | None:
        return await self.col.find_one({"_id": mail_id})

    async def last_sent_at(self) -> datetime | None:
        doc = await self.col.find_one({"status": "sent"}, {"sent_at": 1}, sort=[("sent_at", -1)])
        return doc["sent_at"] if doc else None
