"""`switchyard serve` and `switchyard worker` as real processes on the embedded server:
start-up, the recorded URL, durability of accepted jobs across a crash, and data reuse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from app.embedded import free_port
from tests.procs import ROOT, env_for, stop

TOKEN = "cli-token"


def start_serve(data_dir, port: int, workers: int = 2) -> subprocess.Popen:
    env = env_for(None, None, SWITCHYARD_DATA_DIR=str(data_dir), SWITCHYARD_ADMIN_TOKEN=TOKEN)
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 60) -> httpx.Client:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if client.get("/health").status_code == 200:
                return client
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not come up")


def wait_jobs(client: httpx.Client, ids, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending and time.monotonic() < deadline:
        pending = {i for i in pending if client.get(f"/api/v1/jobs/{i}/status").json()["status"] != status}
        time.sleep(0.1)
    assert not pending, f"{len(pending)} jobs not {status}"


@pytest.mark.skipif(bool(os.environ.get("MONGODB_URL")), reason="exercises the embedded server")
def test_serve_records_survives_a_crash_and_a_worker_joins(tmp_path):
    data = tmp_path / "data"
    port = free_port()
    serve = start_serve(data, port)
    try:
        client = wait_http(port, serve)
        record = json.loads((data / "server.json").read_text())
        assert record["url"].startswith("mongodb://127.0.0.1:")
        done = [
            client.post(
                "/api/v1/jobs/submit", json={"engine": "general", "operation": "echo", "parameters": {"i": i}}
            ).json()["id"]
            for i in range(10)
        ]
        wait_jobs(client, done, "completed")
        client.post("/api/v1/jobs/queue/text_intelligence/pause")
        kept = [
            client.post(
                "/api/v1/jobs/submit",
                json={
                    "engine": "text_intelligence",
                    "operation": "analyze",
                    "parameters": {"text": f"Job number {i}. It waits."},
                },
            ).json()["id"]
            for i in range(30)
        ]
        # crash everything: the database server and the API process, without warning
        os.kill(record["pid"], signal.SIGKILL)
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
    finally:
        stop(serve)

    serve = start_serve(data, port, workers=0)
    worker = None
    try:
        client = wait_http(port, serve)
        assert json.loads((data / "server.json").read_text())["pid"] != record["pid"]  # a new server, same data
        for i in done:
            assert client.get(f"/api/v1/jobs/{i}/status").json()["status"] == "completed"
        statuses = {client.get(f"/api/v1/jobs/{i}/status").json()["status"] for i in kept}
        assert statuses == {"queued"}  # every acknowledged job survived the crash
        # a separate worker finds the server through the recorded URL
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", "3"],
            cwd=ROOT,
            env=env_for(None, None, SWITCHYARD_DATA_DIR=str(data)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        client.post("/api/v1/jobs/queue/text_intelligence/resume")
        wait_jobs(client, kept, "completed", timeout=90)
        result = client.get(f"/api/v1/jobs/{kept[0]}/status").json()["result"]
        assert result["words"] == 5 and result["sentences"] == 2
    finally:
        if worker is not None:
            stop(worker)
        assert stop(serve) == 0
    assert not (data / "server.json").exists()  # serve stopped its database on the way out


# --- a crashing handler, SIGKILL, handler modules and the port (issue 19) ---------------------
CRASHER = """
import os
from app import handler


@handler(engine="crashy", operation="die")
async def die(ctx):
    os._exit(1)


@handler(engine="crashy", operation="ok")
async def ok(ctx):
    return {"ok": True}
"""
SWITCHYARD = [os.path.join(os.path.dirname(sys.executable), "switchyard")]  # the console script, as scripts/run


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def serve_in(cwd, data_dir, port: int, *args: str, cmd=None, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*(cmd or [sys.executable, "-m", "app.cli"]), "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env_for(None, None, SWITCHYARD_DATA_DIR=str(data_dir), SWITCHYARD_ADMIN_TOKEN=TOKEN, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.skipif(bool(os.environ.get("MONGODB_URL")), reason="exercises the embedded server")
def test_a_crashing_handler_leaves_the_api_up_and_a_sigkill_leaves_no_child(tmp_path):
    (tmp_path / "crashers.py").write_text(CRASHER)
    port = free_port()
    serve = serve_in(tmp_path, tmp_path / "data", port, "--workers", "2", "--handlers", "crashers")
    try:
        client = wait_http(port, serve)
        job = client.post(
            "/api/v1/jobs/submit",
            json={
                "engine": "crashy",
                "operation": "die",
                "retry_config": {"max_retries": 2, "retry_delay_seconds": 0.1},
            },
        ).json()["id"]
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline:
            assert client.get("/health").status_code == 200  # throughout
            doc = client.get(f"/api/v1/jobs/{job}/status").json()
            if (status := doc["status"]) == "failed":
                break
            time.sleep(0.2)
        assert status == "failed" and doc["attempt"] == 3
        assert serve.poll() is None
        # its worker process was restarted and works
        ok = client.post("/api/v1/jobs/submit", json={"engine": "crashy", "operation": "ok"}).json()["id"]
        wait_jobs(client, [ok], "completed", timeout=30)
        workers = client.get("/api/v1/jobs/workers").json()["workers"]
        assert {w["status"] for w in workers} == {"alive", "dead"}  # the dead one marked at once, the new one alive
        assert all(w["pid"] != serve.pid for w in workers)  # the slots ran outside the API process
        health = client.get("/health").json()["workers"]  # and /health says so
        assert health["restarts"] >= 1 and health["dead"] >= 1 and health["last_exit"]["code"] != 0

        children = descendants(serve.pid)
        assert len(children) >= 2  # the embedded database and a worker at least
        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        deadline = time.monotonic() + 20  # the worker's grace (2 s) + 5 s, with room
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in children if alive(p)]
    finally:
        stop(serve)


def test_handler_modules_come_from_the_current_directory(tmp_path):
    (tmp_path / "my_handlers.py").write_text(CRASHER)
    port = free_port()
    serve = serve_in(tmp_path, tmp_path / "data", port, "--workers", "1", "--handlers", "my_handlers", cmd=SWITCHYARD)
    try:
        client = wait_http(port, serve)
        ok = client.post("/api/v1/jobs/submit", json={"engine": "crashy", "operation": "ok"}).json()["id"]
        wait_jobs(client, [ok], "completed", timeout=30)  # the worker process found it too
    finally:
        assert stop(serve) == 0


def test_a_handler_module_that_cannot_be_imported_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_module_anywhere\n")
    for name in ("missing_module", "broken"):
        out = subprocess.run(
            [*SWITCHYARD, "serve", "--port", str(free_port()), "--handlers", name],
            cwd=tmp_path,
            env=env_for(None, None, SWITCHYARD_DATA_DIR=str(tmp_path / "data")),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "server.json").exists()  # nothing was started


def test_the_start_line_only_once_listening_and_a_taken_port_is_refused(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env_for(None, None, SWITCHYARD_DATA_DIR=str(tmp_path / "data")),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode != 0
    assert "Switchyard on" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(port) in lines[0] and "Traceback" not in out.stderr

    port = free_port()
    serve = serve_in(tmp_path, tmp_path / "data", port, "--workers", "0")
    try:
        seen = b""
        while b"Switchyard on" not in seen:
            line = serve.stderr.readline()
            assert line, f"serve exited: {seen.decode()[-2000:]}"
            seen += line
        # printed only once the port answers
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        assert stop(serve) == 0


async def test_the_listening_socket_serves_connections_without_nagle():
    """asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP; a socket
    made with proto 0 left every response waiting ~40 ms for the client's delayed ACK."""
    import asyncio
    import socket

    from app.cli import _bind

    sock = _bind("127.0.0.1", free_port())
    sock.listen()
    accepted = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport):
            accepted.set_result(transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    try:
        _, writer = await asyncio.open_connection(*sock.getsockname())
        assert await asyncio.wait_for(accepted, 5) != 0
        writer.close()
    finally:
        server.close()
