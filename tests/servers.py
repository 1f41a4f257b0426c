"""Real servers for tests: the app on uvicorn in this process, and `switchyard serve`
subprocesses on a test's database."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from contextlib import asynccontextmanager

import httpx
import uvicorn

from app.embedded import free_port
from tests.helpers import eventually
from tests.procs import ROOT, env_for

__all__ = ["free_port", "uvicorn_app", "serve_processes"]


@asynccontextmanager
async def uvicorn_app(app):
    """Serve `app` (lifespan included) on a free port; yields `host:port`."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    task = asyncio.create_task(srv.serve())

    async def started():
        return srv.started

    await eventually(started, timeout=20)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, 20)


async def serve_processes(
    db_url: str, db: str, workers: list[int], **env: str
) -> tuple[list[int], list[subprocess.Popen]]:
    """One `switchyard serve` per entry of `workers` (its in-process slots), ready to serve."""
    ports = [free_port() for _ in workers]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--port",
                str(port),
                "--workers",
                str(n),
                "--handlers",
                "tests.support_handlers",
            ],
            cwd=ROOT,
            env=env_for(db_url, db, **env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port, n in zip(ports, workers, strict=True)
    ]
    for port, proc in zip(ports, procs, strict=True):

        async def ready(port=port, proc=proc):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await eventually(ready, timeout=60, interval=0.2)
    return ports, procs
