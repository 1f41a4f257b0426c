"""`GET /api/v1/usage`: what handlers reported with `ctx.usage`, summed per tenant, engine,
day, job or workflow over a range of UTC days. Scoped like everything else: a tenant's
caller sees its own tenant's usage, the bootstrap admin every tenant's. Strict query: an
unknown parameter, a bad `group_by`, an unparsable date or `from` after `to` is a 422
naming the field."""

from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request

from ..domain.models import NAME_PATTERN
from ..errors import ValidationFailed
from .auth import Principal, require_principal
from .jobs import ID_PATTERN, strict_query
from .schemas import UsageOut

router = APIRouter(prefix="/api/v1/usage", tags=["usage"])
MAX_DAYS = 366  # a range wider than this is refused: the (tenant, day) index bounds the read


@router.get(
    "",
    response_model=UsageOut,
    response_model_by_alias=True,
    dependencies=[strict_query("group_by", "from", "to", "engine", "workflow_id")],
)
async def usage(
    request: Request,
    group_by: Literal["tenant", "engine", "day", "job", "workflow"] = Query("day"),
    start: date | None = Query(None, alias="from", description="first UTC day, included"),
    end: date | None = Query(None, alias="to", description="last UTC day, included"),
    engine: str | None = Query(None, pattern=NAME_PATTERN),
    workflow_id: str | None = Query(None, pattern=ID_PATTERN),
    who: Principal = Depends(require_principal),
):
    if start is not None and end is not None:
        if start > end:
            raise ValidationFailed("`from` is after `to`", field="query.to")
        if (end - start).days >= MAX_DAYS:
            raise ValidationFailed(f"at most {MAX_DAYS} days at a time", field="query.to")
    rows = await request.app.state.store.usage.aggregate(
        group_by, tenant=who.scope, start=start, end=end, engine=engine, workflow_id=workflow_id
    )
    return UsageOut(group_by=group_by, start=start, end=end, rows=rows)
