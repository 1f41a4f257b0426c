"""`/api/v1/jobs/queue`: per-engine status, pause, resume and limits (seed 001), under the
engine model of docs/security.md:

- An engine is deployment configuration, shared by every tenant. Its limit and its pause
  are deployment-wide and only the bootstrap admin sets them; a tenant operator pausing an
  engine pauses only its own tenant's work in it, and may not change the limit (403).
- An engine exists when a handler is registered for it or it has a document; any other
  name is a 404, and nothing is created.
- A tenant's queue status counts only its own jobs; the bootstrap admin's counts all.
- Every control is audited; a deployment-wide one in every tenant's audit log.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request

from .. import registry
from ..domain.models import NAME_PATTERN
from ..errors import Forbidden, NotFound, ValidationFailed
from ..store.bands import band_lane, key_block, key_running
from ..store.engines import budget_hold, busy_bands, held_until
from .auth import Principal, audit, require_principal, require_role
from .schemas import KeyOut, LimitsIn, QueueOut, QueueStatus

router = APIRouter(prefix="/api/v1/jobs/queue", tags=["queues"])
QueueName = Path(pattern=NAME_PATTERN, description="the engine's name")
EVERY_TENANT = "*"  # the audit tenant of a deployment-wide action: every tenant's log shows it


async def engine_docs(store) -> dict[str, dict]:
    """Every engine: those with a document, and those with handlers at their defaults."""
    docs = {d["_id"]: d for d in await store.engines.list()}
    for h in registry.all_handlers():
        docs.setdefault(h.engine, {"_id": h.engine, "limit": store.settings.default_limit(h.engine)})
    return docs


async def known_engine(store, name: str) -> None:
    if name not in {h.engine for h in registry.all_handlers()} and name not in {
        d["_id"] for d in await store.engines.list()
    }:
        raise NotFound(f"unknown queue {name!r}", field="name")


async def queue_out(store, doc: dict, who: Principal, counts: dict | None = None) -> QueueOut:
    tenant = who.scope
    if tenant is None:
        running, queued = doc.get("running", 0), max(doc.get("queued", 0), 0)
    else:
        mine = (counts if counts is not None else await store.jobs.tenant_counts(tenant)).get(doc["_id"], {})
        running, queued = mine.get("running", 0), mine.get("queued", 0)
    oldest = await store.jobs.oldest_queued_at(doc, tenant) if queued > 0 else None
    age = (store.clock.now() - oldest).total_seconds() if oldest else None
    weights = doc.get("weights") or {}
    hold = held_until(doc, tenant, store.clock.now())  # the admin sees the engine-wide hold
    budget = budget_hold(doc, tenant, store.clock.now())  # a tenant's own; None for the admin
    return QueueOut(
        name=doc["_id"],
        running=running,
        queued=queued,
        max_concurrent_jobs=doc["limit"],
        paused=doc.get("paused", False),
        oldest_queued_age_seconds=age,
        tenant_paused=tenant is not None and tenant in (doc.get("paused_tenants") or {}),
        held_until=hold[0] if hold else None,
        held_key=hold[1] if hold else None,
        budget_reached=budget is not None,
        budget_until=budget["until"] if budget else None,
        rate=doc.get("rate"),
        burst=doc.get("burst") if doc.get("rate") else None,
        key=doc.get("key"),
        key_rate=doc.get("key_rate"),
        key_burst=doc.get("key_burst") if doc.get("key_rate") else None,
        key_concurrency=doc.get("key_concurrency"),
        keys_at_limit=await keys_at_limit(store, doc, tenant, store.clock.now()),
        weights=weights if tenant is None else ({tenant: weights[tenant]} if tenant in weights else None),
    )


async def keys_at_limit(store, doc: dict, tenant: str | None, now, cap: int = 50) -> list[KeyOut]:
    """The limit keys (the caller's tenant's, or all) that have queued jobs and may not start
    one now. A band's cursor lags behind claims, so each is checked for a queued job with one
    bounded window read."""
    if not doc.get("lanes"):
        return []
    names = {v["lane"]: v["name"] for v in doc["lanes"].values()}
    out: list[KeyOut] = []
    for key, p, band_tenant, lo, hi in busy_bands(doc, paused_too=True, now=now):
        lane = band_lane(key)
        if not lane or (tenant is not None and band_tenant != tenant) or len(out) >= cap:
            continue
        block = key_block(doc, lane, now)
        if block is None or not (await store.claimer.window(doc["_id"], p, band_tenant, lo, hi, 1, {"seq": 1}))[0]:
            continue
        until = block.get("next_slot_at") or block.get("until")
        out.append(
            KeyOut(key=names.get(lane, str(lane)), limit=block["limit"], running=key_running(doc, lane), until=until)
        )
    return out


@router.get("/status", response_model=QueueStatus)
async def queue_status(request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    counts = await store.jobs.tenant_counts(who.scope) if who.scope is not None else None
    return QueueStatus(
        queues=[await queue_out(store, d, who, counts) for _, d in sorted((await engine_docs(store)).items())]
    )


async def _pause(request: Request, name: str, who: Principal, paused: bool) -> QueueOut:
    store = request.app.state.store
    await known_engine(store, name)
    doc = await store.engines.set_paused(name, paused, tenant=who.scope)
    await audit(
        request,
        who,
        "queue.pause" if paused else "queue.resume",
        name,
        log_tenant=EVERY_TENANT if who.scope is None else None,
        scope="engine" if who.scope is None else "tenant",
    )
    return await queue_out(store, doc, who)


@router.post("/{name}/pause", response_model=QueueOut, responses={404: {"description": "no such engine"}})
async def pause(request: Request, name: str = QueueName, who: Principal = Depends(require_role("operator"))):
    """The bootstrap admin pauses the engine for everyone; a tenant operator pauses only its
    tenant's work in it (`tenant_paused`)."""
    return await _pause(request, name, who, True)


@router.post("/{name}/resume", response_model=QueueOut, responses={404: {"description": "no such engine"}})
async def resume(request: Request, name: str = QueueName, who: Principal = Depends(require_role("operator"))):
    """Undoes the caller's own pause: the engine's for the bootstrap admin, its tenant's
    for a tenant operator."""
    return await _pause(request, name, who, False)


@router.put(
    "/{name}/limits",
    response_model=QueueOut,
    responses={
        403: {"description": "not the bootstrap admin: the limit is deployment-wide"},
        404: {"description": "no such engine"},
    },
)
async def limits(
    body: LimitsIn, request: Request, name: str = QueueName, who: Principal = Depends(require_role("operator"))
):
    """The engine's concurrency limit, rate limit, per-key limits and tenant weights
    (docs/limits.md), across every worker and tenant: the bootstrap admin's. A field left out
    is kept; `null` clears a limit, and `key: null` every per-key limit."""
    if who.scope is not None:
        raise Forbidden("an engine's limits are deployment-wide; only the bootstrap admin sets them", field="name")
    store = request.app.state.store
    await known_engine(store, name)
    given = body.model_fields_set
    current = await store.engines.ensure(name)
    if "burst" in given and "rate" not in given and not current.get("rate"):
        raise ValidationFailed("burst: the engine has no rate limit; give a rate with it", field="burst")
    keyed = body.key if "key" in given else current.get("key")
    for field in ("key_rate", "key_burst", "key_concurrency"):
        if getattr(body, field) is not None and keyed is None:
            raise ValidationFailed(f"{field}: the engine has no limit key; give a key with it", field=field)
    if "key_burst" in given and "key_rate" not in given and not current.get("key_rate"):
        raise ValidationFailed("key_burst: the engine has no per-key rate; give a key_rate with it", field="key_burst")
    keyed_fields = {f: getattr(body, f) for f in ("key", "key_rate", "key_concurrency") if f in given}
    doc = await store.engines.set_limits(
        name,
        limit=body.max_concurrent_jobs,
        rate=body.rate if "rate" in given else ...,
        burst=body.burst,
        weights=body.weights,
        key_burst=body.key_burst,
        **keyed_fields,
    )
    await audit(request, who, "queue.limits", name, log_tenant=EVERY_TENANT, **body.model_dump(exclude_unset=True))
    return await queue_out(store, doc, who)
