"""Abuse limits on creating jobs, per tenant.

- Rate: a token bucket per tenant kept in MongoDB (app/store/guard.py), so the budget holds
  across every API process. A job costs one token; a workflow costs one per step, capped at
  the bucket's size, so a large workflow is admitted when the bucket is full. Over budget:
  429 with `Retry-After`.
- Quota: at most `SWITCHYARD_TENANT_MAX_QUEUED` jobs waiting (queued, scheduled or pending)
  per tenant. The count is read at most once a second per process (counting is a scan on
  SecantusDB), so a burst can overshoot the quota by about a second's worth.

The bootstrap admin (`SWITCHYARD_ADMIN_TOKEN`) is the deployment's own operator and is not
limited.
"""

from __future__ import annotations

import math
import time

from fastapi import Request

from app.errors import RateLimited

_counts: dict[tuple[int, str], tuple[float, int]] = {}


async def admit_jobs(request: Request, who, n: int) -> None:
    if who.is_global:
        return
    settings, store = request.app.state.settings, request.app.state.store
    cost = min(float(n), settings.rate_limit_burst)
    wait = await store.rate_limits.take(f"jobs:{who.tenant}", rate=settings.rate_limit_per_second,
                                        burst=settings.rate_limit_burst, now=store.clock.now(), n=cost)
    if wait:
        raise RateLimited(f"tenant {who.tenant!r} is creating jobs faster than {settings.rate_limit_per_second:g}/s; "
                          f"retry in {wait:.1f} s", field="tenant", retry_after=math.ceil(wait))
    waiting = await _waiting(store, who.tenant)
    if waiting + n > settings.tenant_max_queued:
        raise RateLimited(f"tenant {who.tenant!r} has {waiting} jobs waiting; the quota is {settings.tenant_max_queued}",
                          field="tenant", retry_after=5)


async def _waiting(store, tenant: str) -> int:
    key = (id(store), tenant)
    at, count = _counts.get(key, (0.0, 0))
    if time.monotonic() - at > 1.0:
        count = await store.jobs.count_waiting(tenant)
        _counts[key] = (time.monotonic(), count)
    return count
