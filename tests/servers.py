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
        done, _ = await asyncio.wait([task], timeout=20)
        if not done:  # name what is stuck: each live task's stack, then fail
            stacks = "\n".join(_stack(t) for t in asyncio.all_tasks() if t is not asyncio.current_task())
            task.cancel()
            raise AssertionError(f"the app did not shut down within 20 s; live tasks:\n{stacks}")
        task.result()


def _stack(task: asyncio.Task) -> str:
    """Where `task` waits: its coroutine and each one it awaits in turn."""
    lines, coro = [f"--- {task.get_name()}"], task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
    return "\n".join(lines)


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
