"""Structured logs of real job runs: JSON lines, every line about a job carries job_id,
workflow_id, engine and attempt (also what a handler logs itself), level from settings."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog
from pydantic import ValidationError

from app import JobContext, handler, logs
from app.domain.retry import RetryConfig
from app.domain.workflow import WorkflowSpec
from app.logs import get_logger
from tests.conftest import make_settings
from tests.helpers import wait_status
from tests.procs import start_worker, stop

JOB_FIELDS = ("job_id", "workflow_id", "engine", "attempt")


@handler(engine="testing", operation="chatty")
async def chatty(ctx: JobContext) -> dict:
    """Logs through structlog and through the standard library, as handler code does."""
    get_logger("my.handler").info("handler.step", n=1)
    logging.getLogger("some.library").warning("library says %s", "hi")
    return {}


def job_lines(lines: list[dict], job_id: str) -> list[dict]:
    return [line for line in lines if line.get("job_id") == job_id]


def assert_job_fields(line: dict) -> None:
    missing = [k for k in JOB_FIELDS if k not in line]
    assert not missing, f"{line} lacks {missing}"
    assert isinstance(line["attempt"], int) and line["attempt"] >= 1 and line["engine"]


async def test_a_worker_process_logs_json_lines_with_the_job_fields(db_url, store, jobs):
    ok = await jobs.queued(operation="ok")
    flaky = await jobs.queued(
        operation="flaky",
        parameters={"succeed_on": 2},
        retry_config=RetryConfig(max_retries=2, retry_delay_seconds=0.01),
    )
    bad = await jobs.queued(operation="permanent")
    wf = await store.workflows.create(
        WorkflowSpec(
            name="w",
            jobs=[
                {"key": "a", "engine": "testing", "operation": "ok"},
                {"key": "b", "engine": "testing", "operation": "ok", "depends_on": ["a"]},
            ],
        ),
        owner="admin",
    )
    step_b = wf["steps"]["b"]["job_id"]
    proc = start_worker(db_url, store.db.name, SWITCHYARD_LOG_LEVEL="INFO")
    try:
        for j in (ok["_id"], flaky["_id"], step_b):
            await wait_status(store, j, "completed", timeout=60)
        await wait_status(store, bad["_id"], "failed", timeout=30)
    finally:
        assert stop(proc) == 0
    text = proc.stderr.read().decode().splitlines()
    banner = [t for t in text if not t.startswith("{")]
    assert len(banner) == 1 and banner[0].startswith("worker w")  # the CLI's start-up line; the rest is JSON
    lines = [json.loads(t) for t in text if t.startswith("{")]
    assert all({"event", "level", "timestamp"} <= set(line) for line in lines)
    assert {line["level"] for line in lines} <= {"info", "warning", "error"}  # INFO from the environment: no debug

    about_jobs = [line for line in lines if "job_id" in line or line["event"].startswith("job.")]
    assert len(about_jobs) >= 12
    for line in about_jobs:
        assert_job_fields(line)

    events = [(line["event"], line["attempt"]) for line in job_lines(lines, flaky["_id"])]
    assert ("job.started", 1) in events and ("job.handler_error", 1) in events and ("job.finished", 2) in events
    assert [line["status"] for line in job_lines(lines, flaky["_id"]) if line["event"] == "job.finished"] == [
        "scheduled",
        "completed",
    ]
    failed = [line for line in job_lines(lines, bad["_id"]) if line["event"] == "job.finished"]
    assert failed[0]["status"] == "failed" and failed[0]["engine"] == "testing" and failed[0]["workflow_id"] is None
    step_lines = job_lines(lines, step_b)
    assert step_lines and all(line["workflow_id"] == wf["_id"] for line in step_lines)


@pytest.fixture
def captured():
    """Logging configured as the CLI does, into a buffer; the previous set-up restored after."""
    saved_structlog, root = structlog.get_config(), logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    buf = io.StringIO()
    yield buf
    structlog.configure(**saved_structlog)
    root.handlers, root.level = saved_root[0], saved_root[1]


def parse(buf: io.StringIO) -> list[dict]:
    return [json.loads(t) for t in buf.getvalue().splitlines()]


async def test_what_a_handler_logs_carries_the_job_fields(captured, worker, jobs, store):
    logs.configure("INFO", stream=captured)
    job = await jobs.queued(operation="chatty")
    await wait_status(store, job["_id"], "completed")
    lines = job_lines(parse(captured), job["_id"])  # every line is JSON, or parse fails
    mine = {line["event"]: line for line in lines}
    assert {"job.started", "handler.step", "library says hi", "job.finished"} <= set(mine)
    for line in lines:
        assert_job_fields(line)
        assert line["engine"] == "testing" and line["attempt"] == 1 and line["worker"] == worker.worker_id
    assert mine["library says hi"]["logger"] == "some.library" and mine["library says hi"]["level"] == "warning"


async def test_the_level_comes_from_settings(captured, worker, jobs, store):
    with pytest.raises(ValidationError):
        make_settings(log_level="loud")
    s = make_settings(log_level="warning")
    logs.configure(s.log_level, s.log_json, stream=captured)  # as the CLI does with its settings
    job = await jobs.queued(operation="chatty")
    await wait_status(store, job["_id"], "completed")
    lines = parse(captured)
    assert [line["event"] for line in job_lines(lines, job["_id"])] == ["library says hi"]  # info lines filtered
    assert all(line["level"] in ("warning", "error", "critical") for line in lines)
