"""`app.client` against a real `switchyard serve` process (on the session's database server):
submit, wait, cancel, workflows, the dead letter, errors as `SwitchyardAPIError`, and the
Server-Sent Events streams, including a resume with `Last-Event-ID` after the connection
drops mid-stream. The sync client runs in a thread so the async tests' loop stays free."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from app.client import AsyncSwitchyardClient, Event, SSEParser, SwitchyardAPIError, SwitchyardClient
from app.embedded import free_port
from tests.procs import ROOT, env_for, stop

TOKEN = "client-token"


def start_server(db_url: str, data_dir, **env) -> tuple[subprocess.Popen, str]:
    """`switchyard serve` on a free port and a database of its own; returns (process, url)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "4",
            "--handlers",
            "tests.support_handlers",
        ],
        cwd=ROOT,
        env=env_for(
            db_url,
            f"t_{uuid.uuid4().hex[:12]}",
            SWITCHYARD_ADMIN_TOKEN=TOKEN,
            SWITCHYARD_DATA_DIR=str(data_dir),
            SWITCHYARD_QUEUE_LIMITS='{"general": 8, "testing": 8}',
            **env,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise AssertionError("serve did not come up")


@pytest.fixture(scope="module")
def server(db_url, tmp_path_factory):
    proc, url = start_server(db_url, tmp_path_factory.mktemp("client"))
    yield url
    stop(proc)


@pytest.fixture
def client(server):
    with SwitchyardClient(server, TOKEN, timeout=10) as c:
        yield c


def sleep_job(seconds=0.6, steps=3, **kw):
    return {"engine": "general", "operation": "sleep", "parameters": {"seconds": seconds, "steps": steps}, **kw}


def test_submit_wait_and_status(client):
    job = client.submit({"engine": "general", "operation": "echo", "parameters": {"x": 1}})
    assert job["status"] in ("queued", "running", "completed") and len(job["id"]) == 24
    done = client.wait(job["id"], timeout=30)
    assert done["status"] == "completed" and done["result"] == {"echo": {"x": 1}}
    assert client.status(job["id"])["result"] == {"echo": {"x": 1}}
    assert job["id"] in [j["id"] for j in client.jobs(engine="general", limit=100)["jobs"]]


def test_submit_accepts_a_job_spec_model(client):
    from app.domain.models import JobSpec

    job = client.submit(JobSpec(engine="general", operation="echo", parameters={"y": 2}))
    assert client.wait(job["id"], timeout=30)["result"] == {"echo": {"y": 2}}


def test_wait_times_out(client):
    job = client.submit(sleep_job(seconds=5, steps=1))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        client.wait(job["id"], timeout=0.5)
    assert time.monotonic() - started < 3
    assert client.cancel(job["id"])["id"] == job["id"]
    assert client.wait(job["id"], timeout=30)["status"] == "cancelled"


def test_workflow_submit_wait_and_status(client):
    wf = client.submit_workflow(
        {
            "name": "pair",
            "jobs": [
                {"key": "a", "engine": "testing", "operation": "collect", "parameters": {"value": 1}},
                {"key": "b", "engine": "testing", "operation": "collect", "depends_on": ["a"]},
            ],
        }
    )
    assert set(wf["jobs"]) == {"a", "b"}
    done = client.wait_workflow(wf["id"], timeout=30)
    assert done["status"] == "completed" and done["progress"] == 100
    assert client.status(wf["jobs"]["b"])["result"]["parents"] == {"a": {"value": 1, "parents": {}, "n_parents": 0}}


def test_api_errors_carry_status_code_message_and_field(client, server):
    with pytest.raises(SwitchyardAPIError) as exc:
        client.submit({"engine": "general", "operation": "echo", "priority": 11})
    assert exc.value.status == 422 and exc.value.code == "validation_error" and exc.value.field == "priority"
    assert exc.value.details["errors"][0]["field"] == "priority"
    with pytest.raises(SwitchyardAPIError) as exc:
        client.status("0123456789abcdef01234567")
    assert exc.value.status == 404 and exc.value.code == "not_found" and exc.value.field == "job_id"
    with SwitchyardClient(server, "wrong") as bad, pytest.raises(SwitchyardAPIError) as exc:
        bad.queues()
    assert exc.value.status == 401 and exc.value.code == "unauthorized"


def test_dead_letter_and_retries(client):
    job = client.submit(
        {"engine": "general", "operation": "fail", "parameters": {"code": "no_luck", "permanent": True}}
    )
    assert client.wait(job["id"], timeout=30)["status"] == "failed"
    page = client.dead_letter(error_code="no_luck")
    assert job["id"] in [j["id"] for j in page["jobs"]]
    again = client.retry(job["id"])
    assert again["status"] in ("queued", "running", "failed") and again["attempt"] in (0, 1)
    assert client.wait(job["id"], timeout=30)["status"] == "failed"
    with pytest.raises(SwitchyardAPIError) as exc:
        client.retry(client.wait(client.submit({"engine": "general", "operation": "noop"})["id"], 30)["id"])
    assert exc.value.status == 409 and exc.value.code == "invalid_transition"
    assert client.retry_failed(error_code="no_luck", limit=5)["retried"] == 1
    assert client.reset_stuck(dry_run=True)["dry_run"] is True


def test_queues_and_workers(client):
    names = {q["name"] for q in client.queues()}
    assert {"general", "testing"} <= names
    alive = client.workers(status="alive")
    assert alive and alive[0]["kind"] == "serve" and alive[0]["concurrency"] == 4


# --- events ------------------------------------------------------------------------------
def test_sse_parser_follows_the_format():
    p = SSEParser()
    lines = [
        ": keep-alive",
        "",
        "id: 7",
        "event: job.running",
        'data: {"a":',
        "data: 1}",
        "",
        "event: final",
        "data: plain",
        "",
    ]
    events = [e for e in map(p.feed, lines) if e]
    assert events == [Event(7, "job.running", {"a": 1}), Event(None, "final", "plain")]  # data lines joined


def test_stream_events_of_a_job_until_it_finishes(client):
    job = client.submit(sleep_job())
    events = list(client.stream_events(job_id=job["id"]))
    types = [e.type for e in events]
    assert types[0] == "connected" and types[-1] == "final" and "job.completed" in types
    assert "job.progress" in types
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert events[-1].data["status"] == "completed" and events[-1].data["result"] == {"slept": 0.6}
    # Last-Event-ID: only what came after it
    later = [e for e in client.stream_events(job_id=job["id"], last_event_id=ids[0]) if e.id is not None]
    assert [e.id for e in later] == ids[1:]


class DropAfter(httpx.HTTPTransport):
    """A real HTTP transport that cuts the first events stream after `n` events, the way
    a proxy or a network blip would; later connections pass untouched."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.requests = n, []

    def handle_request(self, request):
        self.requests.append(dict(request.headers))
        resp = super().handle_request(request)
        if not request.url.path.endswith("/events") or len(self.requests) > 1:
            return resp
        inner, n = resp.stream, self.n

        class Cut(httpx.SyncByteStream):
            def __iter__(self):
                seen = 0
                for chunk in inner:
                    yield chunk
                    seen += chunk.count(b"\n\nid: ") + chunk.startswith(b"id: ")
                    if seen >= n:
                        raise httpx.ReadError("connection reset")

            def close(self):
                inner.close()

        return httpx.Response(resp.status_code, headers=resp.headers, stream=Cut(), extensions=resp.extensions)


def test_stream_resumes_with_last_event_id_after_a_drop(server):
    with SwitchyardClient(server, TOKEN) as plain:
        job = plain.submit(sleep_job(seconds=1.5, steps=5))
        plain.wait(job["id"], timeout=30)
        everything = [e.id for e in plain.stream_events(job_id=job["id"]) if e.id is not None]
    assert len(everything) >= 5
    cut = DropAfter(2)
    with SwitchyardClient(server, TOKEN, transport=cut) as c:
        got = [e for e in c.stream_events(job_id=job["id"])]
    assert [e.id for e in got if e.id is not None] == everything  # nothing lost, nothing twice
    assert got[-1].type == "final" and len(cut.requests) == 2
    assert "last-event-id" not in cut.requests[0] and int(cut.requests[1]["last-event-id"]) == everything[1]


def test_stream_of_a_workflow_ends_with_it(client):
    wf = client.submit_workflow({"name": "one", "jobs": [{"key": "a", **sleep_job(0.3, 1)}]})
    events = list(client.stream_events(workflow_id=wf["id"]))
    types = [e.type for e in events]
    assert "workflow.completed" in types and types[-1] == "final" and "job.completed" in types


def test_stream_of_an_unknown_job_raises(client):
    with pytest.raises(SwitchyardAPIError) as exc:
        next(iter(client.stream_events(job_id="0123456789abcdef01234567")))
    assert exc.value.status == 404
    with pytest.raises(ValueError):
        next(iter(client.stream_events()))


# --- async -------------------------------------------------------------------------------
async def test_async_client(server):
    async with AsyncSwitchyardClient(server, TOKEN, timeout=10) as c:
        jobs = await asyncio.gather(
            *(c.submit({"engine": "general", "operation": "echo", "parameters": {"i": i}}) for i in range(5))
        )
        done = await asyncio.gather(*(c.wait(j["id"], timeout=30) for j in jobs))
        assert [d["result"]["echo"]["i"] for d in done] == list(range(5))
        job = await c.submit(sleep_job())
        events = [e async for e in c.stream_events(job_id=job["id"])]
        assert events[-1].type == "final" and events[-1].data["status"] == "completed"
        with pytest.raises(SwitchyardAPIError) as exc:
            await c.workflow_status("0123456789abcdef01234567")
        assert exc.value.status == 404 and exc.value.field == "workflow_id"
        assert any(q["name"] == "general" for q in await c.queues())
