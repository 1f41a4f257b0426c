"""Slow clients against a real `switchyard serve` (app/http_limits.py): a header or a body
trickled byte by byte is cut off at its deadline while normal requests go on, and requests
beyond the connection cap get 503 until the half-open connections are gone."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import websockets

from tests.conftest import TOKEN
from tests.helpers import until
from tests.procs import stop
from tests.servers import serve_processes

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE = 1.5  # both deadlines, in the served process
MARGIN = 8.0  # a shared, noisy machine: the cut comes late rather than never


async def _trickle(writer: asyncio.StreamWriter, every: float) -> None:
    """One byte at a time, forever: a header or a body that never ends."""
    with contextlib.suppress(OSError):
        while True:
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(every)


async def _slow(port: int, head: bytes) -> tuple[float, bytes]:
    """Sends `head`, then trickles; returns (seconds until the server closed, what it answered)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    trickle = asyncio.create_task(_trickle(writer, 0.3))
    try:
        try:
            answer = await asyncio.wait_for(reader.read(), DEADLINE + MARGIN)  # to EOF: the server closed
        except ConnectionResetError:
            answer = b""
        return time.monotonic() - t0, answer
    finally:
        trickle.cancel()
        writer.close()


async def test_a_trickled_header_or_body_is_cut_at_its_deadline_while_others_are_served(db_url, store):
    (port,), procs = await serve_processes(
        db_url,
        store.db.name,
        [0],
        SWITCHYARD_ADMIN_TOKEN=TOKEN,
        SWITCHYARD_HTTP_HEADER_TIMEOUT_SECONDS=str(DEADLINE),
        SWITCHYARD_HTTP_BODY_TIMEOUT_SECONDS=str(DEADLINE),
    )
    try:
        headers = [_slow(port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(8)]
        line = _slow(port, b"GET /hea")  # not even the request line
        body = _slow(
            port,
            b"POST /api/v1/jobs/submit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + TOKEN.encode()
            + b'\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"engine": "',
        )
        slow = asyncio.gather(*headers, line, body)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=ADMIN, timeout=30) as c,
            websockets.connect(f"ws://127.0.0.1:{port}/api/v1/ws", additional_headers=ADMIN) as ws,
        ):
            await asyncio.sleep(DEADLINE / 2)  # the slow ones are in
            assert (await c.get("/health")).status_code == 200
            r = await c.post(
                "/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok", "parameters": {"i": 1}}
            )
            assert r.status_code == 201, r.text
            cut = await slow
            # a kept-alive connection idle for longer than the header deadline is still served
            # (its deadline starts with its next request's first byte)
            assert (await c.get(f"/api/v1/jobs/{r.json()['id']}/status")).status_code == 200
            await ws.send('{"action": "ping"}')  # a WebSocket outlives both deadlines
            await until(ws, lambda m: m.get("type") == "pong")
        for seconds, answer in cut[:-1]:
            assert DEADLINE - 0.1 <= seconds <= DEADLINE + MARGIN
            assert answer.startswith(b"HTTP/1.1 408 ")
        seconds, answer = cut[-1]  # the body: cut off, no job accepted
        assert DEADLINE - 0.1 <= seconds <= DEADLINE + MARGIN and b" 201 " not in answer
        assert await store.db["jobs"].count_documents({}) == 1
    finally:
        stop(procs[0])


async def test_requests_beyond_the_connection_cap_get_503_until_the_half_open_ones_are_cut(db_url, store):
    cap = 5
    (port,), procs = await serve_processes(
        db_url,
        store.db.name,
        [0],
        SWITCHYARD_ADMIN_TOKEN=TOKEN,
        SWITCHYARD_HTTP_MAX_CONNECTIONS=str(cap),
        SWITCHYARD_HTTP_HEADER_TIMEOUT_SECONDS=str(DEADLINE),
    )
    held = []
    try:
        for _ in range(cap):  # half-open: connected, a request begun, never finished
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health HTTP/1.1\r\n")
            await writer.drain()
            held.append((reader, writer))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            over = await c.get("/health")
            assert over.status_code == 503 and over.headers["connection"] == "close"
            for reader, _ in held:  # the header deadline frees their places
                answer = await asyncio.wait_for(reader.read(), DEADLINE + MARGIN)
                assert answer.startswith(b"HTTP/1.1 408 ")
            assert (await c.get("/health")).status_code == 200
    finally:
        for _, writer in held:
            writer.close()
        stop(procs[0])
