"""`/api/v1/webhooks`: a tenant's webhooks (register, list, get, pause, resume, delete), their
deliveries with every attempt, and redelivery (docs/webhooks.md). Sending them is
app/notifications/webhooks.py's.

Tenancy: a webhook belongs to the tenant of whoever registered it and receives only that
tenant's events. Everyone in the tenant may list it and its deliveries; changing anything
needs the operator role; to any other tenant it does not exist (404, as `visible` answers).

Registration checks the URL with the http_request handler's SSRF guard
(`handlers.general.check_address`, allow-list `SWITCHYARD_HTTP_ALLOWLIST`): http or https,
no credentials in it, and a host that is, or resolves to, public addresses only. A name
that does not resolve now is accepted: every delivery checks its address again anyway.

The secret is never answered (`"***"`), logged or audited.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from handlers.general import ServiceUnavailable, check_address

from .. import PermanentError
from ..domain.models import tenant_of
from ..errors import Conflict, ValidationFailed
from ..store.webhook_deliveries import DeliveryState
from .auth import Principal, audit, require_principal, require_role, visible
from .jobs import ID_PATTERN, strict_query
from .notifications import EVENT_TYPES
from .schemas import Stamp

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
ALL = "*"
DELIVERY_ID = r"^[0-9]{1,20}:[0-9a-f]{24}$"
RESOLVE_SECONDS = 5.0  # registration does not wait on a slow resolver: deliveries check anyway
WebhookId = Path(pattern=ID_PATTERN, description="the webhook's id")
MASK = "***"


def parse_url(value: str) -> httpx.URL:
    """An absolute http(s) URL without credentials; ValueError (naming the rule) otherwise."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text") from None
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain spaces or control characters")
    try:
        url = httpx.URL(value)
        url.raw_host.decode("ascii")
    except Exception:
        raise ValueError("not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http or https URL")
    if url.userinfo:
        raise ValueError("must not carry credentials (user:password@): the signature authenticates deliveries")
    return url


async def check_host(value: str) -> None:
    """The SSRF guard at registration: 422 for a host that is not public."""
    url = parse_url(value)
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        await asyncio.wait_for(check_address(host, port), RESOLVE_SECONDS)
    except PermanentError:
        raise ValidationFailed(
            "the host is not a public address (private, loopback, link-local and the like are refused; "
            "SWITCHYARD_HTTP_ALLOWLIST admits chosen ones)",
            field="url",
        ) from None
    except (ServiceUnavailable, TimeoutError):
        return  # no address now: each delivery checks again
    except ValueError:  # UnicodeError included: a name no resolver takes
        raise ValidationFailed("not a valid host name", field="url") from None


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(
        ...,
        min_length=1,
        max_length=2048,
        description="where deliveries are POSTed: an absolute http or https URL without credentials, "
        "whose host is a public address (or allow-listed with SWITCHYARD_HTTP_ALLOWLIST)",
    )
    events: list[str] = Field(
        ...,
        min_length=1,
        max_length=len(EVENT_TYPES) + 1,
        description='event types, e.g. ["job.failed", "workflow.completed"]; ["*"] for every type',
    )
    secret: str = Field(
        ...,
        min_length=16,
        max_length=256,
        pattern=r"^[!-~]+$",
        description="the HMAC-SHA256 key of the signatures: 16 to 256 printable ASCII characters, no spaces. "
        "Never shown again",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_url(v)
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[str]) -> list[str]:
        if any(e != ALL and e not in EVENT_TYPES for e in v):
            raise ValueError(f"unknown event type; known: {', '.join(EVENT_TYPES)}, or * for all")
        return [ALL] if ALL in v else sorted(set(v))


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    secret: Literal["***"] = Field(MASK, description="never shown after registration")
    paused: bool = Field(description="paused: deliveries are written and wait; they go out after a resume")
    owner: str
    tenant: str
    created_at: Stamp
    updated_at: Stamp

    @classmethod
    def of(cls, doc: dict) -> WebhookOut:
        return cls(id=doc["_id"], **{k: doc[k] for k in cls.model_fields if k not in ("id", "secret")})


class WebhookList(BaseModel):
    webhooks: list[WebhookOut]
    event_types: list[str] = Field(description="the event types a webhook may ask for (and `*`)")


class AttemptOut(BaseModel):
    at: Stamp
    status_code: int | None = Field(
        None, description="the receiver's answer; none after a time-out or connection error"
    )
    error: str | None = Field(None, description="why it failed; none when delivered")
    duration_ms: float


class DeliveryOut(BaseModel):
    id: str = Field(description="`<event seq>:<webhook id>`, the `Switchyard-Delivery` header of every try")
    webhook_id: str
    seq: int = Field(description="the event's seq")
    event_type: str
    state: DeliveryState
    tries: int = Field(description="tries since written or redelivered, out of SWITCHYARD_WEBHOOK_MAX_ATTEMPTS")
    next_attempt_at: Stamp | None = Field(None, description="when it is due, while pending")
    created_at: Stamp
    delivered_at: Stamp | None = None
    last_error: str | None = None
    attempts: list[AttemptOut] = Field(description="its recorded attempts (the last 50), oldest first")
    event: dict[str, Any] = Field(description="the body it sends")

    @classmethod
    def of(cls, doc: dict) -> DeliveryOut:
        return cls(
            id=doc["_id"],
            webhook_id=doc["webhook_id"],
            seq=doc["seq"],
            event_type=doc["event_type"],
            state=doc["state"],
            tries=doc["tries"],
            next_attempt_at=doc["next_attempt_at"] if doc["state"] == DeliveryState.PENDING else None,
            created_at=doc["created_at"],
            delivered_at=doc.get("delivered_at"),
            last_error=doc.get("last_error"),
            attempts=[AttemptOut(**a) for a in doc.get("log", [])],
            event=json.loads(doc["body"]),
        )


class DeliveryPage(BaseModel):
    deliveries: list[DeliveryOut]
    next_cursor: int | None = Field(None, description="pass as `cursor` for older ones")


async def _webhook(request: Request, who: Principal, webhook_id: str) -> dict:
    return visible(who, await request.app.state.store.webhooks.get(webhook_id), "webhook", "webhook_id")


@router.post("", status_code=201, response_model=WebhookOut, dependencies=[strict_query()])
async def create_webhook(spec: WebhookIn, request: Request, who: Principal = Depends(require_role("operator"))):
    """Register a webhook for the caller's tenant. It receives the events that happen from now on."""
    store, settings = request.app.state.store, request.app.state.settings
    await check_host(spec.url)
    tenant = tenant_of(who.owner)
    have = await store.webhooks.count(tenant)
    if have >= settings.webhook_max_per_tenant:
        raise Conflict(
            f"tenant {tenant!r} has {have} webhooks; the cap is {settings.webhook_max_per_tenant}",
            field="tenant",
            reason="webhook_max_per_tenant",
        )
    doc = await store.webhooks.create(
        owner=who.owner,
        url=spec.url,
        events=spec.events,
        secret=spec.secret,
        since_seq=await store.events.last_seq(),
        now=store.clock.now(),
    )
    await audit(request, who, "webhook.create", doc["_id"], host=httpx.URL(spec.url).host, events=spec.events)
    return WebhookOut.of(doc)


@router.get("", response_model=WebhookList, dependencies=[strict_query()])
async def list_webhooks(request: Request, who: Principal = Depends(require_principal)):
    """The caller's tenant's webhooks, newest first (every tenant's for the bootstrap admin)."""
    docs = await request.app.state.store.webhooks.list(tenant=who.scope)
    return WebhookList(webhooks=[WebhookOut.of(d) for d in docs], event_types=[*EVENT_TYPES, ALL])


@router.get("/{webhook_id}", response_model=WebhookOut, dependencies=[strict_query()])
async def get_webhook(request: Request, webhook_id: str = WebhookId, who: Principal = Depends(require_principal)):
    return WebhookOut.of(await _webhook(request, who, webhook_id))


@router.post("/{webhook_id}/pause", response_model=WebhookOut, dependencies=[strict_query()])
async def pause_webhook(
    request: Request, webhook_id: str = WebhookId, who: Principal = Depends(require_role("operator"))
):
    """Stop sending: new deliveries are still written, and wait for the resume."""
    await _webhook(request, who, webhook_id)
    doc = await request.app.state.store.webhooks.set_paused(webhook_id, True)
    await audit(request, who, "webhook.pause", webhook_id)
    return WebhookOut.of(doc)


@router.post("/{webhook_id}/resume", response_model=WebhookOut, dependencies=[strict_query()])
async def resume_webhook(
    request: Request, webhook_id: str = WebhookId, who: Principal = Depends(require_role("operator"))
):
    """Send again, the deliveries that waited first."""
    store = request.app.state.store
    await _webhook(request, who, webhook_id)
    doc = await store.webhooks.set_paused(webhook_id, False)
    await store.webhook_deliveries.release_held(webhook_id)  # after the flag: see WebhookSender._attempt
    await audit(request, who, "webhook.resume", webhook_id)
    return WebhookOut.of(doc)


@router.delete("/{webhook_id}", status_code=204, response_class=Response, dependencies=[strict_query()])
async def delete_webhook(
    request: Request, webhook_id: str = WebhookId, who: Principal = Depends(require_role("operator"))
):
    """Delete the webhook and its deliveries; nothing more is sent."""
    store = request.app.state.store
    await _webhook(request, who, webhook_id)
    await store.webhooks.delete(webhook_id)
    await store.webhook_deliveries.delete_for(webhook_id)
    await audit(request, who, "webhook.delete", webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage, dependencies=[strict_query("cursor", "limit")])
async def list_webhook_deliveries(
    request: Request,
    webhook_id: str = WebhookId,
    cursor: int | None = Query(None, ge=0, le=2**63 - 1),
    limit: int = Query(20, ge=1, le=200),
    who: Principal = Depends(require_principal),
):
    """Newest first (by event), each with its attempts."""
    await _webhook(request, who, webhook_id)
    docs, nxt = await request.app.state.store.webhook_deliveries.list(webhook_id, before=cursor, limit=limit)
    return DeliveryPage(deliveries=[DeliveryOut.of(d) for d in docs], next_cursor=nxt)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver", response_model=DeliveryOut, dependencies=[strict_query()]
)
async def redeliver_webhook_delivery(
    request: Request,
    webhook_id: str = WebhookId,
    delivery_id: str = Path(pattern=DELIVERY_ID, description="`<event seq>:<webhook id>`"),
    who: Principal = Depends(require_role("operator")),
):
    """A dead or delivered delivery goes out again (due now, its tries reset), with the same
    delivery id: a receiver that drops copies by that id will drop it. 409 while it is
    pending, sending or held."""
    await _webhook(request, who, webhook_id)
    doc = await request.app.state.store.webhook_deliveries.redeliver(delivery_id, webhook_id)
    await audit(request, who, "webhook.redeliver", delivery_id)
    return DeliveryOut.of(doc)
