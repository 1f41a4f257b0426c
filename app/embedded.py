"""The embedded database server: SecantusDB run as a child process (it is GPL-2.0, so we
only ever talk to it over the wire).

`serve` without `MONGODB_URL` starts it with `--sync-on-commit`, so an acknowledged job
survives a crash of the server, stores its data under `SWITCHYARD_DATA_DIR/db`, and records
the URL in `SWITCHYARD_DATA_DIR/server.json`, where `switchyard worker` finds it. A second
`serve` on the same data directory joins the running server instead of starting another.
The server `serve` starts dies with it, even by SIGKILL (`die_with_parent`, on Linux).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .store.db import answers_ping


def die_with_parent(sig: int = signal.SIGTERM):
    """A `preexec_fn`: the child gets `sig` when the process that starts it dies (Linux's
    PR_SET_PDEATHSIG; elsewhere a no-op), and exits at once should that have happened
    before it could ask. Call it in the thread that lives as long as the parent."""
    parent = os.getpid()
    prctl = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork

    def preexec() -> None:
        if prctl is not None:
            prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_for(port: int) -> str:
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def wait_ready(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"embedded database exited with code {proc.returncode}")
        if answers_ping(url):
            return
        time.sleep(0.1)
    raise RuntimeError(f"embedded database at {url} did not answer within {timeout:g}s")


@dataclass
class EmbeddedServer:
    url: str
    proc: subprocess.Popen | None  # None when we joined a server another process owns
    record: Path | None = None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.record is not None and self.record.exists():
            self.record.unlink()


def spawn(
    storage: str,
    *,
    port: int | None = None,
    extra: list[str] | None = None,
    log: Path | None = None,
    with_parent: bool = False,
) -> EmbeddedServer:
    """Start a SecantusDB process; `storage` is a directory or ':memory:'. `with_parent`:
    it dies with this process."""
    port = port or free_port()
    cmd = [
        sys.executable,
        "-m",
        "secantus",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        storage,
        "--sync-on-commit",
        "--log-level",
        "WARNING",
        *(extra or []),
    ]
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent() if with_parent else None,
    )
    url = url_for(port)
    try:
        wait_ready(url, proc=proc)
    except Exception:
        proc.kill()
        raise
    return EmbeddedServer(url, proc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def recorded_url(data_dir: Path) -> str | None:
    """The URL a running `serve` recorded in `data_dir`, if that server is still up."""
    record = data_dir / "server.json"
    if not record.exists():
        return None
    try:
        info = json.loads(record.read_text())
    except ValueError:
        return None
    if not _alive(int(info.get("pid", 0))):
        return None
    return info["url"]


def start_or_join(data_dir: Path) -> EmbeddedServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    url = recorded_url(data_dir)
    if url:
        try:
            wait_ready(url, timeout=3)
            return EmbeddedServer(url, None)
        except RuntimeError:
            pass
    server = spawn(str(data_dir / "db"), log=data_dir / "db.log", with_parent=True)
    record = data_dir / "server.json"
    record.write_text(json.dumps({"url": server.url, "pid": server.proc.pid, "started": time.time()}))
    server.record = record
    return server
