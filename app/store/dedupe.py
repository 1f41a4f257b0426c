"""The `dedupe` collection: `{_id: "<owner>:<dedupe_key>", job_id}`, one per live key.

Uniqueness comes from `_id`, so `jobs` needs no unique index (every index on `jobs` slows
every transition). Entries are never removed on the hot path: an entry whose job is gone or
terminal is stale, and the next submit with that key replaces it, guarded by the job id it
read, so two submits cannot both win.
"""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError


class DedupeStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.col = db["dedupe"]

    async def claim(self, key: str, job_id: str, session=None) -> str | None:
        """Bind `key` to `job_id`. Returns None on success, or the job id already bound.
        `session`: in the caller's transaction (the binding exists only if it commits); read
        first there, since a duplicate key error would abort the caller's transaction."""
        if session is not None and (doc := await self.col.find_one({"_id": key}, session=session)) is not None:
            return doc["job_id"]
        try:
            await self.col.insert_one({"_id": key, "job_id": job_id}, session=session)
            return None
        except DuplicateKeyError:
            doc = await self.col.find_one({"_id": key}, session=session)
            return doc["job_id"] if doc else ""

    async def drop(self, key: str, job_id: str, session=None) -> None:
        """Unbind `key` if it is still bound to `job_id`."""
        await self.col.delete_one({"_id": key, "job_id": job_id}, session=session)
