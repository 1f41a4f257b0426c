"""The supervisor of `switchyard serve`: its job slots run in worker processes (the same
code as `switchyard worker`), so a handler that kills its process (`os._exit`, a segfault,
the OOM killer) costs that process, never the API.

Invariants:
- A child that exits while `serve` is not stopping is restarted after a back-off:
  exponential from `BACKOFF_BASE` seconds, capped at `BACKOFF_CAP`, and reset once a child
  has run `BACKOFF_RESET` seconds. A crash loop costs a restart every half minute at most.
- Its registration is marked dead and its leases handed back at once (`hand_back`): the
  process is gone, so no stale write can follow, and its neighbours' jobs need not wait a
  lease. An attempt whose handler had started is charged, as the rescuer would.
- No child outlives `serve`: each is in a session of its own (a Ctrl-C reaches `serve`
  alone, which stops them), gets SIGTERM when `serve` dies (`die_with_parent`), and watches
  its parent's pid itself (`watch_parent`), exiting hard when a graceful stop takes too long.

The supervisor keeps a record in the `workers` collection (app/store/workers.py):
`restarts`, `restarting`, `last_exit`; `store.workers.summary()` reads it for /health.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
import uuid
from datetime import timedelta

from ..embedded import die_with_parent
from ..logs import get_logger
from ..tasks import halt

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
BACKOFF_RESET = 60.0

log = get_logger("switchyard.supervisor")


def backoff(failures: int) -> float:
    """Seconds before restart number `failures` (1 = the first quick death in a row)."""
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1))


async def hand_back(store, pid: int, since) -> tuple[list[str], int]:
    """Process `pid` (on this host, registered since `since`) is known to be gone: mark its
    registrations dead, return their permits and requeue (or fail) their running jobs now.
    Returns (worker ids, jobs moved)."""
    now = await store.clock.sync()
    ids, moved = [], 0
    for doc in await store.workers.exited(pid, since):
        ids.append(doc["_id"])
        await store.engines.drop_holds(doc["_id"])
        for job in await store.jobs.leased_by(doc["_id"]):
            if await store.lifecycle.rescue(job, now):
                moved += 1
    return ids, moved


def watch_parent(parent: int, on_gone, hard_after: float) -> None:
    """In a child: when `parent` is gone, call `on_gone` (a graceful stop), and exit hard
    `hard_after` seconds later should that stop hang (its database may be gone too)."""

    def run() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        on_gone()
        time.sleep(hard_after)
        os._exit(3)

    threading.Thread(target=run, name="watch-parent", daemon=True).start()


class Supervisor:
    def __init__(self, settings, url: str, *, slots: int, processes: int = 1, handlers: str | None = None) -> None:
        self.settings = settings
        self.url = url
        self.id = "s" + uuid.uuid4().hex[:15]
        processes = max(1, min(processes, slots))
        self.shares = [slots // processes + (1 if i < slots % processes else 0) for i in range(processes)]
        self.handlers = handlers
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.restarting = 0
        self.stopping = False
        self.store = None
        self._tasks: list[asyncio.Task] = []

    def command(self, concurrency: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "app.cli",
            "worker",
            "--concurrency",
            str(concurrency),
            "--supervisor",
            self.id,
            "--parent-pid",
            str(os.getpid()),
        ]
        return cmd + (["--handlers", self.handlers] if self.handlers else [])

    async def start(self, store) -> None:
        self.store = store
        await store.workers.supervise(self.id, processes=len(self.shares), concurrency=sum(self.shares))
        self._tasks = [asyncio.create_task(self._keep(i, n), name=f"supervise-{i}") for i, n in enumerate(self.shares)]
        self._tasks.append(asyncio.create_task(self._beat_loop(), name="supervisor-beat"))

    async def _keep(self, slot: int, concurrency: int) -> None:
        env = {**os.environ, "MONGODB_URL": self.url}
        failures = 0
        while not self.stopping:
            since = self.store.clock.now() - timedelta(seconds=5)  # the database clock, with slack
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                *self.command(concurrency), env=env, start_new_session=True, preexec_fn=die_with_parent()
            )
            self.children[slot] = proc
            await self._beat()
            code = await proc.wait()
            self.children.pop(slot, None)
            if self.stopping:
                return
            ran = time.monotonic() - started
            failures = 1 if ran >= BACKOFF_RESET else failures + 1
            delay = backoff(failures)
            self.restarting += 1
            try:
                try:
                    workers, moved = await hand_back(self.store, proc.pid, since)
                except Exception as exc:  # the rescuer gets them after a lease instead
                    workers, moved = [], 0
                    log.warning("supervisor.hand_back_failed", pid=proc.pid, error=repr(exc))
                log.error(
                    "supervisor.worker_exited",
                    pid=proc.pid,
                    code=code,
                    ran_s=round(ran, 1),
                    workers=workers,
                    jobs_handed_back=moved,
                    restart_in_s=delay,
                )
                await self._beat({"pid": proc.pid, "code": code, "ran_s": round(ran, 1)})
                await asyncio.sleep(delay)
            finally:
                self.restarting -= 1

    async def _beat(self, exit_: dict | None = None) -> None:
        try:
            await self.store.workers.supervisor_beat(
                self.id, children=[p.pid for p in self.children.values()], restarting=self.restarting, exit_=exit_
            )
        except Exception as exc:
            log.warning("supervisor.beat_failed", error=repr(exc))

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            await self._beat()

    async def stop(self) -> None:
        """SIGTERM every child (each hands its jobs back within the shutdown grace), SIGKILL
        those still running after it, then close the record."""
        self.stopping = True
        procs = list(self.children.values())
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 5
        for p in procs:
            try:
                await asyncio.wait_for(p.wait(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                p.kill()
                await p.wait()
        await halt(self._tasks)
        try:
            await self.store.workers.unsupervise(self.id)
        except Exception as exc:
            log.warning("supervisor.unsupervise_failed", error=repr(exc))
