"""`/api/v1/jobs/notifications`: the caller's notifications (read and unread), and their
preferences: which channels each event type goes to, and their email address."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..domain.states import JobStatus
from ..domain.userjson import INT64_MAX
from ..notifications.email import valid_address
from ..notifications.service import CHANNELS
from .auth import Principal, require_principal
from .jobs import strict_query
from .schemas import Stamp

router = APIRouter(prefix="/api/v1/jobs/notifications", tags=["notifications"])
EVENT_TYPES = sorted(
    {f"job.{s.value}" for s in JobStatus}
    | {"job.progress"}
    | {f"workflow.{s}" for s in ("running", "completed", "failed", "cancelled")}
)
NOTIFICATION_ID = r"^[0-9]{1,20}:[A-Za-z0-9_~-]{1,200}$"


class NotificationOut(BaseModel):
    id: str
    type: str
    title: str
    status: str | None = None
    job_id: str | None = None
    workflow_id: str | None = None
    step_key: str | None = Field(None, description="an approval request's step")
    error: dict[str, Any] | None = None
    read: bool
    seq: int
    created_at: Stamp

    @classmethod
    def of(cls, doc: dict) -> NotificationOut:
        return cls(id=doc["_id"], **{k: doc.get(k) for k in cls.model_fields if k != "id"})


class NotificationPage(BaseModel):
    notifications: list[NotificationOut]
    unread_count: int
    next_cursor: int | None


class Preferences(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str | None = Field(None, max_length=254, description="where this user's email goes")
    channels: dict[str, list[str]] = Field(
        default_factory=dict, description='per event type, e.g. {"job.failed": ["db", "email"]}'
    )

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if v is not None and not valid_address(v):
            raise ValueError("not a plain email address like name@example.com")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for etype, names in v.items():
            if etype not in EVENT_TYPES:
                raise ValueError(f"unknown event type; known: {', '.join(EVENT_TYPES)}")
            if any(n not in CHANNELS for n in names):
                raise ValueError(f"unknown channel for {etype}; channels are {', '.join(CHANNELS)}")
        return {k: sorted(set(names)) for k, names in v.items()}


@router.get("", response_model=NotificationPage, dependencies=[strict_query("unread", "cursor", "limit")])
async def list_notifications(
    request: Request,
    unread: bool | None = None,
    cursor: int | None = Query(None, ge=0, le=INT64_MAX),
    limit: int = Query(50, ge=1, le=200),
    who: Principal = Depends(require_principal),
):
    """Newest first; `unread=true` for unread only; `cursor` is the previous page's `next_cursor`."""
    store = request.app.state.store
    docs, nxt = await store.notifications.list(who.owner, unread=unread, before=cursor, limit=limit)
    return NotificationPage(
        notifications=[NotificationOut.of(d) for d in docs],
        unread_count=await store.notifications.unread_count(who.owner),
        next_cursor=nxt,
    )


@router.post("/read-all", dependencies=[strict_query()])
async def read_all(request: Request, who: Principal = Depends(require_principal)) -> dict:
    store = request.app.state.store
    return {"marked": await store.notifications.mark_all_read(who.owner, store.clock.now())}


@router.get("/preferences", response_model=Preferences, dependencies=[strict_query()])
async def get_preferences(request: Request, who: Principal = Depends(require_principal)):
    doc = await request.app.state.store.notifications.preferences(who.owner)
    return Preferences(email=doc.get("email"), channels=doc.get("channels", {}))


@router.put("/preferences", response_model=Preferences, dependencies=[strict_query()])
async def put_preferences(prefs: Preferences, request: Request, who: Principal = Depends(require_principal)):
    store = request.app.state.store
    doc = await store.notifications.set_preferences(who.owner, prefs.email, prefs.channels, store.clock.now())
    return Preferences(email=doc["email"], channels=doc["channels"])


@router.post("/{notification_id}/read", response_model=NotificationOut, dependencies=[strict_query()])
async def read_one(
    request: Request,
    notification_id: str = Path(..., pattern=NOTIFICATION_ID),
    who: Principal = Depends(require_principal),
):
    store = request.app.state.store
    return NotificationOut.of(await store.notifications.mark_read(who.owner, notification_id, store.clock.now()))
