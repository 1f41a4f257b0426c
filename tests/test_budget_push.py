"""Budget notifications over the WebSocket, across processes: a `switchyard worker` process
charges a job's cost, and a user connected to the API process (which runs no job) is pushed
`budget.warning` at 80 % and `budget.reached` at 100 %, with the ids they are stored under;
another tenant's user is pushed neither. And the hub's follower of direct notifications
(app/notifications/direct.py) runs only while someone wants notifications."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from app.main import create_app
from app.notifications.hub import Hub, Subscriber, Subscription
from tests.conftest import TOKEN
from tests.helpers import eventually, recv, until
from tests.procs import start_worker, stop
from tests.servers import uvicorn_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _key(c: httpx.AsyncClient, tenant: str, user: str) -> str:
    r = await c.post("/api/v1/auth/keys", json={"name": "k", "tenant": tenant, "user": user, "role": "admin"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


async def _listening(host: str, token: str):
    ws = await websockets.connect(f"ws://{host}/api/v1/ws", additional_headers={"Authorization": f"Bearer {token}"})
    assert (await recv(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "subscribe", "notifications": True}))
    [*_, ack] = await until(ws, lambda m: m.get("type") == "subscribed")
    assert {"budget.warning", "budget.reached"} <= set(ack["notifications"])
    return ws


async def test_a_worker_process_crossing_a_budget_pushes_to_the_users_socket(db_url, store, settings):
    async with uvicorn_app(create_app(settings, store=store, workers=0)) as host:
        async with httpx.AsyncClient(base_url=f"http://{host}", headers=AUTH, timeout=10) as admin:
            alice, bob = await _key(admin, "ta", "alice"), await _key(admin, "tb", "bob")
            r = await admin.put("/api/v1/admin/tenants/ta/budget", json={"daily": 1.0})
            assert r.status_code == 200, r.text
            as_alice = {"Authorization": f"Bearer {alice}"}
            proc = start_worker(db_url, store.db.name, concurrency=2, engines="billing")
            ws, other = await _listening(host, alice), await _listening(host, bob)
            try:

                async def spend(cost: float) -> None:
                    r = await admin.post(
                        "/api/v1/jobs/submit",
                        json={"engine": "billing", "operation": "spend", "parameters": {"cost": cost}},
                        headers=as_alice,
                    )
                    assert r.status_code in (200, 201), r.text

                await spend(0.85)  # 85 %
                warning = (await until(ws, lambda m: m.get("type") == "notification", timeout=60))[-1]
                assert warning["event_type"] == "budget.warning"
                assert warning["budget"]["percent"] == 80 and warning["budget"]["period"] == "daily"
                assert "Budget 80 % spent: tenant ta" in warning["title"]
                await spend(0.25)  # 110 %
                reached = (await until(ws, lambda m: m.get("type") == "notification", timeout=60))[-1]
                assert reached["event_type"] == "budget.reached" and reached["budget"]["percent"] == 100

                # The pushes name the stored notifications: alice marks them read by those ids.
                page = (await admin.get("/api/v1/jobs/notifications", headers=as_alice)).json()
                assert {n["id"] for n in page["notifications"]} == {warning["id"], reached["id"]}
                r = await admin.post(f"/api/v1/jobs/notifications/{reached['id']}/read", headers=as_alice)
                assert r.status_code == 200, r.text

                # Another tenant's user was pushed nothing: only the pong comes back.
                await other.send(json.dumps({"action": "ping"}))
                assert [m["type"] for m in await until(other, lambda m: m.get("type") == "pong")] == ["pong"]
            finally:
                await ws.close()
                await other.close()
                stop(proc)


async def test_the_follower_runs_only_while_notifications_are_wanted(store, settings):
    hub = Hub(store, settings)
    watcher = Subscriber(visible=lambda e: True)
    await hub.attach(watcher)
    await hub.subscribe(watcher, Subscription(all=True), None)
    assert not hub.direct.running  # events alone need no second stream

    alice = Subscriber(visible=lambda e: e.get("owner") == "ta/alice")
    await hub.attach(alice)
    await hub.subscribe(alice, Subscription(notify=frozenset({"budget.warning"}), user="ta/alice"), None)
    assert hub.direct.running
    note = {"_id": "20250102:budget-daily-80~ta~alice", "user": "ta/alice", "seq": 0, "type": "budget.warning",
            "title": "Budget 80 % spent", "job_id": None, "workflow_id": None, "status": None, "read": False}  # fmt: skip
    await store.notifications.add_many([note, {**note, "_id": "20250102:budget-daily-80~ta~ann", "user": "ta/ann"}])
    _, text = await asyncio.wait_for(alice.queue.get(), 10)
    assert json.loads(text)["id"] == note["_id"]
    await asyncio.sleep(0.5)
    assert alice.queue.empty() and watcher.queue.empty()  # ann's is not alice's; events subscribers get none

    hub.detach(alice)

    async def stopped():
        return not hub.direct.running

    await eventually(stopped, timeout=10)
    assert hub._task is not None and not hub._task.done()  # the events tail goes on for the watcher
    await hub.stop()
