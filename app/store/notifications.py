"""The `notifications` and `preferences` collections: per-user notifications with their
read state, and each user's choice of channels per event type.

A notification's `_id` is `<event seq>:<user>`, so the notifier that re-reads an event
after a crash cannot store it twice, and a WebSocket push of the same notification names
the same id the client later marks read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, OperationFailure

from ..errors import NotFound
from .db import ensure_ttl
from .feed import HISTORY_LOST, HistoryLost, next_batch


def notification_id(seq: int, user: str) -> str:
    """URL-safe: an owner is `<tenant>/<user>`, names of letters, digits, `_` and `-`."""
    return f"{seq}:{user.replace('/', '~')}"


class NotificationStore:
    def __init__(self, db: AsyncDatabase, settings) -> None:
        self.col = db["notifications"]
        self.prefs = db["preferences"]
        self.settings = settings

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("user", ASCENDING), ("seq", DESCENDING)])
        await self.col.create_index([("user", ASCENDING), ("read", ASCENDING), ("seq", DESCENDING)])
        await ensure_ttl(self.col, "created_at", int(self.settings.event_retention_seconds) * 4)

    async def inserted(
        self, types, resume_token: Any | None, *, max_await_ms: int, min_interval: float, gate=None
    ) -> AsyncIterator[tuple[list[dict], Any]]:
        """Follows the inserts of notifications of `types` (app/notifications/direct.py): yields
        `([], token)` once the change stream is open, then `(notifications, token)` per server
        reply, the token to resume after them. Raises `HistoryLost` when the resume point is
        older than the server's log."""
        pipeline = [{"$match": {"operationType": "insert", "fullDocument.type": {"$in": sorted(types)}}}]
        try:
            async with await self.col.watch(
                pipeline, resume_after=resume_token, max_await_time_ms=max_await_ms
            ) as stream:
                yield [], stream.resume_token or resume_token
                while stream.alive:
                    changes = await next_batch(stream, 1000, min_interval=min_interval, gate=gate)
                    yield [c["fullDocument"] for c in changes if c.get("fullDocument")], stream.resume_token
        except OperationFailure as exc:
            if exc.code in HISTORY_LOST:
                raise HistoryLost(str(exc)) from exc
            raise

    async def add_many(self, docs: list[dict]) -> int:
        if not docs:
            return 0
        try:
            res = await self.col.insert_many(docs, ordered=False)
            return len(res.inserted_ids)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise
            return exc.details.get("nInserted", 0)

    async def list(
        self, user: str, *, unread: bool | None = None, before: int | None = None, limit: int = 50
    ) -> tuple[list[dict], int | None]:
        """Newest first. `before` is the cursor: the seq of the last one on the previous page."""
        filt: dict[str, Any] = {"user": user}
        if unread is not None:
            filt["read"] = not unread
        if before is not None:
            filt["seq"] = {"$lt": int(before)}
        docs = await self.col.find(filt).sort("seq", -1).limit(limit + 1).to_list(limit + 1)
        return docs[:limit], (docs[limit - 1]["seq"] if len(docs) > limit else None)

    async def unread_count(self, user: str) -> int:
        return await self.col.count_documents({"user": user, "read": False})

    async def mark_read(self, user: str, notification_id: str, now) -> dict:
        """Mark one read. Another user's notification is "not found", like a missing one."""
        res = await self.col.update_one(
            {"_id": notification_id, "user": user}, {"$set": {"read": True, "read_at": now}}
        )
        if res.matched_count == 0:
            raise NotFound(f"notification {notification_id!r} not found", field="notification_id")
        return await self.col.find_one({"_id": notification_id})

    async def mark_all_read(self, user: str, now) -> int:
        res = await self.col.update_many({"user": user, "read": False}, {"$set": {"read": True, "read_at": now}})
        return res.modified_count

    async def preferences(self, user: str) -> dict:
        doc = await self.prefs.find_one({"_id": user})
        return doc or {"_id": user, "email": None, "channels": {}}

    async def set_preferences(self, user: str, email: str | None, channels: dict[str, list[str]], now) -> dict:
        doc = {"email": email, "channels": channels, "updated_at": now}
        await self.prefs.replace_one({"_id": user}, doc, upsert=True)
        return {"_id": user, **doc}

    async def preferences_of(self, users: list[str]) -> dict[str, dict]:
        docs = await self.prefs.find({"_id": {"$in": users}}).to_list(None)
        return {d["_id"]: d for d in docs}
