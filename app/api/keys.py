"""`/api/v1/auth`: API keys (create, list, revoke), the caller's own identity, and
`/api/v1/audit`, the log of admin and operator actions.

A tenant's admin manages its own tenant's keys; the bootstrap admin manages every tenant's,
and names the tenant of each key it creates. No key is created in tenant `default`, the
bootstrap admin's own (app/api/auth.py). Nobody creates a key with a role above their own.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from ..errors import Forbidden, ValidationFailed
from .auth import RESERVED_TENANTS, ROLES, Principal, audit, require_principal, require_role
from .jobs import ID_PATTERN, strict_query
from .schemas import Stamp

router = APIRouter(tags=["auth"])
NAME = r"^[A-Za-z0-9_-]{1,64}$"


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=100, description="what the key is for")
    user: str = Field(..., pattern=NAME, description="the user the key acts as")
    role: str = Field("member", pattern="^(member|operator|admin)$")
    tenant: str | None = Field(
        None,
        pattern=NAME,
        description=("defaults to the caller's tenant; required from the bootstrap admin; never `default`"),
    )


class KeyOut(BaseModel):
    id: str
    name: str
    user: str
    role: str
    tenant: str
    created_at: Stamp
    created_by: str | None = None
    revoked_at: Stamp | None = None

    @classmethod
    def of(cls, doc: dict) -> KeyOut:
        return cls(id=doc["_id"], **{k: doc.get(k) for k in cls.model_fields if k != "id"})


class NewKey(KeyOut):
    token: str = Field(..., description="shown once; only its hash is stored")


class Me(BaseModel):
    user: str
    tenant: str
    role: str
    global_admin: bool


class AuditEntry(BaseModel):
    id: str
    at: Stamp
    actor: str
    role: str
    tenant: str
    action: str
    target: str | None = None
    details: dict


class AuditPage(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None


@router.get("/api/v1/auth/me", response_model=Me)
async def me(who: Principal = Depends(require_principal)):
    return Me(user=who.user, tenant=who.tenant, role=who.role, global_admin=who.is_global)


@router.post("/api/v1/auth/keys", status_code=201, response_model=NewKey)
async def create_key(body: KeyIn, request: Request, who: Principal = Depends(require_role("admin"))):
    if who.is_global and body.tenant is None:
        raise ValidationFailed("name the tenant of the key; the bootstrap admin has none to give", field="tenant")
    tenant = body.tenant or who.tenant
    if tenant in RESERVED_TENANTS:
        raise ValidationFailed(f"tenant {tenant!r} is reserved for the bootstrap admin", field="tenant")
    if not who.is_global and tenant != who.tenant:
        raise Forbidden("a tenant's admin creates keys for its own tenant only", field="tenant")
    if ROLES.index(body.role) > ROLES.index(who.role):
        raise Forbidden(f"you cannot create a key with a role above your own ({who.role})", field="role")
    store = request.app.state.store
    doc, token = await store.keys.create(
        tenant=tenant, user=body.user, role=body.role, name=body.name, created_by=who.owner, now=store.clock.now()
    )
    await audit(request, who, "key.create", doc["_id"], tenant=tenant, user=body.user, role=body.role)
    return NewKey(**KeyOut.of(doc).model_dump(), token=token)


@router.get("/api/v1/auth/keys", response_model=list[KeyOut])
async def list_keys(request: Request, who: Principal = Depends(require_role("admin"))):
    return [KeyOut.of(d) for d in await request.app.state.store.keys.list(who.scope)]


@router.delete("/api/v1/auth/keys/{key_id}", response_model=KeyOut)
async def revoke_key(
    request: Request, key_id: str = Path(..., pattern=ID_PATTERN), who: Principal = Depends(require_role("admin"))
):
    store = request.app.state.store
    doc = await store.keys.revoke(key_id, who.scope, store.clock.now())
    await audit(request, who, "key.revoke", key_id)
    return KeyOut.of(doc)


@router.get("/api/v1/audit", response_model=AuditPage, dependencies=[strict_query("cursor", "limit")])
async def audit_log(
    request: Request,
    cursor: str | None = Query(None, pattern=ID_PATTERN),
    limit: int = Query(50, ge=1, le=500),
    who: Principal = Depends(require_role("admin")),
):
    docs, nxt = await request.app.state.store.audit.list(tenant=who.scope, after=cursor, limit=limit)
    return AuditPage(
        entries=[AuditEntry(id=d["_id"], **{k: d.get(k) for k in AuditEntry.model_fields if k != "id"}) for d in docs],
        next_cursor=nxt,
    )
