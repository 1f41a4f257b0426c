"""`/health` (no auth): database reachable, workers seen, depth per engine, email state."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request, response: Response) -> dict:
    state = request.app.state
    store = state.store
    reachable = await store.ping()
    body: dict = {
        "status": "ok" if reachable else "degraded",
        "uptime_seconds": round(time.monotonic() - state.started, 1),
        "database": {"reachable": reachable},
        "email": {"configured": bool(state.settings.smtp_url),
                  "reason": None if state.settings.smtp_url else "SMTP_URL is not set: no email is sent"},
    }
    if reachable:
        body["workers"] = {"alive": await store.workers.alive_count()}
        body["queues"] = {e["_id"]: {"queued": max(e.get("queued", 0), 0), "running": e.get("running", 0),
                                     "paused": e.get("paused", False)} for e in await store.engines.list()}
    else:
        response.status_code = 503
    return body
