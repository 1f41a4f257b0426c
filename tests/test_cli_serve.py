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
    return subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", str(workers)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


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
        done = [client.post("/api/v1/jobs/submit", json={"engine": "general", "operation": "echo", "parameters": {"i": i}}).json()["id"]
                for i in range(10)]
        wait_jobs(client, done, "completed")
        client.post("/api/v1/jobs/queue/text_intelligence/pause")
        kept = [client.post("/api/v1/jobs/submit", json={"engine": "text_intelligence", "operation": "analyze",
                                                         "parameters": {"text": f"Job number {i}. It waits."}}).json()["id"]
                for i in range(30)]
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
        worker = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--concurrency", "3"], cwd=ROOT,
                                  env=env_for(None, None, SWITCHYARD_DATA_DIR=str(data)),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client.post("/api/v1/jobs/queue/text_intelligence/resume")
        wait_jobs(client, kept, "completed", timeout=90)
        result = client.get(f"/api/v1/jobs/{kept[0]}/status").json()["result"]
        assert result["words"] == 5 and result["sentences"] == 2
    finally:
        if worker is not None:
            stop(worker)
        assert stop(serve) == 0
    assert not (data / "server.json").exists()  # serve stopped its database on the way out
