"""`/api/v1/jobs/queue`: per-engine status, pause, resume and limits (seed 001)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from app import registry
from app.api.auth import Principal, audit, require_principal, require_role
from app.api.schemas import LimitsIn, QueueOut, QueueStatus
from app.domain.models import NAME_PATTERN

router = APIRouter(prefix="/api/v1/jobs/queue", tags=["queues"])
QueueName = Path(pattern=NAME_PATTERN, description="the engine's name")


async def queue_out(store, doc: dict) -> QueueOut:
    oldest = await store.jobs.oldest_queued_at(doc) if doc.get("queued", 0) > 0 else None
    age = (store.clock.now() - oldest).total_seconds() if oldest else None
    return QueueOut(name=doc["_id"], running=doc.get("running", 0), queued=max(doc.get("queued", 0), 0),
                    max_concurrent_jobs=doc["limit"], paused=doc.get("paused", False), oldest_queued_age_seconds=age)


@router.get("/status", response_model=QueueStatus)
async def queue_status(request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    docs = {d["_id"]: d for d in await store.engines.list()}
    for h in registry.all_handlers():  # engines with handlers but no job yet, at their defaults
        docs.setdefault(h.engine, {"_id": h.engine, "limit": store.settings.default_limit(h.engine)})
    return QueueStatus(queues=[await queue_out(store, d) for _, d in sorted(docs.items())])


@router.post("/{name}/pause", response_model=QueueOut)
async def pause(request: Request, name: str = QueueName, who: Principal = Depends(require_role("operator"))):
    store = request.app.state.store
    out = await queue_out(store, await store.engines.set_paused(name, True))
    await audit(request, who, "queue.pause", name)
    return out


@router.post("/{name}/resume", response_model=QueueOut)
async def resume(request: Request, name: str = QueueName, who: Principal = Depends(require_role("operator"))):
    store = request.app.state.store
    out = await queue_out(store, await store.engines.set_paused(name, False))
    await audit(request, who, "queue.resume", name)
    return out


@router.put("/{name}/limits", response_model=QueueOut)
async def limits(body: LimitsIn, request: Request, name: str = QueueName,
                 who: Principal = Depends(require_role("operator"))):
    store = request.app.state.store
    out = await queue_out(store, await store.engines.set_limit(name, body.max_concurrent_jobs))
    await audit(request, who, "queue.limits", name, max_concurrent_jobs=body.max_concurrent_jobs)
    return out
