"""WebSocket fan-out benchmark: N clients subscribed to everything on a `switchyard serve`
process while a driver makes job transitions at a fixed rate. Reports events delivered per
second and the latency from a transition's acknowledged write to each client's receipt.

The clients run in a process of their own (so that parsing their messages does not slow
the driver's writes), and the driver sends each write's time to it over a pipe.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import time
from datetime import datetime

import websockets
from bench_switchyard import TOKEN

from app.settings import Settings
from app.store import connect


def _clients(ws_url: str, n: int, seconds: float, times_q, out_q, ready) -> None:
    asyncio.run(_clients_main(ws_url, n, seconds, times_q, out_q, ready))


async def _clients_main(ws_url, n, seconds, times_q, out_q, ready) -> None:
    written: dict[tuple[str, str], float] = {}
    pending: list[tuple[str, str, float]] = []
    latencies: list[float] = []
    hub_lag: list[float] = []  # event time (when the relay saw the write) to receipt
    delivered = 0
    stop_at = None

    async def client():
        nonlocal delivered
        async with websockets.connect(
            ws_url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, max_queue=None, compression=None
        ) as ws:
            await ws.recv()
            await ws.send(json.dumps({"action": "subscribe", "all": True}))
            while json.loads(await ws.recv()).get("type") != "subscribed":
                pass
            ready.release()
            closer = asyncio.create_task(close_when_done(ws))  # noqa: F841 (ends the loop below)
            async for raw in ws:
                now = time.time()
                body = json.loads(raw)
                for msg in body if isinstance(body, list) else (body,):  # one message, or several in a frame
                    if "seq" not in msg:
                        continue
                    delivered += 1
                    if delivered % 10 == 0:
                        hub_lag.append(now - datetime.fromisoformat(msg["at"]).timestamp())
                    key = (msg["job_id"], msg["type"])
                    t = written.get(key)
                    if t is None:
                        pending.append((*key, now))
                    else:
                        latencies.append(now - t)

    async def close_when_done(ws):
        while stop_at is None or time.time() < stop_at:
            await asyncio.sleep(0.2)
        await ws.close()

    async def times():
        nonlocal stop_at
        loop = asyncio.get_running_loop()
        while True:
            item = await loop.run_in_executor(None, times_q.get)
            if item is None:
                stop_at = time.time() + 2.0  # let the last events arrive
                return
            written[(item[0], item[1])] = item[2]

    tasks = [asyncio.create_task(client()) for _ in range(n)]
    await times()
    await asyncio.gather(*tasks)
    for job_id, etype, now in pending:
        if (job_id, etype) in written:
            latencies.append(now - written[(job_id, etype)])
    out_q.put({"delivered": delivered, "latencies": latencies, "hub_lag": hub_lag})


async def ws_fanout(url: str, base: str, clients: int = 100, rate: float = 100.0, seconds: float = 10.0) -> dict:
    """`base` is a running `switchyard serve`; transitions go straight to the store."""
    st = connect(url, Settings(queue_limits={"general": 10_000}), db_name="bench_live")  # serve's database
    await st.start()
    ctx = mp.get_context("spawn")
    times_q, out_q, ready = ctx.Queue(), ctx.Queue(), ctx.Semaphore(0)
    proc = ctx.Process(
        target=_clients, args=(base.replace("http", "ws") + "/api/v1/ws", clients, seconds, times_q, out_q, ready)
    )
    proc.start()
    for _ in range(clients):
        await asyncio.to_thread(ready.acquire)
    from app.domain.models import JobSpec

    spec = JobSpec(engine="general", operation="noop")
    made, t0 = 0, time.monotonic()

    async def pace() -> None:
        ahead = t0 + made / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)

    # Rounds of 3 x 20 transitions: 20 jobs queued one by one, claimed by one claim (20
    # transitions in one write), completed one by one. Each write's time goes to the clients.
    while time.monotonic() - t0 < seconds:
        for _ in range(20):
            job, _ = await st.lifecycle.submit(spec, owner="admin")
            times_q.put((job["_id"], "job.queued", time.time()))
            made += 1
            await pace()
        claimed = await st.claimer.claim(await st.engines.get("general"), "bench-driver", 20)
        now = time.time()
        for c in claimed:
            times_q.put((c["_id"], "job.running", now))
        made += len(claimed)
        await pace()
        for c in claimed:
            await st.lifecycle.complete(c, c["lease_token"], None, 0)
            times_q.put((c["_id"], "job.completed", time.time()))
            made += 1
            await pace()
    elapsed = time.monotonic() - t0
    times_q.put(None)
    result = await asyncio.to_thread(out_q.get)
    proc.join(30)
    await st.close()
    lat = sorted(result["latencies"])
    expected = made * clients

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {
        "clients": clients,
        "transitions": made,
        "transitions_per_s": round(made / elapsed, 1),
        "delivered": result["delivered"],
        "expected": expected,
        "delivered_per_s": round(result["delivered"] / elapsed, 1),
        "p50_ms": round(pct(0.50), 1),
        "p50_relay_to_client_ms": round(sorted(result["hub_lag"])[len(result["hub_lag"]) // 2] * 1000, 1)
        if result["hub_lag"]
        else None,
        "p99_ms": round(pct(0.99), 1),
        "max_ms": round(pct(1.0), 1),
    }
