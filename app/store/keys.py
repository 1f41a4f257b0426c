"""The `api_keys` collection: API keys, stored hashed.

A token is `sy_<key id>_<secret>`. Only the SHA-256 of the secret is kept; the token is
shown once, at creation. Every request reads its key by id, so a revoked key stops working
at once, in every API process; open streams re-read theirs (`live`) every few seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from bson import ObjectId
from pymongo.asynchronous.database import AsyncDatabase

from ..errors import NotFound

PREFIX = "sy_"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed API key token, else None."""
    if not token.startswith(PREFIX):
        return None
    key_id, _, secret = token[len(PREFIX) :].partition("_")
    if len(key_id) != 24 or not secret or not all(c in "0123456789abcdef" for c in key_id):
        return None
    return key_id, secret


class KeyStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.col = db["api_keys"]

    async def ensure_indexes(self) -> None:
        await self.col.create_index([("tenant", 1), ("_id", -1)])

    async def create(
        self, *, tenant: str, user: str, role: str, name: str, created_by: str, now: datetime
    ) -> tuple[dict, str]:
        key_id, secret = str(ObjectId()), secrets.token_urlsafe(32)
        doc = {
            "_id": key_id,
            "tenant": tenant,
            "user": user,
            "role": role,
            "name": name,
            "hash": _digest(secret),
            "created_at": now,
            "created_by": created_by,
            "revoked_at": None,
            "last_used_at": None,
        }
        await self.col.insert_one(doc)
        return doc, f"{PREFIX}{key_id}_{secret}"

    async def verify(self, token: str) -> dict | None:
        """The key a token names, if it is live and the secret matches."""
        parts = split_token(token)
        if parts is None:
            return None
        doc = await self.col.find_one({"_id": parts[0]})
        if doc is None or doc.get("revoked_at") is not None:
            return None
        return doc if hmac.compare_digest(doc["hash"], _digest(parts[1])) else None

    async def live(self, key_ids: set[str]) -> set[str]:
        """Which of `key_ids` are not revoked: one read for every open stream that holds one."""
        docs = await self.col.find({"_id": {"$in": sorted(key_ids)}, "revoked_at": None}, {"_id": 1}).to_list(None)
        return {d["_id"] for d in docs}

    async def list(self, tenant: str | None) -> list[dict]:
        filt = {} if tenant is None else {"tenant": tenant}
        return await self.col.find(filt, {"hash": 0}).sort("_id", -1).limit(500).to_list(500)

    async def revoke(self, key_id: str, tenant: str | None, now: datetime) -> dict:
        """Revoke a key; one of another tenant is "not found" to a tenant's admin."""
        filt = {"_id": key_id} if tenant is None else {"_id": key_id, "tenant": tenant}
        res = await self.col.update_one({**filt, "revoked_at": None}, {"$set": {"revoked_at": now}})
        doc = await self.col.find_one(filt, {"hash": 0})
        if doc is None:
            raise NotFound(f"key {key_id!r} not found", field="key_id")
        return {**doc, "newly_revoked": bool(res.modified_count)}

    async def users_with_roles(self, tenant: str, roles: list[str]) -> list[str]:
        """The tenant's users holding a live key with one of `roles`, as owners
        (`<tenant>/<user>`): who an approval naming a role is asked of."""
        users = await self.col.distinct(
            "user", {"tenant": str(tenant), "revoked_at": None, "role": {"$in": list(roles)}}
        )
        return sorted(f"{tenant}/{u}" for u in users)
