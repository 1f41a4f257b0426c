"""Hostile input on the live streams gets a 4xx, or an error message, or a clean close code
with a reason: never a 500 or a connection cut without a close frame. Seqs out of range,
messages nested too deeply, auth tokens that are not strings, unknown query parameters."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets

from tests.conftest import TOKEN
from tests.helpers import recv

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BAD_SEQS = ("1" * 30, "9223372036854775808", "-1", "abc", "1.5", "²")


async def closed(ws) -> tuple[int | None, str, list[dict]]:
    """Read until the server closes: its code, reason, and the messages before."""
    seen = []
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            seen.append(await recv(ws, 10))
    rcvd = info.value.rcvd
    return (rcvd.code if rcvd else None), (rcvd.reason if rcvd else ""), seen


async def a_job(host) -> str:
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=AUTH) as c:
        return (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()["id"]


async def test_sse_refuses_a_resume_point_out_of_range_negative_or_not_a_number(server):
    job = await a_job(server)
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH, timeout=10) as c:
        for bad in BAD_SEQS:
            for kwargs in ({"headers": {"Last-Event-ID": bad.encode()}}, {"params": {"since": bad}}):
                r = await c.get(f"/api/v1/jobs/{job}/events", **kwargs)
                assert r.status_code == 422, (bad, kwargs, r.status_code, r.text)
                assert r.json()["error"]["field"] == "since"
        r = await c.get(f"/api/v1/jobs/{job}/events", headers={"Last-Event-ID": "9223372036854775807"})
        assert r.status_code == 200  # the largest seq there can be is fine (nothing after it)


async def test_websocket_refuses_a_since_out_of_range_negative_or_not_a_number(server):
    for bad in BAD_SEQS:
        async with websockets.connect(f"ws://{server}/api/v1/ws?since={bad}", additional_headers=AUTH) as ws:
            code, reason, seen = await closed(ws)
            assert code == 1008 and "since" in reason and seen[-1]["field"] == "since", (bad, code, seen)
    async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=AUTH) as ws:
        assert (await recv(ws))["type"] == "welcome"
        for bad in (10**30, 2**63, -1, "1" * 30, 1.5, True, {"$gt": 0}):
            await ws.send(json.dumps({"action": "subscribe", "all": True, "since": bad}))
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["field"] == "since", (bad, reply)
        await ws.send(json.dumps({"action": "subscribe", "all": True, "since": 2**63 - 1}))
        assert (await recv(ws))["type"] == "subscribed"


async def test_a_deeply_nested_message_is_refused_before_it_is_parsed(server):
    deep = "[" * 30_000 + "]" * 30_000
    async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=AUTH) as ws:
        assert (await recv(ws))["type"] == "welcome"
        for msg in (deep, "[" * 30_000, '{"a":' * 12_000):
            await ws.send(msg)
            reply = await recv(ws)
            assert reply["code"] == "validation_error" and reply["field"] == "message", reply
        await ws.send(json.dumps({"action": "ping"}))  # the connection is still good
        assert (await recv(ws))["type"] == "pong"
    async with websockets.connect(f"ws://{server}/api/v1/ws") as ws:  # as the auth message
        await ws.send(deep)
        code, reason, seen = await closed(ws)
        assert code == 4401 and seen[-1]["code"] == "unauthorized", (code, seen)


async def test_an_auth_token_that_is_not_a_string_is_unauthorized(server):
    for token in ({"$ne": None}, 5, ["x"], None, True, 1.5):
        async with websockets.connect(f"ws://{server}/api/v1/ws") as ws:
            await ws.send(json.dumps({"action": "auth", "token": token}))
            code, reason, seen = await closed(ws)
            assert code == 4401 and seen == [
                {"type": "error", "code": "unauthorized", "message": "missing or invalid bearer token"}
            ], (token, code, seen)


async def test_unknown_query_parameters_are_refused_on_the_streams(server):
    job = await a_job(server)
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH, timeout=10) as c:
        for path in (f"/api/v1/jobs/{job}/events", "/api/v1/jobs/workflows/0123456789abcdef01234567/events"):
            for name in ("foo", "since[$gt]", "token.x"):
                r = await c.get(path, params={name: "1"})
                assert r.status_code == 422 and r.json()["error"]["field"] == name, (path, name, r.text)
    for query in ("foo=1", "since[$gt]=0", f"token={TOKEN}&extra=1"):
        async with websockets.connect(f"ws://{server}/api/v1/ws?{query}", additional_headers=AUTH) as ws:
            code, reason, seen = await closed(ws)
            assert code == 1008 and seen[-1]["code"] == "validation_error", (query, code, seen)
            assert "unknown query parameter" in reason


async def test_a_binary_frame_closes_with_a_reason(server):
    async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=AUTH) as ws:
        assert (await recv(ws))["type"] == "welcome"
        await ws.send(b'{"action": "ping"}')
        code, reason, seen = await closed(ws)
        assert code == 1003 and "text" in reason, (code, reason, seen)
    async with websockets.connect(f"ws://{server}/api/v1/ws") as ws:  # as the auth message: no token
        await ws.send(json.dumps({"action": "auth", "token": TOKEN}).encode())
        code, reason, seen = await closed(ws)
        assert code == 4401 and seen[-1]["code"] == "unauthorized"
