"""Factories for jobs in any state. They reach each state through the store's real
transitions (submit, claim, complete, ...), never by writing documents by hand."""

from __future__ import annotations

import uuid

from app.domain.models import JobSpec


class JobFactory:
    def __init__(self, store) -> None:
        self.store = store

    def spec(self, **kw) -> JobSpec:
        kw.setdefault("engine", "testing")
        kw.setdefault("operation", "ok")
        return JobSpec(**kw)

    async def queued(self, **kw) -> dict:
        owner = kw.pop("owner", "admin")  # not part of the spec
        job, _ = await self.store.lifecycle.submit(self.spec(**kw), owner=owner)
        return job

    async def scheduled(self, delay_seconds: float = 3600, **kw) -> dict:
        return await self.queued(delay_seconds=delay_seconds, **kw)

    async def running(self, worker: str = "wfactory", **kw) -> dict:
        """A job leased to `worker`. Uses an engine of its own so the claim takes this job."""
        kw.setdefault("engine", "f" + uuid.uuid4().hex[:10])
        job = await self.queued(**kw)
        engine = await self.store.engines.get(job["engine"])
        claimed = await self.store.claimer.claim(engine, worker, 1)
        assert [c["_id"] for c in claimed] == [job["_id"]]
        return claimed[0]

    async def completed(self, result=None, **kw) -> dict:
        job = await self.running(**kw)
        await self.store.lifecycle.complete(job, job["lease_token"], result or {"ok": True}, 5)
        return await self.store.jobs.get(job["_id"])

    async def failed(self, code: str = "boom", **kw) -> dict:
        job = await self.running(**kw)
        err = {"code": code, "message": "failed in a factory", "attempt": job["attempt"], "at": None, "worker": None}
        await self.store.lifecycle.fail(job, job["lease_token"], err, 5)
        return await self.store.jobs.get(job["_id"])

    async def cancelled(self, **kw) -> dict:
        job = await self.queued(**kw)
        return await self.store.lifecycle.cancel(job["_id"])


def dying_lifecycle(store):
    """The store's lifecycle in a process that dies right after each terminal write, before
    the workflow settle that follows it: what maintenance must repair."""
    import copy

    async def never(_ids):
        return None

    from app.store.settles import Settles

    lc = copy.copy(store.lifecycle)
    lc.settles = Settles(never)
    return lc
