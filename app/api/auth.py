"""Bearer-token authentication. Until multi-tenancy lands, the only identity is the admin
token (`SWITCHYARD_ADMIN_TOKEN`); without one nothing but `/health` is reachable."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from app.errors import Unauthorized


@dataclass(frozen=True)
class Principal:
    user: str
    role: str


def principal_for(token: str | None, admin_token: str | None) -> Principal:
    if not admin_token:
        raise Unauthorized("no API token is configured on this server; set SWITCHYARD_ADMIN_TOKEN")
    if not token or not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise Unauthorized("missing or invalid bearer token", field="Authorization")
    return Principal(user="admin", role="admin")


def can_see(who: Principal, owner: str | None) -> bool:
    """Whether `who` may see a resource owned by `owner` (jobs, workflows, events,
    notifications). Answers the same for a resource that does not exist."""
    return who.role == "admin" or (owner is not None and owner == who.user)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


async def require_principal(request: Request) -> Principal:
    settings = request.app.state.settings
    return principal_for(bearer(request.headers.get("authorization")), settings.admin_token)
