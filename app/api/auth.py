"""Who is calling, and what they may see and do.

Identities: the bootstrap admin (`SWITCHYARD_ADMIN_TOKEN`, global: every tenant), API keys
(`sy_<id>_<secret>`, one tenant, one user, one role), and, when configured, JWT bearer
tokens from a single sign-on (HS256 or RS256; claims `sub`, `tenant`, `role`).

Roles, each including the one before: `member` (submit and watch its tenant's jobs),
`operator` (also pause, resume and limit queues, retry in bulk, reset stuck jobs),
`admin` (also manage API keys and read the audit log).

Invariant: every resource carries an `owner` (`<tenant>/<user>`, or `admin` for the
bootstrap admin, tenant `default`), and `can_see` is the one test of visibility. A resource
the caller may not see is answered exactly like one that does not exist.

Invariant: tenant `default` is the bootstrap admin's (issue 18). No new API key and no JWT
may be in it, so no key can read or cancel the bootstrap admin's resources. Keys put there
before that rule keep their tenant but still never see a resource owned by `admin`.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

from fastapi import Request

from ..domain.models import tenant_of
from ..errors import Forbidden, Unauthorized

ROLES = ("member", "operator", "admin")
BOOTSTRAP_OWNER = "admin"
RESERVED_TENANTS = frozenset({"default"})  # tenant_of(BOOTSTRAP_OWNER): the bootstrap admin's alone
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # tenants and users: they become parts of keys


@dataclass(frozen=True)
class Principal:
    user: str
    role: str
    tenant: str = "default"
    is_global: bool = False
    key_id: str | None = None

    @property
    def owner(self) -> str:
        """What this caller's resources are stamped with, and whose notifications are theirs."""
        return BOOTSTRAP_OWNER if self.is_global else f"{self.tenant}/{self.user}"

    def at_least(self, role: str) -> bool:
        return self.role in ROLES and ROLES.index(self.role) >= ROLES.index(role)

    @property
    def scope(self) -> str | None:
        """The tenant a query must be limited to; None for the global admin."""
        return None if self.is_global else self.tenant


def can_see(who: Principal, owner: str | None) -> bool:
    """Whether `who` may see a resource owned by `owner` (jobs, workflows, schedules,
    events). Answers the same for a resource that does not exist."""
    return who.is_global or (owner is not None and owner != BOOTSTRAP_OWNER and tenant_of(owner) == who.tenant)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _from_jwt(token: str, settings) -> Principal | None:
    import jwt

    key, algorithm = (settings.jwt_public_key, "RS256") if settings.jwt_public_key else (settings.jwt_secret, "HS256")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["sub", "exp"]},
        )
    except jwt.PyJWTError:
        return None
    role, tenant, sub = claims.get("role", "member"), claims.get("tenant"), claims.get("sub")
    if (
        role not in ROLES
        or not isinstance(tenant, str)
        or not NAME.match(tenant)
        or tenant in RESERVED_TENANTS
        or not isinstance(sub, str)
        or not NAME.match(sub)
    ):
        return None
    return Principal(user=sub, role=role, tenant=tenant)


async def authenticate(token: str | None, settings, store) -> Principal:
    """The principal a bearer token stands for; `Unauthorized` (never a hint why) otherwise."""
    if token:
        if settings.admin_token and hmac.compare_digest(token.encode(), settings.admin_token.encode()):
            return Principal(user="admin", role="admin", is_global=True)
        if token.startswith("sy_"):
            key = await store.keys.verify(token)
            # A key in `default`, the bootstrap admin's tenant, predates the rule that every
            # key names its own tenant; it would list the bootstrap admin's work, so it no
            # longer authenticates (re-issue it with a tenant).
            if key is not None and key["tenant"] not in RESERVED_TENANTS:
                return Principal(user=key["user"], role=key["role"], tenant=key["tenant"], key_id=key["_id"])
        elif token.count(".") == 2 and (settings.jwt_secret or settings.jwt_public_key):
            who = _from_jwt(token, settings)
            if who is not None:
                return who
    raise Unauthorized("missing or invalid bearer token", field="Authorization")


async def require_principal(request: Request) -> Principal:
    state = request.app.state
    who = await authenticate(bearer(request.headers.get("authorization")), state.settings, state.store)
    request.state.principal = who
    return who


def require_role(role: str):
    """A dependency: the caller, if their role is at least `role`; 403 otherwise."""

    async def check(request: Request) -> Principal:
        who = await require_principal(request)
        if not who.at_least(role):
            raise Forbidden(f"this needs the {role} role; you are {who.role}", field="Authorization")
        return who

    return check


def visible(who: Principal, doc: dict, what: str, field: str) -> dict:
    """`doc` if `who` may see it; otherwise exactly the error a missing one gets."""
    if not can_see(who, doc.get("owner")):
        from ..errors import NotFound

        raise NotFound(f"{what} {doc.get('_id')!r} not found", field=field)
    return doc


async def audit(
    request: Request,
    who: Principal,
    action: str,
    target: str | None = None,
    *,
    log_tenant: str | None = None,
    **details,
) -> None:
    """Record an admin or operator action, in the caller's tenant's log or in `log_tenant`'s
    (`"*"`: a deployment-wide action, in every tenant's log)."""
    store = request.app.state.store
    await store.audit.record(
        actor=who.owner,
        role=who.role,
        tenant=log_tenant or who.tenant,
        action=action,
        target=target,
        details=details,
        now=store.clock.now(),
    )
