"""The operational endpoints, outside `/api/v1` and without a token: `/health` (what is up,
seed 004's shape), `/ready` (may this instance take traffic) and `/metrics` (Prometheus).

`/health` needs no token and so shows only what is safe to show anyone: status, uptime,
database reachability, whether email is configured and working, and how many workers are
alive. Per-queue counts and engine names, and the SMTP server, are added only for a caller
with a valid token, scoped as in queue status (a tenant sees its own counts).

`/health` answers 200 with `status` "ok", or "degraded" when the database answers but email
reports a failure or alerts that found no recipient; 503 with "unavailable" when the database does not answer. Email state
comes from `app.state.email_status` when the notifications service sets it (a zero-argument
async callable returning a dict; `"status": "failing"` or `"no_recipient"`, or `"ok": false`,
in it means email is not delivering alerts), otherwise from whether `SMTP_URL` is set.

`/metrics` carries no secrets (counts, durations, engine names), so like `/health` it needs
no token; keep it off public networks as usual for Prometheus endpoints.
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from .. import metrics
from ..errors import Unauthorized
from .auth import require_principal
from .queues import queue_status

router = APIRouter(tags=["health"])
EMAIL_STATUS_TIMEOUT = 3.0  # seconds; a hung SMTP probe must not hang /health
QUEUE_READ_TIMEOUT = 2.0


class _Sparse(BaseModel):
    """Leaves out the fields named in `_sparse` while they are null: they appear only when
    there is something to say."""

    _sparse: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler):
        out = handler(self)
        return {k: v for k, v in out.items() if not (v is None and k in self._sparse)}


class Database(BaseModel):
    reachable: bool
    latency_ms: float | None = Field(description="one ping's round trip; null when the database does not answer")


class Email(_Sparse):
    """What the notifications service reports about email; it may add fields of its own."""

    _sparse = ("server", "ok", "status", "pending", "dead", "last_error", "last_sent_at")
    model_config = ConfigDict(extra="allow")
    configured: bool
    server: str | None = Field(None, description="`host:port` of the SMTP server; shown only with a token")
    reason: str | None = None
    ok: bool | None = None
    status: str | None = Field(
        None, description='"ok", "failing", "no_recipient" or "disabled", when the mailer runs here'
    )
    pending: int | None = Field(None, description="emails waiting to be sent")
    dead: int | None = Field(None, description="emails given up on")
    last_error: str | None = None
    last_sent_at: str | None = None


class Workers(_Sparse):
    _sparse = ("dead", "restarting", "restarts", "last_exit")
    alive: int = Field(description="workers whose heartbeat is current")
    dead: int | None = Field(None, description="worker registrations marked dead (shown when any)")
    restarting: int | None = Field(None, description="worker processes `serve` is about to restart, after a back-off")
    restarts: int | None = Field(None, description="worker processes `serve`'s supervisors have restarted")
    last_exit: dict | None = Field(
        None, description="the latest worker process exit seen by a supervisor: pid, code, ran_s, at"
    )


class Queue(BaseModel):
    waiting: int
    active: int
    paused: bool
    limit: int
    queued: int = Field(description="the older name of `waiting`")
    running: int = Field(description="the older name of `active`")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    uptime: float = Field(description="seconds since this instance started (also as `uptime_seconds`)")
    uptime_seconds: float
    database: Database
    email: Email
    workers: Workers | None = Field(description="null when the database does not answer")
    queues: dict[str, Queue] | None = Field(description="per engine; null without a valid token")


class ReadyOut(BaseModel):
    ready: bool
    started: bool = Field(description="start-up finished: indexes ensured, loops started")
    database: bool = Field(description="the database answers")


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "the database does not answer"}},
)
async def health(request: Request, response: Response) -> dict:
    """Status, uptime, database, email (SMTP), workers alive; with a token, per queue the
    waiting and active counts (plus the older `queued`/`running` names, limit and pause
    state), the caller's tenant's only."""
    state = request.app.state
    store = state.store
    who = await _caller(request)
    t0 = time.monotonic()
    reachable = await store.ping()
    latency_ms = round((time.monotonic() - t0) * 1000, 1) if reachable else None
    email = await _email(state)
    if who is None:
        email.pop("server", None)
    uptime = round(time.monotonic() - state.started, 1)
    body: dict = {
        "status": "ok",
        "uptime": uptime,
        "uptime_seconds": uptime,
        "database": {"reachable": reachable, "latency_ms": latency_ms},
        "email": email,
        "workers": None,
        "queues": None,
    }
    if reachable:
        body["workers"] = {k: v if k == "alive" else v or None for k, v in (await store.workers.summary()).items()}
        if who is not None:
            body["queues"] = {q.name: _queue(q) for q in (await queue_status(request, who)).queues}
        if email.get("ok") is False or email.get("status") in ("failing", "no_recipient"):
            body["status"] = "degraded"
    else:
        body["status"] = "unavailable"
        response.status_code = 503
    return body


@router.get(
    "/ready",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "not started yet, shutting down, or the database is gone"}},
)
async def ready(request: Request, response: Response) -> dict:
    """200 once start-up finished (indexes ensured, loops started) and while the database
    answers; 503 before, during shutdown, or when the database is gone."""
    state = request.app.state
    started = bool(getattr(state, "ready", False))
    reachable = await state.store.ping() if started else False
    ok = started and reachable
    if not ok:
        response.status_code = 503
    return {"ready": ok, "started": started, "database": reachable}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}},
)
async def prometheus(request: Request) -> Response:
    """This process's counters and histograms, and queue gauges read from the database
    (left out when it does not answer in time)."""
    try:
        engines = await asyncio.wait_for(request.app.state.store.engines.list(), QUEUE_READ_TIMEOUT)
    except Exception:
        engines = None
    return Response(metrics.render(engines), media_type=metrics.CONTENT_TYPE_LATEST)


async def _caller(request: Request):
    """The caller a bearer token stands for, or None (no token, or an invalid one)."""
    try:
        return await require_principal(request)
    except Unauthorized:
        return None


def _queue(q) -> dict:
    return {
        "waiting": q.queued,
        "active": q.running,
        "paused": q.paused or q.tenant_paused,
        "limit": q.max_concurrent_jobs,
        "queued": q.queued,
        "running": q.running,
    }


async def _email(state) -> dict:
    url = state.settings.smtp_url
    out: dict = {
        "configured": bool(url),
        "server": _server(url) if url else None,
        "reason": None if url else "SMTP_URL is not set: no email is sent",
    }
    probe = getattr(state, "email_status", None)
    if probe is None:
        return out
    try:
        out.update(await asyncio.wait_for(probe(), EMAIL_STATUS_TIMEOUT))
    except Exception as exc:  # the probe itself failed: that is a failing email service
        out.update(ok=False, reason=f"email status check failed: {exc!r}")
    return out


def _server(url: str) -> str | None:
    """`host:port` of an SMTP URL, never its credentials."""
    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
    except ValueError:
        return None
