"""Real processes for tests: `switchyard worker` and `switchyard serve` subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def env_for(url: str | None, db: str | None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MONGODB_URL", None)
    if url:
        env["MONGODB_URL"] = url
    if db:
        env["MONGODB_DB"] = db
    env.update(
        {
            "SWITCHYARD_LEASE_SECONDS": "2",
            "SWITCHYARD_POLL_INTERVAL_SECONDS": "0.5",
            "SWITCHYARD_PROMOTE_INTERVAL_SECONDS": "0.1",
            "SWITCHYARD_SHUTDOWN_GRACE_SECONDS": "2",
            "SWITCHYARD_RETRY_DELAY_SECONDS": "0.05",
            "SWITCHYARD_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra)
    return env


def start_worker(
    url: str, db: str, *, concurrency: int = 4, engines: str | None = None, **extra: str
) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "app.cli",
        "worker",
        "--concurrency",
        str(concurrency),
        "--handlers",
        "tests.support_handlers",
    ]
    if engines:
        cmd += ["--engines", engines]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env_for(url, db, **extra), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
