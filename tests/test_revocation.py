"""Open streams end when their credential does: a revoked API key closes its WebSockets
(4401) and SSE streams (a final `error` event) within the recheck interval, refuses any
subscription sent after the revocation at once, and a JWT's streams close at its `exp`."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import jwt
import pytest
import websockets

from tests.conftest import TOKEN, make_settings
from tests.helpers import recv, until

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "j" * 32
BOUND = 10.0  # seconds; the recheck interval below is 0.5 s


@pytest.fixture
def settings():
    return make_settings(stream_recheck_seconds=0.5, jwt_secret=SECRET)


async def member_key(host) -> tuple[str, str]:
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=ADMIN) as c:
        r = await c.post(
            "/api/v1/auth/keys", json={"name": "watcher", "tenant": "acme", "user": "ann", "role": "member"}
        )
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["token"]


async def revoke(host, key_id) -> None:
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=ADMIN) as c:
        assert (await c.delete(f"/api/v1/auth/keys/{key_id}")).status_code == 200


async def closed_code(ws, timeout=BOUND) -> tuple[int | None, list[dict]]:
    """Read until the server closes; the close code and what came before it."""
    seen = []
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            seen.append(await recv(ws, timeout))
    return (info.value.rcvd.code if info.value.rcvd else None), seen


async def test_revoking_a_key_closes_its_websockets_and_refuses_new_subscriptions(server):
    key_id, token = await member_key(server)
    url = f"ws://{server}/api/v1/ws"
    async with (
        websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as watching,
        websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as idle,
        websockets.connect(url, additional_headers=ADMIN) as other,
    ):
        for ws in (watching, idle, other):
            assert (await recv(ws))["type"] == "welcome"
        await watching.send(json.dumps({"action": "subscribe", "all": True}))
        assert (await recv(watching))["type"] == "subscribed"

        await revoke(server, key_id)
        try:  # at once, before any periodic recheck: refused, and the connection closed
            await idle.send(json.dumps({"action": "subscribe", "all": True}))
        except websockets.ConnectionClosed:
            pass
        code, seen = await closed_code(idle)
        assert code == 4401 and not [m for m in seen if m.get("type") == "subscribed"], seen
        assert seen and seen[-1]["code"] == "unauthorized", seen

        code, seen = await closed_code(watching)  # no message of its own: the recheck closes it
        assert code == 4401 and seen[-1] == {"type": "error", "code": "unauthorized", "message": "API key revoked"}

        await other.send(json.dumps({"action": "ping"}))  # another credential's stream is untouched
        assert (await recv(other))["type"] == "pong"


async def test_revoking_a_key_ends_its_sse_stream(server):
    key_id, token = await member_key(server)
    async with httpx.AsyncClient(
        base_url=f"http://{server}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        job = (
            await c.post(
                "/api/v1/jobs/submit", json={"engine": "testing", "operation": "wait_cancel", "parameters": {"max": 60}}
            )
        ).json()
        frames = []

        async def read():
            async with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        frames.append({"event": line[7:]})
                    elif line.startswith("data: "):
                        frames[-1]["data"] = json.loads(line[6:])
                    if line == "" and [f["event"] for f in frames] == ["connected"]:
                        await revoke(server, key_id)  # once the stream is open

        await asyncio.wait_for(read(), BOUND)
    assert frames[-1]["event"] == "error" and frames[-1]["data"]["code"] == "unauthorized", frames
    assert not [f for f in frames if f["event"] == "final"]


async def test_a_jwt_stream_closes_when_the_token_expires(server):
    exp = time.time() + 2
    token = jwt.encode({"sub": "carol", "tenant": "acme", "exp": exp}, SECRET, "HS256")
    async with websockets.connect(f"ws://{server}/api/v1/ws?token={token}") as ws:
        assert (await recv(ws))["type"] == "welcome"
        await ws.send(json.dumps({"action": "subscribe", "all": True}))
        await until(ws, lambda m: m.get("type") == "subscribed")
        code, seen = await closed_code(ws, timeout=BOUND)
        assert time.time() >= exp  # not before
    assert code == 4401 and seen[-1] == {"type": "error", "code": "unauthorized", "message": "token expired"}

    exp = time.time() + 2
    token = jwt.encode({"sub": "carol", "tenant": "acme", "exp": exp}, SECRET, "HS256")
    async with httpx.AsyncClient(
        base_url=f"http://{server}", headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as c:
        job = (
            await c.post(
                "/api/v1/jobs/submit", json={"engine": "testing", "operation": "wait_cancel", "parameters": {"max": 60}}
            )
        ).json()
        lines = []

        async def read():
            async with c.stream("GET", f"/api/v1/jobs/{job['id']}/events") as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    lines.append(line)

        await asyncio.wait_for(read(), BOUND)
        assert time.time() >= exp
    events = [line[7:] for line in lines if line.startswith("event: ")]
    assert events[0] == "connected" and events[-1] == "error", lines
    assert json.loads([line for line in lines if line.startswith("data: ")][-1][6:])["code"] == "unauthorized"


async def test_one_read_per_recheck_covers_every_open_key_and_closes_only_the_revoked(store):
    from app.api.auth import Principal
    from app.api.stream_guard import Watch
    from app.notifications.hub import Subscriber
    from tests.helpers import eventually

    now = store.clock.now()
    keys = [
        (await store.keys.create(tenant="acme", user=u, role="member", name=u, created_by="t", now=now))[0]["_id"]
        for u in ("ann", "bob")
    ]
    reads, real = [], store.keys.live

    async def counted(ids):  # the real read, counted once it has answered
        out = await real(ids)
        reads.append(set(ids))
        return out

    store.keys.live = counted
    watch = Watch(store, 0.2)
    subs = {s: k for s, k in ((Subscriber(visible=lambda e: True), k) for k in (keys[0], keys[0], keys[1]))}
    admin = Subscriber(visible=lambda e: True)
    for sub, key in subs.items():
        watch.add(sub, Principal(user="u", role="member", tenant="acme", key_id=key), f"sy_{key}_x")
    watch.add(admin, Principal(user="admin", role="admin", is_global=True), TOKEN)
    await eventually(lambda: asyncio.sleep(0, bool(reads)), timeout=BOUND)
    assert reads[0] == set(keys) and not any(s.dropped for s in subs)

    await store.keys.revoke(keys[0], None, now)
    await eventually(lambda: asyncio.sleep(0, all(s.dropped for s, k in subs.items() if k == keys[0])), timeout=BOUND)
    assert {(s.dropped, s.close_code) for s, k in subs.items() if k == keys[0]} == {("API key revoked", 4401)}
    assert not [s for s, k in subs.items() if k == keys[1] and s.dropped] and not admin.dropped
    # One read per recheck, naming every open key (after the close, only those still open).
    assert reads.count(set(keys)) >= 2 and all(r in (set(keys), {keys[1]}) for r in reads), reads
    for sub in [*subs, admin]:
        watch.remove(sub)
    assert watch._task is None and not watch.open
