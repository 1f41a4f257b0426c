"""Live updates against a real uvicorn server: the WebSocket protocol (auth three ways,
subscriptions, ordered events, `since` replay, refusals), SSE with `Last-Event-ID`, slow
clients, and two `switchyard serve` processes sharing one database."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from app.notifications.hub import Hub, Subscriber, Subscription
from tests.conftest import TOKEN
from tests.helpers import eventually, recv, until
from tests.procs import stop
from tests.servers import serve_processes

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def submit_wf(host, n=5):
    steps = [{"key": "s0", "engine": "testing", "operation": "ok"}] + [
        {"key": f"s{i}", "engine": "testing", "operation": "ok", "depends_on": [f"s{i - 1}"]} for i in range(1, n)
    ]
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=AUTH) as c:
        r = await c.post("/api/v1/jobs/workflows", json={"name": "chain", "jobs": steps})
        assert r.status_code == 201, r.text
        return r.json()


async def test_websocket_refuses_missing_and_wrong_tokens(server):
    for url, headers in (
        (f"ws://{server}/api/v1/ws?token=nope", None),
        (f"ws://{server}/api/v1/ws", {"Authorization": "Bearer wrong"}),
    ):
        async with websockets.connect(url, additional_headers=headers) as ws:
            msg = await recv(ws)
            assert msg["type"] == "error" and msg["code"] == "unauthorized"
            with pytest.raises(websockets.ConnectionClosed) as info:
                await recv(ws)
            assert info.value.rcvd.code == 4401
    async with websockets.connect(f"ws://{server}/api/v1/ws") as ws:  # first message, wrong
        await ws.send(json.dumps({"action": "auth", "token": "wrong"}))
        assert (await recv(ws))["code"] == "unauthorized"


async def test_a_workflows_events_arrive_in_order_and_since_replays_the_missed_ones(server):
    async with websockets.connect(f"ws://{server}/api/v1/ws") as ws:
        await ws.send(json.dumps({"action": "auth", "token": TOKEN}))  # auth by first message
        assert (await recv(ws))["type"] == "welcome"
        wf = await submit_wf(server)
        await ws.send(json.dumps({"action": "subscribe", "workflow_id": wf["id"], "since": 0}))
        msgs = await until(ws, lambda m: m.get("type") == "workflow.completed")
    events = [m for m in msgs if "seq" in m]
    seqs = [m["seq"] for m in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for key, job_id in wf["jobs"].items():
        mine = [m["type"] for m in events if m.get("job_id") == job_id]
        # Steps are created with the workflow; the root starts queued, the others pending.
        assert mine == (
            ["job.running", "job.completed"] if key == "s0" else ["job.queued", "job.running", "job.completed"]
        )
    # Steps complete in chain order: s{i} completes before s{i+1} starts.
    order = [m["job_id"] for m in events if m["type"] == "job.completed"]
    assert order == [wf["jobs"][f"s{i}"] for i in range(5)]

    cut = events[len(events) // 2]["seq"]
    async with websockets.connect(f"ws://{server}/api/v1/ws?since={cut}", additional_headers=AUTH) as ws:
        assert (await recv(ws))["type"] == "welcome"
        await ws.send(json.dumps({"action": "subscribe", "workflow_id": wf["id"]}))
        replay = await until(ws, lambda m: m.get("type") == "subscribed")
    assert [m["seq"] for m in replay if "seq" in m] == [s for s in seqs if s > cut]


async def test_subscribe_all_sees_jobs_live_and_bad_subscriptions_are_refused(server):
    async with websockets.connect(f"ws://{server}/api/v1/ws?token={TOKEN}") as ws:
        assert (await recv(ws))["type"] == "welcome"
        await ws.send(json.dumps({"action": "subscribe", "all": True}))
        assert (await recv(ws))["type"] == "subscribed"
        await ws.send(json.dumps({"action": "subscribe", "job_id": "0123456789abcdef01234567"}))
        assert (await recv(ws)) == {
            "type": "error",
            "code": "not_found",
            "message": "job '0123456789abcdef01234567' not found",
            "field": "job_id",
        }
        await ws.send(json.dumps({"action": "subscribe", "job_id": {"$ne": 1}}))
        assert (await recv(ws))["code"] == "not_found"
        await ws.send(json.dumps({"action": "dance"}))
        assert (await recv(ws))["field"] == "action"
        await ws.send("not json")
        assert (await recv(ws))["code"] == "validation_error"
        async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH) as c:
            job = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
        msgs = await until(ws, lambda m: m.get("type") == "job.completed" and m.get("job_id") == job["id"])
        assert [m["type"] for m in msgs if m.get("job_id") == job["id"]] == [
            "job.queued",
            "job.running",
            "job.completed",
        ]
        await ws.send(json.dumps({"action": "unsubscribe", "all": True}))
        assert (await until(ws, lambda m: m.get("type") == "unsubscribed"))[-1]["found"] is True


async def test_sse_streams_a_job_to_its_end_and_resumes_from_last_event_id(server):
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH, timeout=30) as c:
        job = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
        frames = await sse(c, f"/api/v1/jobs/{job['id']}/events")
        names = [f["event"] for f in frames]
        assert names[0] == "connected" and names[-1] == "final"
        assert names[1:-1] == ["job.queued", "job.running", "job.completed"]
        assert json.loads(frames[-1]["data"])["result"]["job"] == job["id"]
        first_id = frames[1]["id"]
        resumed = await sse(c, f"/api/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": first_id})
        assert [f["event"] for f in resumed] == ["connected", "job.running", "job.completed", "final"]
        assert (await c.get("/api/v1/jobs/0123456789abcdef01234567/events")).status_code == 404
        assert (
            await c.get(f"/api/v1/jobs/{job['id']}/events", headers={"Authorization": "Bearer x"})
        ).status_code == 401
        async with httpx.AsyncClient(base_url=f"http://{server}", timeout=30) as bare:  # EventSource: token in the URL
            assert (await bare.get(f"/api/v1/jobs/{job['id']}/events?token=nope")).status_code == 401
            names = [f["event"] for f in await sse(bare, f"/api/v1/jobs/{job['id']}/events?token={TOKEN}")]
            assert names[-1] == "final"
        wf = await submit_wf(server, n=3)
        frames = await sse(c, f"/api/v1/jobs/workflows/{wf['id']}/events")
        assert frames[-2]["event"] == "workflow.completed" and json.loads(frames[-1]["data"])["status"] == "completed"


async def sse(client, path, headers=None) -> list[dict]:
    frames, cur = [], {}
    async with client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for line in r.aiter_lines():
            if not line:
                if cur:
                    frames.append(cur)
                cur = {}
            elif not line.startswith(":"):
                k, _, v = line.partition(": ")
                cur[k] = v
    return frames


async def test_a_slow_client_is_dropped_instead_of_growing(store, settings):
    hub = Hub(store, settings)
    sub = Subscriber(visible=lambda e: True, max_queue=10)
    sub.subs.append(Subscription(all=True))
    hub.subscribers.add(sub)
    for seq in range(1, 30):
        hub.dispatch({"_id": seq, "type": "job.queued", "kind": "job", "job_id": "j", "owner": "admin"})
    assert sub.dropped and sub.dropped.startswith("slow client")
    assert sub.queue.qsize() == 1  # only the marker that tells the sender to close


async def test_two_api_processes_share_events(db_url, store):
    """A client connected to B sees the jobs that A's workers run."""
    await store.engines.set_limit("testing", 10)
    (pa, pb), procs = await serve_processes(db_url, store.db.name, [4, 0], SWITCHYARD_ADMIN_TOKEN=TOKEN)
    try:
        async with websockets.connect(f"ws://127.0.0.1:{pb}/api/v1/ws", additional_headers=AUTH) as ws:
            await recv(ws)
            await ws.send(json.dumps({"action": "subscribe", "all": True}))
            await until(ws, lambda m: m.get("type") == "subscribed")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{pa}", headers=AUTH) as c:
                ids = {
                    (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()["id"]
                    for _ in range(5)
                }
            done: set[str] = set()
            while done != ids:
                msg = await recv(ws, timeout=30)
                if msg.get("type") == "job.completed":
                    done.add(msg["job_id"])
    finally:
        for p in procs:
            stop(p)


async def test_notifications_are_pushed_with_the_id_they_are_stored_under(server):
    async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=AUTH) as ws:
        await recv(ws)
        await ws.send(json.dumps({"action": "subscribe", "notifications": True}))
        ack = await until(ws, lambda m: m.get("type") == "subscribed")
        assert "job.failed" in ack[-1]["notifications"] and "job.completed" not in ack[-1]["notifications"]
        async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH) as c:
            ok = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
            bad = (
                await c.post(
                    "/api/v1/jobs/submit", json={"engine": "testing", "operation": "permanent", "name": "broken"}
                )
            ).json()
            [note] = [m for m in await until(ws, lambda m: m.get("type") == "notification")]
            assert note["job_id"] == bad["id"] and note["event_type"] == "job.failed" and "broken" in note["title"]

            async def stored():
                return (await c.post(f"/api/v1/jobs/notifications/{note['id']}/read")).status_code == 200

            await eventually(stored, timeout=20)
        assert ok["id"] != bad["id"]


async def test_subscribers_attaching_at_once_share_one_tail(store, settings):
    """Regression: each of 100 clients connecting together once opened its own change
    stream, which slowed every write on the server twentyfold."""
    hub = Hub(store, settings)
    subs = [Subscriber(visible=lambda e: True) for _ in range(20)]
    await asyncio.gather(*(hub.attach(s) for s in subs))
    tails = [t for t in asyncio.all_tasks() if t.get_name() == "hub" and not t.done()]
    assert len(tails) == 1 and len(hub.subscribers) == 20
    await hub.stop()


async def test_progress_is_pushed_and_a_cancel_ends_the_job_stream(server):
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH) as c:
        job = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "wait_cancel"})).json()
        async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=AUTH) as ws:
            await recv(ws)
            await ws.send(json.dumps({"action": "subscribe", "job_id": job["id"], "since": 0}))
            progress = (await until(ws, lambda m: m.get("type") == "job.progress"))[-1]
            assert progress["progress"]["percent"] == 10 and progress["progress"]["stage"] == "waiting"
            assert (await c.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code == 200
            end = (await until(ws, lambda m: m.get("type") in ("job.cancelled", "job.completed", "job.failed")))[-1]
            assert end["type"] == "job.cancelled" and end["job_id"] == job["id"]
