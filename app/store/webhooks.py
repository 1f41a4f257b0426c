"""The `webhooks` collection: the endpoints each tenant registered to hear about its jobs
and workflows (docs/webhooks.md). Their deliveries are app/store/webhook_deliveries.py's.

A webhook belongs to the tenant of whoever registered it (`tenant`, `owner`), and receives
only that tenant's events, of the types in `events` (`*`: all of them), whose seq is above
`since_seq`: the log's last seq when it was registered, so a notifier that is catching up
never sends a new webhook what happened before it existed.

Invariants:
- `secret` leaves this module only towards the sender (`by_id`); listings and answers are
  read with `PUBLIC`, which leaves it out.
- Pausing does not stop deliveries from being written: they wait (`held`) and go out after
  a resume. Deleting removes the webhook first and its deliveries second, so a delivery
  written in between finds no webhook and is discarded by the sender.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from ..domain.models import tenant_of
from ..errors import NotFound

PUBLIC = {"secret": 0}  # the projection of every read that may reach an answer


class WebhookDoc(TypedDict):
    _id: str
    tenant: str
    owner: str
    url: str
    events: list[str]  # event types, or ["*"]
    secret: str  # the HMAC key; absent from reads projected with PUBLIC
    paused: bool
    since_seq: int
    created_at: datetime
    updated_at: datetime


class WebhookStore:
    def __init__(self, db: AsyncDatabase, clock) -> None:
        self.col = db["webhooks"]
        self.clock = clock

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("tenant", ASCENDING), ("_id", DESCENDING)])

    async def create(
        self, *, owner: str, url: str, events: list[str], secret: str, since_seq: int, now: datetime
    ) -> WebhookDoc:
        doc: WebhookDoc = {
            "_id": str(ObjectId()),
            "tenant": tenant_of(owner),
            "owner": owner,
            "url": url,
            "events": events,
            "secret": secret,
            "paused": False,
            "since_seq": int(since_seq),
            "created_at": now,
            "updated_at": now,
        }
        await self.col.insert_one(doc)
        return doc

    async def get(self, webhook_id: str) -> dict:
        """Without its secret; NotFound if there is none."""
        doc = await self.col.find_one({"_id": str(webhook_id)}, PUBLIC)
        if doc is None:
            raise NotFound(f"webhook {webhook_id!r} not found", field="webhook_id")
        return doc

    async def by_id(self, webhook_id: str) -> WebhookDoc | None:
        """With its secret: for the sender only."""
        return await self.col.find_one({"_id": str(webhook_id)})

    async def count(self, tenant: str) -> int:
        return await self.col.count_documents({"tenant": str(tenant)})

    async def list(self, *, tenant: str | None, limit: int = 200) -> list[dict]:
        """Newest first, without secrets; every tenant's for `tenant=None`."""
        filt = {} if tenant is None else {"tenant": str(tenant)}
        return await self.col.find(filt, PUBLIC).sort("_id", -1).limit(limit).to_list(limit)

    async def subscriptions(self) -> list[dict]:
        """What the notifier matches events against: every webhook, paused ones included
        (their deliveries wait). Read afresh for each batch of events, so a webhook gets
        every event after its `since_seq` however soon after registering that comes."""
        return await self.col.find({}, {"tenant": 1, "events": 1, "since_seq": 1}).to_list(None)

    async def set_paused(self, webhook_id: str, paused: bool) -> dict:
        res = await self.col.update_one(
            {"_id": str(webhook_id)}, {"$set": {"paused": paused, "updated_at": self.clock.now()}}
        )
        if res.matched_count == 0:
            raise NotFound(f"webhook {webhook_id!r} not found", field="webhook_id")
        return await self.get(webhook_id)

    async def delete(self, webhook_id: str) -> bool:
        return (await self.col.delete_one({"_id": str(webhook_id)})).deleted_count == 1
