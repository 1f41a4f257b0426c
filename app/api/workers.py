"""`GET /api/v1/jobs/workers`: the worker registry (seed 003's "processor status").

Every worker process (a `switchyard worker`, or the pool inside `serve`) registers in the
`workers` collection and beats every lease/3 with the jobs it is running. A worker that
misses its beats for a lease is marked `dead` by maintenance (and its engine permits are
returned); one that shut down cleanly is `stopped`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from .auth import Principal, require_role
from .jobs import strict_query
from .schemas import Stamp

router = APIRouter(prefix="/api/v1/jobs/workers", tags=["workers"])

WorkerStatus = Literal["alive", "dead", "stopped"]


class WorkerOut(BaseModel):
    id: str
    host: str
    pid: int
    kind: str = Field(description="`serve` (a worker process `serve` supervises) or `worker` (a `switchyard worker`)")
    engines: list[str] | None = Field(description="the engines it takes jobs of; null means every engine")
    concurrency: int = Field(description="job slots")
    running: int = Field(description="jobs running at its last heartbeat (of the caller's tenant)")
    running_jobs: list[str] = Field(description="ids of those jobs (only the caller's tenant's)")
    status: WorkerStatus
    started_at: Stamp
    last_seen: Stamp = Field(description="its last heartbeat")
    expires_at: Stamp | None = Field(None, description="when it counts as dead without another heartbeat")
    died_at: Stamp | None = Field(None, description="when maintenance marked it dead")

    @classmethod
    def of(cls, doc: dict) -> WorkerOut:
        return cls(
            id=doc["_id"],
            host=doc["host"],
            pid=doc["pid"],
            kind=doc.get("kind", "worker"),
            engines=doc.get("engines"),
            concurrency=doc["concurrency"],
            running=doc.get("running", 0),
            running_jobs=doc.get("running_jobs") or [],
            status=doc["status"],
            started_at=doc["started_at"],
            last_seen=doc["last_seen"],
            expires_at=doc.get("expires_at"),
            died_at=doc.get("died_at"),
        )


class WorkerList(BaseModel):
    workers: list[WorkerOut]
    count: int


@router.get("", response_model=WorkerList, dependencies=[strict_query("status", "limit")])
async def list_workers(
    request: Request,
    status: WorkerStatus | None = Query(None, description="only workers in this state"),
    limit: int = Query(200, ge=1, le=1000),
    who: Principal = Depends(require_role("operator")),
):
    """Registered workers, newest first. A tenant's caller sees, of each worker's running
    jobs, only its own tenant's (and `running` counts those)."""
    store = request.app.state.store
    docs = await store.workers.list(status=status, limit=limit)
    if who.scope is not None:
        ids = sorted({i for d in docs for i in d.get("running_jobs") or []})
        mine = {j["_id"] for j in await store.jobs.by_ids(ids, {"tenant": who.scope}, {"_id": 1})} if ids else set()
        for d in docs:
            d["running_jobs"] = [i for i in d.get("running_jobs") or [] if i in mine]
            d["running"] = len(d["running_jobs"])
    return WorkerList(workers=[WorkerOut.of(d) for d in docs], count=len(docs))
