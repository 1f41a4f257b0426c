"""Live updates: the WebSocket at `/api/v1/ws` and the SSE streams of one job or workflow.
The protocol is documented in docs/events.md.

Both authenticate like the REST API, check every subscription against what the caller may
see (an id the caller may not see is "not found", exactly like an id that does not exist),
and go through this process's `Hub`, so memory per client is bounded. While open, a stream's
credential is watched and what its client sends is bounded (app/api/stream_guard.py): a
revoked key or an expired JWT closes it (4401, or a last SSE `error` event); a malformed,
too deeply nested or out-of-range message gets an error message, a binary frame closes
with 1003, and a bad query string or `since` at connect time closes with 1008.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

from ..domain.events import is_terminal
from ..domain.redact import redact
from ..errors import NotFound, SwitchyardError, Unauthorized, ValidationFailed
from ..notifications.hub import Subscriber, Subscription
from ..tasks import halt
from .auth import Principal, authenticate, bearer, can_see, require_principal
from .jobs import strict_query
from .stream_guard import MAX_FRAME, auth_token, known_query, parse, seq, watch_of

router = APIRouter(tags=["live"])
ID = re.compile(r"^[0-9a-f]{24}$")
UNAUTHORIZED, ORIGIN, SLOW, GOING_AWAY, TOO_BIG, TOO_FAST, NOT_TEXT = 4401, 4403, 4408, 1001, 1009, 4429, 1003


def _origin_allowed(ws: WebSocket, settings) -> bool:
    """Browsers send `Origin`: it must be this server itself or one of `SWITCHYARD_CORS_ORIGINS`.
    Clients that are not browsers send none and are judged by their token alone."""
    origin = ws.headers.get("origin")
    if not origin:
        return True
    allowed = settings.allowed_origins()
    if "*" in allowed or origin in allowed:
        return True
    return origin.split("://", 1)[-1] == ws.headers.get("host")


async def _receive(ws: WebSocket) -> str | bytes:
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
    return message["text"] if message.get("text") is not None else message.get("bytes") or b""


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes."""
    return text.encode()[:120].decode(errors="ignore")


async def _subject(store, who: Principal, *, job_id=None, workflow_id=None) -> dict:
    """The job or workflow a subscription names, if the caller may see it."""
    oid = job_id or workflow_id
    field = "job_id" if job_id else "workflow_id"
    if not isinstance(oid, str) or not ID.match(oid):
        raise NotFound(f"{field} must be a 24-character hex id", field=field)
    doc = await (store.jobs.get(oid) if job_id else store.workflows.get(oid))
    if not can_see(who, doc.get("owner")):
        raise NotFound(f"{field.split('_')[0]} {oid!r} not found", field=field)
    return doc


async def _subscription(msg: dict, store=None, who: Principal | None = None) -> Subscription:
    if msg.get("notifications") is True:
        from ..notifications.service import routes_for

        prefs = await store.notifications.preferences(who.owner)
        return Subscription(notify=frozenset(routes_for(store.settings, prefs, "websocket")), user=who.owner)
    if msg.get("all") is True:
        return Subscription(all=True)
    if "job_id" in msg:
        return Subscription(job_id=msg["job_id"])
    if "workflow_id" in msg:
        return Subscription(workflow_id=msg["workflow_id"])
    raise ValidationFailed(
        'name what to subscribe to: "job_id", "workflow_id", "all": true or "notifications": true', field="action"
    )


@router.websocket("/api/v1/ws")
async def websocket(ws: WebSocket):
    app = ws.app
    settings, store, hub = app.state.settings, app.state.store, app.state.hub
    token = bearer(ws.headers.get("authorization")) or ws.query_params.get("token")
    if not _origin_allowed(ws, settings):
        await ws.close(ORIGIN, "origin not allowed")
        return
    await ws.accept()
    try:
        known_query(ws.query_params, "token", "since")
        if token is None:  # the third way: {"action": "auth", "token": ...} as the first message
            token = auth_token(await asyncio.wait_for(_receive(ws), 10))
        who = await authenticate(token, settings, store)
        since = seq(ws.query_params.get("since"))
    except (TimeoutError, Unauthorized, WebSocketDisconnect) as exc:
        reason = exc.message if isinstance(exc, Unauthorized) else "authenticate first"
        await ws.send_json({"type": "error", "code": "unauthorized", "message": reason})
        await ws.close(UNAUTHORIZED, reason)
        return
    except SwitchyardError as exc:
        await ws.send_json({"type": "error", **exc.to_dict()})
        await ws.close(1008, _reason(exc.message))
        return
    sub = Subscriber(visible=lambda e: can_see(who, e.get("owner")), max_queue=settings.ws_queue_max)
    watch = watch_of(app)
    await hub.attach(sub)
    watch.add(sub, who, token)
    await _reply(
        sub, {"type": "welcome", "user": who.user, "tenant": who.tenant, "role": who.role, "position": hub.position}
    )
    sender = asyncio.create_task(_send(ws, sub))
    try:
        allowance, last = settings.ws_max_messages_per_second * 2, time.monotonic()
        while True:
            raw = await _receive(ws)
            if not isinstance(raw, str):
                await ws.close(NOT_TEXT, "the protocol is JSON in text frames")
                return
            now = time.monotonic()
            allowance = min(
                settings.ws_max_messages_per_second * 2, allowance + (now - last) * settings.ws_max_messages_per_second
            )
            last = now
            if len(raw) > MAX_FRAME or allowance < 1:
                big = len(raw) > MAX_FRAME
                await ws.close(
                    TOO_BIG if big else TOO_FAST, "message too large" if big else "too many messages; slow down"
                )
                return
            allowance -= 1
            await _handle(raw, store, hub, watch, sub, who, since)
    except WebSocketDisconnect:
        pass
    finally:
        watch.remove(sub)
        hub.detach(sub)
        await halt([sender])


async def _handle(raw: str, store, hub, watch, sub: Subscriber, who: Principal, since: int | None) -> None:
    if sub.dropped:  # closing: nothing more is honoured
        return
    try:
        msg = parse(raw)
        if not isinstance(msg, dict):
            raise ValidationFailed("a message is a JSON object", field="message")
        action = msg.get("action")
        if action == "ping":
            return await _reply(sub, {"type": "pong"})
        if action not in ("subscribe", "unsubscribe"):
            raise ValidationFailed(f"unknown action {action!r}", field="action")
        if action == "subscribe" and not await watch.check(sub):
            return  # revoked or expired since the last recheck: closed, not subscribed
        wanted = await _subscription(msg, store, who)
        if action == "unsubscribe":
            found = hub.unsubscribe(sub, wanted)
            reply = {"type": "unsubscribed", "found": found}
        else:
            if not wanted.all and wanted.notify is None:
                await _subject(store, who, job_id=wanted.job_id, workflow_id=wanted.workflow_id)
            start = seq(msg.get("since")) if "since" in msg else since
            replayed = await hub.subscribe(sub, wanted, start)
            reply = {"type": "subscribed", "replayed": replayed}
        reply.update({k: v for k, v in (("job_id", wanted.job_id), ("workflow_id", wanted.workflow_id)) if v})
        if wanted.all:
            reply["all"] = True
        if wanted.notify is not None:
            reply["notifications"] = sorted(wanted.notify)
        await _reply(sub, reply)
    except SwitchyardError as exc:
        await _reply(sub, {"type": "error", **exc.to_dict()})


async def _reply(sub: Subscriber, body: dict) -> None:
    """Replies go through the client's queue, after the events offered before them; one
    task writes to the socket."""
    await sub.queue.put((None, json.dumps(body)))


async def _send(ws: WebSocket, sub: Subscriber) -> None:
    """The one writer to the socket. When several messages are waiting (the client is
    behind, or a burst came), they go in one frame as a JSON array, in order: far fewer
    frames for the server to write and the client to read."""
    while True:
        item = await sub.queue.get()
        texts = []
        while item is not None:
            if item[1] is None:  # dropped: say why, then close
                if texts:
                    await ws.send_text(_frame(texts))
                code = sub.close_code or (SLOW if sub.dropped.startswith("slow") else GOING_AWAY)
                await ws.send_json({"type": "error", "code": _why(sub), "message": sub.dropped})
                await ws.close(code, sub.dropped[:100])
                return
            texts.append(item[1])
            item = sub.queue.get_nowait() if not sub.queue.empty() and len(texts) < 200 else None
        await ws.send_text(_frame(texts))


def _why(sub: Subscriber) -> str:
    return "unauthorized" if sub.close_code == UNAUTHORIZED else "dropped"


def _frame(texts: list[str]) -> str:
    return texts[0] if len(texts) == 1 else "[" + ",".join(texts) + "]"


def _final(doc: dict, kind: str) -> dict:
    out = {"type": "final", "status": doc["status"]}
    if kind == "job":
        out.update(result=redact(doc.get("result")), error=redact(doc.get("last_error")))
    return out


def _sse(event_id, name: str, data: str) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {data}\n\n"


async def _stream(request: Request, who: Principal, *, job_id=None, workflow_id=None) -> StreamingResponse:
    store, hub, settings = request.app.state.store, request.app.state.hub, request.app.state.settings
    doc = await _subject(store, who, job_id=job_id, workflow_id=workflow_id)
    since = seq(request.headers.get("last-event-id") or request.query_params.get("since")) or 0
    watch = watch_of(request.app)
    kind = "job" if job_id else "workflow"

    async def body():
        sub = Subscriber(visible=lambda e: can_see(who, e.get("owner")), max_queue=settings.ws_queue_max)
        await hub.attach(sub)
        watch.add(sub, who, _sse_token(request))
        try:
            snapshot = {"type": "connected", f"{kind}_id": doc["_id"], "status": doc["status"]}
            yield _sse(None, "connected", json.dumps(snapshot))
            await hub.subscribe(sub, Subscription(job_id=job_id, workflow_id=workflow_id), since)
            ended = doc["status"] in ("completed", "failed", "cancelled")
            while True:
                try:
                    # Finished before we looked: its terminal event may still be on its way
                    # from the relay; give it a moment, then end anyway (it may have expired).
                    event, text = await asyncio.wait_for(sub.queue.get(), 3 if ended else 15)
                except TimeoutError:
                    if ended:
                        yield _sse(None, "final", json.dumps(_final(doc, kind), default=str))
                        return
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                if sub.dropped:
                    yield _sse(None, "error", json.dumps({"type": "error", "code": _why(sub), "message": sub.dropped}))
                    return
                yield _sse(event["_id"], event["type"], text)
                if is_terminal(event) and event["kind"] == kind:
                    final = await (store.jobs.get(doc["_id"]) if job_id else store.workflows.get(doc["_id"]))
                    yield _sse(None, "final", json.dumps(_final(final, kind), default=str))
                    return
        finally:
            watch.remove(sub)
            hub.detach(sub)

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _sse_token(request: Request) -> str | None:
    """The Authorization header, or `?token=` for browsers' EventSource, which cannot set headers."""
    if request.headers.get("authorization") or "token" not in request.query_params:
        return bearer(request.headers.get("authorization"))
    return request.query_params["token"]


async def _sse_principal(request: Request) -> Principal:
    if request.headers.get("authorization") or "token" not in request.query_params:
        return await require_principal(request)
    state = request.app.state
    return await authenticate(request.query_params["token"], state.settings, state.store)


@router.get(
    "/api/v1/jobs/workflows/{workflow_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    dependencies=[strict_query("since", "token")],
)
async def workflow_events(workflow_id: str, request: Request):
    """A workflow's events as Server-Sent Events; `Last-Event-ID` (or `?since=`) resumes."""
    return await _stream(request, await _sse_principal(request), workflow_id=workflow_id)


@router.get(
    "/api/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    dependencies=[strict_query("since", "token")],
)
async def job_events(job_id: str, request: Request):
    """A job's events as Server-Sent Events; `Last-Event-ID` (or `?since=`) resumes. The
    stream ends after the job's terminal event, with a `final` event carrying its result."""
    return await _stream(request, await _sse_principal(request), job_id=job_id)
