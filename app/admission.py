"""Admission: the per-tenant limits on creating work, in the one place every way in calls.

REST (a job, a workflow, steps added to one, a new schedule) and the scheduler's ticks all
ask an `Admission`, so a schedule can never do what its owner's requests may not (issue 18:
ten every-second schedules filled a tenant far past its quota while REST answered 429).

- Rate: a token bucket per tenant kept in MongoDB (`jobs:<tenant>` in app/store/guard.py),
  so the budget holds across every API and worker process. A job costs one token (so does a
  debounced submit that only replaced a waiting job's parameters), a workflow one per step (capped at the bucket's size, so a large workflow is admitted when
  the bucket is full), a new schedule one. Over budget: 429 with `Retry-After`.
- Quota: at most `SWITCHYARD_TENANT_MAX_QUEUED` jobs waiting (queued, scheduled or pending).
  The count is read at most once a second per process (a count is a scan on SecantusDB) and
  what this process admits meanwhile is added to it, so only other processes' admissions of
  the last second can overshoot the quota. A debounced replacement adds no job and is not
  checked against it.
- Schedules: at most `SWITCHYARD_TENANT_MAX_SCHEDULES` per tenant (409), and no two ticks of
  one schedule closer than `SWITCHYARD_SCHEDULE_MIN_INTERVAL_SECONDS` (422 on `cron`).

Invariant: a refused admission changes nothing. Every check that only reads runs first; the
one write, drawing tokens, runs last and is all-or-nothing (the bucket's single update).

The bootstrap admin (`SWITCHYARD_ADMIN_TOKEN`, owner stamp `admin`) is the deployment's own
operator and is not limited; callers pass tenant None for it.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from croniter import croniter

from .domain.schedule import Cron
from .errors import Conflict, RateLimited, ValidationFailed

BOOTSTRAP_OWNER = "admin"  # `Principal.owner` of the bootstrap admin
# The window the shortest gap between ticks is looked for in. A cron's fire times are a
# product of its fields, so the gaps within a firing day repeat every firing day; this
# covers two firing days of any schedule that passes, and the day boundary between them.
GAP_WINDOW_FIRES = 4000
GAP_WINDOW = timedelta(days=400)

UTC = UTC


def limited_tenant(owner: str) -> str | None:
    """The tenant whose limits a resource owned by `owner` counts against; None for the
    bootstrap admin, who is not limited."""
    from .domain.models import tenant_of

    return None if owner == BOOTSTRAP_OWNER else tenant_of(owner)


def shortest_gap(cron: Cron, start: datetime, enough: timedelta = timedelta(0)) -> timedelta | None:
    """The smallest gap between consecutive ticks of `cron` after `start`, over the window
    above (or the first gap below `enough`); None when it fires at most once in it."""
    it = croniter(cron.expr, start.astimezone(cron.tz))
    prev, best, end = None, None, start + GAP_WINDOW
    for _ in range(GAP_WINDOW_FIRES):
        tick = it.get_next(datetime).astimezone(UTC)  # in UTC: elapsed time across DST
        if tick > end:
            break
        if not cron._keep(tick):  # the scheduler never fires it (second pass of a fall-back hour)
            continue
        if prev is not None:
            gap = tick - prev
            best = gap if best is None or gap < best else best
            if best < enough:
                break
        prev = tick
    return best


class Admission:
    """One per process and way in (the app's, the scheduler's): it caches quota counts."""

    def __init__(self, store, settings) -> None:
        self.store, self.settings = store, settings
        self.waiting: dict[str, tuple[float, int]] = {}  # tenant -> (read at, count): one per process

    async def jobs(self, tenant: str | None, n: int) -> None:
        """Admit `n` new jobs for `tenant`, or raise `RateLimited` having changed nothing."""
        if tenant is None:
            return
        s = self.settings
        waiting = await self._waiting(tenant)
        if waiting + n > s.tenant_max_queued:
            raise RateLimited(
                f"tenant {tenant!r} has {waiting} jobs waiting; the quota is {s.tenant_max_queued}",
                field="tenant",
                retry_after=5,
            )
        await self._take(tenant, min(float(n), s.rate_limit_burst))
        at, count = self.waiting[tenant]
        self.waiting[tenant] = (at, count + n)

    async def request(self, tenant: str | None) -> None:
        """Admit a submit that adds no job (a debounced replacement of a waiting job's
        parameters): one rate token, and no quota check, since nothing more waits."""
        if tenant is not None:
            await self._take(tenant, 1.0)

    async def schedule(self, tenant: str | None, cron: Cron) -> None:
        """Admit a new schedule for `tenant`: its ticks far enough apart, the tenant under its
        cap, one rate token. Raises having changed nothing.

        Two creates racing past the cap check can leave the tenant one over per extra racer;
        the cap bounds abuse, it is not an exact count."""
        if tenant is None:
            return
        s, now = self.settings, self.store.clock.now()
        floor = timedelta(seconds=s.schedule_min_interval_seconds)
        gap = shortest_gap(cron, now, enough=floor)
        if gap is not None and gap < floor:
            # The expression is the caller's own input: named by field, never echoed.
            raise ValidationFailed(
                f"ticks of this schedule would be {gap.total_seconds():g} s apart; the minimum is "
                f"{s.schedule_min_interval_seconds:g} s",
                field="cron",
            )
        have = await self.store.schedules.count(tenant)
        if have >= s.tenant_max_schedules:
            raise Conflict(
                f"tenant {tenant!r} has {have} schedules; the cap is {s.tenant_max_schedules}",
                field="tenant",
                reason="tenant_max_schedules",
            )
        await self._take(tenant, 1.0)

    async def _take(self, tenant: str, cost: float) -> None:
        s = self.settings
        wait = await self.store.rate_limits.take(
            f"jobs:{tenant}", rate=s.rate_limit_per_second, burst=s.rate_limit_burst, now=self.store.clock.now(), n=cost
        )
        if wait:
            raise RateLimited(
                f"tenant {tenant!r} is creating jobs faster than {s.rate_limit_per_second:g}/s; retry in {wait:.1f} s",
                field="tenant",
                retry_after=math.ceil(wait),
            )

    async def _waiting(self, tenant: str) -> int:
        at, count = self.waiting.get(tenant, (0.0, 0))
        if time.monotonic() - at > 1.0:
            count = await self.store.jobs.count_waiting(tenant)
            self.waiting[tenant] = (time.monotonic(), count)
        return count
