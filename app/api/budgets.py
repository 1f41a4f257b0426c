"""`/api/v1/admin/tenants/{tenant}/budget`: a tenant's cost budgets per UTC day and month
(docs/limits.md, "Budgets"). The deployment's admin alone sets them (a tenant's admin gets
403); a tenant's admin may read its own tenant's, and another tenant's is a 404, like any
resource it may not see. Every change is audited in the tenant's log. The limits, the spend
and the hold they cause are app/store/budgets.py's.
"""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import NotFound
from ..store.budgets import PERIODS, period_bounds
from .admin import require_admin
from .auth import NAME, Principal, audit, require_role
from .jobs import strict_query
from .schemas import Stamp

router = APIRouter(prefix="/api/v1/admin/tenants", tags=["admin"])
Tenant = Path(pattern=NAME.pattern, description="the tenant's name")
LIMIT = {"ge": 0, "allow_inf_nan": False, "strict": True}  # a JSON number, finite, not negative


class BudgetIn(BaseModel):
    """A field left out is kept as it is; null clears it (no limit)."""

    model_config = ConfigDict(extra="forbid")
    daily: float | None = Field(None, **LIMIT, description="cost allowed per UTC day")
    monthly: float | None = Field(None, **LIMIT, description="cost allowed per UTC month")


class PeriodOut(BaseModel):
    period: str = Field(description="the current period: `YYYY-MM-DD` or `YYYY-MM` (UTC)")
    budget: float | None
    spend: float = Field(description="the tenant's reported cost in the period so far")
    percent: float | None = Field(description="spend as a percentage of the budget")
    reached: bool = Field(description="spend is at the budget: the tenant's queued jobs wait")
    rolls_over_at: Stamp


class BudgetOut(BaseModel):
    tenant: str
    daily: float | None
    monthly: float | None
    periods: dict[str, PeriodOut]
    updated_at: Stamp | None = None


async def budget_out(store, tenant: str) -> BudgetOut:
    budget, bounds = await store.budgets.get(tenant), period_bounds(store.clock.now())
    spent = await store.budgets.period_spend(tenant, bounds)
    periods = {}
    for p in PERIODS:
        limit = budget.get(p)
        periods[p] = PeriodOut(
            period=bounds[p]["key"],
            budget=limit,
            spend=spent[p],
            percent=(100.0 * spent[p] / limit if limit else (None if limit is None else 100.0)),
            reached=limit is not None and spent[p] >= limit,
            rolls_over_at=bounds[p]["ends"],
        )
    return BudgetOut(
        tenant=tenant,
        daily=budget.get("daily"),
        monthly=budget.get("monthly"),
        periods=periods,
        updated_at=budget.get("updated_at"),
    )


@router.get(
    "/{tenant}/budget",
    response_model=BudgetOut,
    dependencies=[strict_query()],
    responses={404: {"description": "another tenant's budget"}},
)
async def get_budget(request: Request, tenant: str = Tenant, who: Principal = Depends(require_role("admin"))):
    """The tenant's budgets and its spend in the current day and month."""
    if who.scope is not None and who.scope != tenant:
        raise NotFound(f"tenant {tenant!r} not found", field="tenant")
    return await budget_out(request.app.state.store, tenant)


@router.put(
    "/{tenant}/budget",
    response_model=BudgetOut,
    dependencies=[strict_query()],
    responses={403: {"description": "not the bootstrap admin: budgets are the deployment's"}},
)
async def put_budget(
    request: Request, body: BudgetIn = Body(...), tenant: str = Tenant, who: Principal = Depends(require_admin)
):
    """Set the tenant's daily and/or monthly budget. Raising one above the spend lets the
    tenant's queued jobs run at once; lowering one to or below it holds them."""
    store = request.app.state.store
    changes = {k: getattr(body, k) for k in body.model_fields_set}
    await store.budgets.set(tenant, changes, who.owner)
    await audit(request, who, "tenant.budget", tenant, log_tenant=tenant, **changes)
    return await budget_out(store, tenant)
