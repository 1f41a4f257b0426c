"""At rest, each process sends the database at most 2 commands a second, counted at the wire
(scripts/wirecount.py): a `switchyard worker`, and a `switchyard serve` with the event relay
off (its own loops; the relay has its own budget). Both run with the default cadences, not
the tests' fast ones, since the defaults are what a deployment pays for."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from urllib.parse import urlsplit

from tests.procs import start_worker, stop
from tests.servers import serve_processes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from wirecount import WireCounter  # noqa: E402

# The production cadences (tests/procs.py speeds them up for the other tests).
DEFAULTS = {
    "SWITCHYARD_LEASE_SECONDS": "30",
    "SWITCHYARD_POLL_INTERVAL_SECONDS": "2",
    "SWITCHYARD_PROMOTE_INTERVAL_SECONDS": "0.25",
    "SWITCHYARD_RETRY_DELAY_SECONDS": "60",
}
SETTLE, COUNT, LIMIT = 8.0, 20.0, 2.0


async def at_rest(counter: WireCounter) -> float:
    await asyncio.sleep(SETTLE)  # start-up: indexes, registration, the first passes
    counter.reset()
    await asyncio.sleep(COUNT)
    rate = counter.rate()
    print(f"{rate:.2f} cmds/s", dict(counter.counts.most_common()))
    return rate


async def counter_for(db_url: str) -> WireCounter:
    return await WireCounter(urlsplit(db_url).netloc.rsplit("@", 1)[-1].split(",")[0]).start()


async def test_worker_at_rest(db_url, store):
    counter = await counter_for(db_url)
    proc = start_worker(counter.url(db_url), store.db.name, **DEFAULTS)
    try:
        rate = await at_rest(counter)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        await asyncio.to_thread(stop, proc)
        await counter.stop()
    assert rate <= LIMIT, dict(counter.counts)


async def test_serve_at_rest(db_url, store):
    counter = await counter_for(db_url)
    _, procs = await serve_processes(counter.url(db_url), store.db.name, [0], SWITCHYARD_RUN_RELAY="false", **DEFAULTS)
    try:
        rate = await at_rest(counter)
        assert procs[0].poll() is None, procs[0].stderr.read().decode()[-2000:]
    finally:
        for p in procs:
            await asyncio.to_thread(stop, p)
        await counter.stop()
    assert rate <= LIMIT, dict(counter.counts)
