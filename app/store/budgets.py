"""Cost budgets per tenant: the `budgets` collection (the limits), the `budget_spend`
collection (what the tenant spent in each period, kept as it happens), and the budget hold
on the engine documents (`budget_held.<tenant>`, which this module alone writes).

A budget: `{_id: <tenant>, daily, monthly, updated_at, updated_by}`; a limit is a cost in
the units handlers report with `ctx.usage(cost=...)`, per UTC day and per UTC month; None
is no limit. Set only by the deployment's admin (app/api/budgets.py).

A spend document: `{_id: "<tenant>:<YYYY-MM>", tenant, month, cost, days: {"DD": cost},
notified: {<flag>: true}}`. The worker adds an attempt's cost to it with one `$inc` right
after it writes the attempt's usage (`charge`), and gets the day's and the month's spend
back from that same write: checking the budget costs one write and one read of the budget
per attempt that reported a cost, never a sum over the period's usage. When a budget is set,
the counters are brought up to the sums of the `usage` collection (`UsageStore.period_cost`),
so spend from before the counter existed, or an `$inc` whose reply was lost, is caught up.

Invariants:
- A threshold (80 %, 100 %) is notified once per period and level: the `notified` flag is
  claimed with a guarded update, so two workers crossing it together notify once. A budget
  set again clears the flags of the thresholds the spend is now below.
- At 100 % of either period every engine document holds the tenant (`budget_held.<tenant>
  = {until, period, key}`, until the end of the latest reached period); claimers skip its
  bands (app/store/bands.py). An expired hold is inert, so a period's rollover lifts it
  without a write; a budget raised above the spend unsets it at once and wakes the workers.
  Running jobs are never touched.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

PERIODS = ("daily", "monthly")
THRESHOLDS = (80, 100)


def period_bounds(now: datetime) -> dict[str, dict[str, Any]]:
    """For each period: its key (`YYYY-MM-DD`, `YYYY-MM`), its first and last UTC day, and
    when it ends (rolls over)."""
    day = now.astimezone(UTC).date()
    last = day.replace(day=calendar.monthrange(day.year, day.month)[1])

    def midnight(d):
        return datetime(d.year, d.month, d.day, tzinfo=UTC)

    return {
        "daily": {"key": day.isoformat(), "first": day.isoformat(), "last": day.isoformat(),
                  "ends": midnight(day + timedelta(days=1))},
        "monthly": {"key": day.strftime("%Y-%m"), "first": day.replace(day=1).isoformat(),
                    "last": last.isoformat(), "ends": midnight(last + timedelta(days=1))},
    }  # fmt: skip


def _flag(period: str, key: str, pct: int) -> str:
    return f"d{key[-2:]}_{pct}" if period == "daily" else f"m_{pct}"


class BudgetStore:
    def __init__(self, db: AsyncDatabase, usage, clock) -> None:
        self.col = db["budgets"]
        self.spend = db["budget_spend"]
        self.engines = db["engines"]
        self.keys = db["api_keys"]
        self.usage = usage
        self.clock = clock

    async def ensure_indexes(self) -> None:
        return None  # both collections are read by _id only

    async def get(self, tenant: str) -> dict:
        return await self.col.find_one({"_id": tenant}) or {"_id": tenant, "daily": None, "monthly": None}

    async def set(self, tenant: str, changes: dict[str, float | None], by: str) -> dict:
        """Change a tenant's limits (`changes`: daily and/or monthly; None clears one), catch
        the spend counters up with the usage, and hold or release the tenant to match."""
        now = self.clock.now()
        await self.col.update_one(
            {"_id": tenant}, {"$set": {**changes, "updated_at": now, "updated_by": by}}, upsert=True
        )
        budget, bounds = await self.get(tenant), period_bounds(now)
        spent = await self.period_spend(tenant, bounds)
        d = bounds["daily"]["key"][-2:]
        await self.spend.update_one(
            {"_id": f"{tenant}:{bounds['monthly']['key']}"},
            {"$max": {"cost": spent["monthly"], f"days.{d}": spent["daily"]},
             "$setOnInsert": {"tenant": tenant, "month": bounds["monthly"]["key"]}},
            upsert=True,
        )  # fmt: skip
        unset = {
            f"notified.{_flag(p, bounds[p]['key'], pct)}": ""
            for p in PERIODS
            for pct in THRESHOLDS
            if budget.get(p) is None or spent[p] < budget[p] * pct / 100
        }
        if unset:
            await self.spend.update_one({"_id": f"{tenant}:{bounds['monthly']['key']}"}, {"$unset": unset})
        await self._apply_hold(tenant, budget, spent, bounds)
        return budget

    async def period_spend(self, tenant: str, bounds: dict | None = None) -> dict[str, float]:
        """The tenant's cost in the current day and month, summed from the usage."""
        bounds = bounds or period_bounds(self.clock.now())
        return {p: await self.usage.period_cost(tenant, bounds[p]["first"], bounds[p]["last"]) for p in PERIODS}

    async def charge(self, tenant: str, cost: float) -> list[dict]:
        """Add an attempt's cost to the tenant's period counters and check its budget.
        Returns the thresholds this call was first to cross: `{period, key, percent, spend,
        budget}` each, for the caller to notify."""
        now = self.clock.now()
        bounds = period_bounds(now)
        month, d = bounds["monthly"]["key"], bounds["daily"]["key"][-2:]
        sid = f"{tenant}:{month}"
        doc = await self.spend.find_one_and_update(
            {"_id": sid},
            {"$inc": {"cost": cost, f"days.{d}": cost}, "$setOnInsert": {"tenant": tenant, "month": month}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        doc = doc or await self.spend.find_one({"_id": sid})  # SecantusDB may return nothing for an upsert
        budget = await self.col.find_one({"_id": tenant})
        if doc is None or budget is None:
            return []
        spent = {"daily": (doc.get("days") or {}).get(d, 0.0), "monthly": doc.get("cost", 0.0)}
        crossed = []
        for p in PERIODS:
            limit = budget.get(p)
            for pct in THRESHOLDS:
                if limit is None or spent[p] < limit * pct / 100:
                    continue
                flag = f"notified.{_flag(p, bounds[p]['key'], pct)}"
                won = await self.spend.update_one({"_id": sid, flag: {"$ne": True}}, {"$set": {flag: True}})
                if won.modified_count:
                    crossed.append(
                        {"period": p, "key": bounds[p]["key"], "percent": pct, "spend": spent[p], "budget": limit,
                         "ends": bounds[p]["ends"]}
                    )  # fmt: skip
        await self._apply_hold(tenant, budget, spent, bounds, lift=False)
        return crossed

    async def _apply_hold(self, tenant: str, budget: dict, spent: dict, bounds: dict, lift: bool = True) -> None:
        """Hold the tenant on every engine while a period's spend is at its limit (until the
        latest such period ends); else, with `lift`, release it and wake the workers.
        Written on every charge past the limit too, so an engine created since is held."""
        reached = [p for p in PERIODS if budget.get(p) is not None and spent[p] >= budget[p]]
        field = f"budget_held.{tenant}"
        if reached:
            p = max(reached, key=lambda p: bounds[p]["ends"])
            hold = {"until": bounds[p]["ends"], "period": p, "key": bounds[p]["key"]}
            await self.engines.update_many({field: {"$ne": hold}}, {"$set": {field: hold}})
        elif lift:
            await self.engines.update_many({field: {"$exists": True}}, {"$unset": {field: ""}, "$inc": {"wake": 1}})

    async def users_of(self, tenant: str) -> list[str]:
        """The tenant's users that hold a live API key, as owners (`<tenant>/<user>`)."""
        users = await self.keys.distinct("user", {"tenant": tenant, "revoked_at": None})
        return sorted(f"{tenant}/{u}" for u in users)
