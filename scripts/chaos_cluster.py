"""The processes one chaos scenario runs: a SecantusDB server started with
`--enable-test-commands` (and `--sync-on-commit`, as the embedded mode runs it), a
`switchyard serve --workers 0`, and `switchyard worker` processes, all with a 2 s lease.

The cluster records every signal it sends and every exit it sees (`events`), so the
ledger checker can clip a run's interval where its process was stopped or killed.
The app's processes connect with `appName=sy-chaos`; the harness's own client with
another name, so an injected `failCommand` (scoped by `appName`) never hits the harness.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import embedded  # noqa: E402
from app.domain.flowsteps import FLOW_ENGINE  # noqa: E402
from app.domain.models import JobSpec  # noqa: E402
from app.domain.retry import RetryConfig  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.store import connect  # noqa: E402

TOKEN = "chaos-admin-token"
APP_NAME = "sy-chaos"
LEASE = 2.0
ENGINE = "chaos"
OPEN = ("pending", "scheduled", "queued", "running")


def libfaketime() -> str:
    """Debian's libfaketime (package `faketime`), or '' when it is not installed."""
    import glob

    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1") + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    return found[0] if found else ""


class Cluster:
    def __init__(self, tmp: Path, name: str, *, limit: int, env: dict | None = None) -> None:
        self.name = name
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ledger = self.dir / "ledger.jsonl"
        self.ledger.touch()
        self.limit = limit
        self.port = embedded.free_port()
        self.db_name = "chaos"
        self.extra_env = env or {}
        self.db: subprocess.Popen | None = None
        self.procs: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.serve_proc: subprocess.Popen | None = None
        self.api: str | None = None
        self.events: list[tuple[float, int, str]] = []  # (time, pid, "SIGKILL" | "SIGSTOP" | "SIGCONT" | "exit")
        self.store = None
        self._n = 0

    # --- database --------------------------------------------------------------------------
    def base_url(self) -> str:
        return embedded.url_for(self.port)

    def app_url(self) -> str:
        return self.base_url() + f"&appName={APP_NAME}"

    def start_db(self) -> float:
        """Start (or restart, on the same data and port) the server; returns seconds taken."""
        t0 = time.monotonic()
        cmd = [
            sys.executable,
            "-m",
            "secantus",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--storage-path",
            str(self.dir / "db"),
            "--sync-on-commit",
            "--enable-test-commands",
            "--log-level",
            "WARNING",
        ]
        log = open(self.dir / "db.log", "ab")
        self.db = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        embedded.wait_ready(self.base_url(), timeout=60, proc=self.db)
        return time.monotonic() - t0

    def kill_db(self) -> None:
        self.db.send_signal(signal.SIGKILL)
        self.db.wait()

    async def open_store(self):
        s = Settings(queue_limits={ENGINE: self.limit}, lease_seconds=LEASE, log_level="WARNING")
        st = connect(self.base_url() + "&appName=chaos-harness", s, db_name=self.db_name)
        await st.start()
        await st.engines.ensure(ENGINE)
        await st.engines.set_limit(ENGINE, self.limit)
        self.store = st
        return st

    async def fail_point(self, mode, data: dict | None = None) -> None:
        await self.store.client.admin.command(
            {"configureFailPoint": "failCommand", "mode": mode, "data": {**(data or {}), "appName": APP_NAME}}
        )

    async def opcounters(self) -> dict:
        return (await self.store.client.admin.command("serverStatus"))["opcounters"]

    # --- app processes ---------------------------------------------------------------------
    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env.update(
            {
                "MONGODB_URL": self.app_url(),
                "MONGODB_DB": self.db_name,
                "SWITCHYARD_ADMIN_TOKEN": TOKEN,
                "SWITCHYARD_LEASE_SECONDS": str(LEASE),
                "SWITCHYARD_SHUTDOWN_GRACE_SECONDS": "3",
                "SWITCHYARD_LOG_LEVEL": "WARNING",
                "SWITCHYARD_QUEUE_LIMITS": json.dumps({ENGINE: self.limit}),
                "SWITCHYARD_DATA_DIR": str(self.dir / "data"),
                "SWITCHYARD_HANDLERS": "chaos_handlers",
                "CHAOS_LEDGER": str(self.ledger),
                "PYTHONPATH": f"{ROOT}:{ROOT / 'scripts'}",
            }
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    def _spawn(self, args: list[str], label: str, prefix: list[str] | None = None, **extra) -> subprocess.Popen:
        self._n += 1
        log = open(self.dir / f"{label}-{self._n}.log", "ab")
        p = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "app.cli", *args],
            cwd=ROOT,
            env=self.env(**extra),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(p)
        return p

    async def serve(self, **extra) -> str:
        port = embedded.free_port()
        self.serve_proc = self._spawn(["serve", "--port", str(port), "--workers", "0"], "serve", **extra)
        self.api = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as c:
            for _ in range(600):
                try:
                    if (await c.get(self.api + "/ready")).status_code == 200:
                        return self.api
                except httpx.HTTPError:
                    pass
                if self.serve_proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        raise RuntimeError(f"serve did not come up (see {self.dir})")

    def worker(self, concurrency: int = 8, skew: float = 0.0, **extra) -> subprocess.Popen:
        if skew:  # libfaketime preloaded into the worker itself, so its pid is the one we signal
            extra.update(LD_PRELOAD=libfaketime(), FAKETIME=f"{skew:+.0f}s", CHAOS_CLOCK_SKEW=str(skew))
        p = self._spawn(["worker", "--concurrency", str(concurrency)], "worker", **extra)
        self.workers.append(p)
        return p

    async def wait_workers(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while await self.store.workers.alive_count() < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {await self.store.workers.alive_count()}/{n} workers registered")
            await asyncio.sleep(0.1)

    def signal(self, proc: subprocess.Popen, sig: signal.Signals) -> float:
        t = time.time()
        self.events.append((t, proc.pid, sig.name))
        proc.send_signal(sig)
        return t

    def reap(self) -> list[subprocess.Popen]:
        """Record the exit of processes that died since the last call; returns them."""
        dead = []
        for p in self.procs:
            if p.poll() is not None and not getattr(p, "_reaped", False):
                p._reaped = True
                self.events.append((time.time(), p.pid, "exit"))
                dead.append(p)
        return dead

    # --- jobs ------------------------------------------------------------------------------
    async def insert(self, n: int, operation: str = "work", retry: RetryConfig | None = None, **params) -> list[str]:
        """Insert `n` jobs directly (the harness's bulk path; acknowledged when this returns)."""
        st = self.store
        docs = [
            st.lifecycle.build(
                JobSpec(engine=ENGINE, operation=operation, parameters=params, retry_config=retry), "chaos"
            )
            for _ in range(n)
        ]
        await st.lifecycle.insert_many(docs)
        return [d["_id"] for d in docs]

    async def any_open(self) -> bool:
        """Whether a job of the engine is unfinished. Queued jobs are looked for the way a
        claimer does (a seq window from the band's cursor), the few others by status. On
        SecantusDB a query fetches every document its index range matches before it
        applies `limit`: `find_one({engine, status: "queued"})` on a 4,000-job queue held
        the server's lock for 30 s, and a count is no better."""
        if await self.store.claimer.peek(await self.store.engines.get(ENGINE), 1):
            return True
        col = self.store.jobs.col
        for s in OPEN:
            if s != "queued" and await col.find_one({"engine": ENGINE, "status": s}, {"_id": 1}):
                return True
        return False

    async def wait_settled(self, timeout: float, ids: list[str] | None = None) -> float:
        """Wait until no job of the engine is unfinished; returns seconds waited (or the
        timeout when some are still open). The exact check runs every second once the
        engine's `queued` counter says the queue is empty, and every 5 s before."""
        t0 = time.monotonic()
        exact_at = shown = 0.0
        while time.monotonic() - t0 < timeout:
            queued = (await self.store.engines.get(ENGINE)).get("queued", 0)
            now = time.monotonic()
            if now - shown >= 10:  # progress, for long drains
                shown = now
                print(f"    {now - t0:5.0f} s: {queued} queued", file=sys.stderr, flush=True)
            if (queued <= 0 and now - exact_at >= 1) or now - exact_at >= 5:
                exact_at = now
                if not await self.any_open():
                    return time.monotonic() - t0
            self.reap()
            await asyncio.sleep(0.25)
        return timeout

    async def docs(self, ids: list[str] | None = None, projection: dict | None = None) -> list[dict]:
        col = self.store.jobs.col
        if ids is None:  # the scenario's jobs, and its workflows' steps that run no handler
            return await col.find({"engine": {"$in": [ENGINE, FLOW_ENGINE]}}, projection).to_list(None)
        out = []
        for i in range(0, len(ids), 1000):
            out += await col.find({"_id": {"$in": ids[i : i + 1000]}}, projection).to_list(None)
        return out

    # --- teardown --------------------------------------------------------------------------
    async def stop_all(self, grace: float = 15) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                p.kill()
                p.wait()
        self.reap()

    async def close(self, keep: bool = False) -> None:
        await self.stop_all()
        if self.store is not None:
            try:
                await self.store.client.close()
            except Exception:
                pass
        if self.db is not None and self.db.poll() is None:
            self.db.terminate()
            try:
                self.db.wait(15)
            except subprocess.TimeoutExpired:
                self.db.kill()
        if not keep:
            shutil.rmtree(self.dir / "db", ignore_errors=True)


async def running_owners(cl: Cluster) -> dict[int, int]:
    """{pid: running jobs it holds}, from the leases and the worker registry."""
    pids = {w["_id"]: w["pid"] for w in await cl.store.workers.list()}
    out: dict[int, int] = {}
    for d in await cl.store.jobs.col.find({"engine": ENGINE, "status": "running"}, {"lease_owner": 1}).to_list(None):
        pid = pids.get(d.get("lease_owner"))
        if pid:
            out[pid] = out.get(pid, 0) + 1
    return out
