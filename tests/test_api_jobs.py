"""The REST surface of seed 001's jobs and queues: happy paths, auth, and bad input."""

from __future__ import annotations

import json
import re

import pytest

from tests.helpers import eventually

# a time with at most millisecond precision: ".408Z", ".408000Z", ".408+00:00" or ".408000+00:00"
MILLIS = re.compile(r"\.\d{3}(000)?(Z|\+00:00)$")


async def test_submit_status_list_and_cancel(api):
    r = await api.post(
        "/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok", "parameters": {"a": 1}, "priority": 3}
    )
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["status"] == "queued" and job["priority"] == 3 and job["deduplicated"] is False
    r = await api.get(f"/api/v1/jobs/{job['id']}/status")
    assert r.status_code == 200 and r.json()["parameters"] == {"a": 1}
    r = await api.get("/api/v1/jobs/", params={"status": "queued", "engine": "testing"})
    assert [j["id"] for j in r.json()["jobs"]] == [job["id"]]
    r = await api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = await api.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"


async def test_a_new_job_is_stored_without_its_empty_fields_and_shown_with_them(api, store):
    """SPARSE_FIELDS stay out of a new document (every transition re-encodes it on
    SecantusDB); the API still shows each of them, empty."""
    from app.domain.models import SPARSE_FIELDS

    job = (await api.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
    raw = await store.jobs.col.find_one({"_id": job["id"]})
    assert SPARSE_FIELDS & set(raw) == {"queued_at"}  # the only one a queued job has
    shown = (await api.get(f"/api/v1/jobs/{job['id']}/status")).json()
    assert shown["result"] is None and shown["errors"] == [] and shown["depends_on"] == []
    assert shown["cancel_requested"] is False and shown["started_at"] is None and shown["workflow_id"] is None


async def test_cursor_pagination_walks_every_job_once(api):
    ids = set()
    for i in range(7):
        r = await api.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok", "parameters": {"i": i}})
        ids.add(r.json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/v1/jobs/", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and set(seen) == ids


async def test_dedupe_returns_200_with_the_same_job(api):
    body = {"engine": "testing", "operation": "ok", "dedupe_key": "report-42"}
    first = await api.post("/api/v1/jobs/submit", json=body)
    second = await api.post("/api/v1/jobs/submit", json=body)
    assert first.status_code == 201 and second.status_code == 200
    assert second.json()["id"] == first.json()["id"] and second.json()["deduplicated"] is True


async def test_history_and_queue_controls(api, jobs, store):
    await jobs.completed(engine="testing")
    await jobs.failed(engine="testing")
    await jobs.queued()
    await store.numbers.flush()  # the queued counter counts an open seq block's numbers until it closes
    h = (await api.get("/api/v1/jobs/history")).json()
    assert h["counts"]["completed"] == 1 and h["counts"]["failed"] == 1 and h["success_rate"] == 0.5
    assert h["avg_execution_time_ms"] == 5
    q = {x["name"]: x for x in (await api.get("/api/v1/jobs/queue/status")).json()["queues"]}
    assert q["testing"]["queued"] == 1 and q["testing"]["max_concurrent_jobs"] == 2
    assert q["testing"]["oldest_queued_age_seconds"] >= 0
    assert (
        q["ledger"]["max_concurrent_jobs"] == 2 and q["ledger"]["queued"] == 0
    )  # handlers' engines appear at their defaults
    r = await api.post("/api/v1/jobs/queue/testing/pause")
    assert r.json()["paused"] is True and (await store.engines.get("testing"))["paused"] is True
    r = await api.post("/api/v1/jobs/queue/testing/resume")
    assert r.json()["paused"] is False
    r = await api.put("/api/v1/jobs/queue/testing/limits", json={"max_concurrent_jobs": 9})
    assert r.json()["max_concurrent_jobs"] == 9 and (await store.engines.get("testing"))["limit"] == 9


async def test_health_needs_no_token(api):
    r = await api.get("/health", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["database"]["reachable"] is True


@pytest.mark.parametrize(
    "path,method",
    [
        ("/api/v1/jobs/", "GET"),
        ("/api/v1/jobs/submit", "POST"),
        ("/api/v1/jobs/queue/status", "GET"),
        ("/api/v1/jobs/history", "GET"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic abc"])
async def test_everything_else_needs_the_token(api, path, method, auth):
    headers = {"Authorization": auth} if auth else {"Authorization": ""}
    r = await api.request(method, path, headers=headers, json={} if method == "POST" else None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "body,field",
    [
        ({"engine": "testing", "operation": "ok", "priority": 0}, "priority"),
        ({"engine": "testing", "operation": "ok", "priority": 11}, "priority"),
        ({"engine": "testing"}, "operation"),
        ({"engine": "bad name!", "operation": "ok"}, "engine"),
        ({"engine": "testing", "operation": "ok", "parameters": {"$where": "1"}}, "parameters"),
        ({"engine": "testing", "operation": "ok", "parameters": {"a": {"b.c": 1}}}, "parameters"),
        ({"engine": "testing", "operation": "ok", "surprise": 1}, "surprise"),
        ({"engine": "testing", "operation": "ok", "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5}, "body"),
        ({"engine": "testing", "operation": "ok", "retry_config": {"max_retries": -1}}, "retry_config.max_retries"),
        ({"engine": "testing", "operation": "ok", "timeout_seconds": 0}, "timeout_seconds"),
    ],
)
async def test_bad_submissions_name_the_field(api, body, field):
    r = await api.post("/api/v1/jobs/submit", json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"].startswith(field) or field in err["message"], err


async def test_unknown_handler_is_named(api):
    r = await api.post("/api/v1/jobs/submit", json={"engine": "nowhere", "operation": "nothing"})
    assert r.status_code == 422 and "nowhere.nothing" in r.json()["error"]["message"]


async def test_injection_in_filters_is_refused(api):
    for params in ({"status[$ne]": "x"}, {"$where": "1"}, {"a.b": "1"}):
        r = await api.get("/api/v1/jobs/", params=params)
        assert r.status_code == 422 and r.json()["error"]["field"] == next(iter(params))
    r = await api.get("/api/v1/jobs/", params={"engine": '{"$gt": ""}'})
    assert r.status_code == 422 and r.json()["error"]["field"].endswith("engine")
    r = await api.get("/api/v1/jobs/", params={"status": "bogus"})
    assert r.status_code == 422


async def test_oversized_body_is_413(api):
    big = {"engine": "testing", "operation": "ok", "parameters": {"blob": "x" * (1024 * 1024 + 10)}}
    r = await api.post("/api/v1/jobs/submit", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_unknown_ids_are_404(api):
    for path in ("/api/v1/jobs/0123456789abcdef01234567/status", "/api/v1/jobs/nonsense/status"):
        r = await api.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.post("/api/v1/jobs/0123456789abcdef01234567/cancel")
    assert r.status_code == 404


async def test_bad_limits_are_422(api):
    for body in ({"max_concurrent_jobs": 0}, {"max_concurrent_jobs": "x"}, {"limit": 3}):
        r = await api.put("/api/v1/jobs/queue/testing/limits", json=body)
        assert r.status_code == 422
    r = await api.post("/api/v1/jobs/queue/bad.name/pause")
    assert r.status_code == 422


async def test_openapi_lists_the_contract(api):
    spec = (await api.get("/openapi.json")).json()
    for path in (
        "/api/v1/jobs/submit",
        "/api/v1/jobs/{job_id}/status",
        "/api/v1/jobs/{job_id}/cancel",
        "/api/v1/jobs/",
        "/api/v1/jobs/history",
        "/api/v1/jobs/queue/status",
        "/api/v1/jobs/queue/{name}/pause",
        "/api/v1/jobs/queue/{name}/resume",
        "/api/v1/jobs/queue/{name}/limits",
    ):
        assert path in spec["paths"], path


async def test_unknown_routes_and_methods_have_the_error_shape(api):
    r = await api.get("/api/v1/no-such-thing")
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "http_404", "message": "no such route", "field": "path"}}
    r = await api.delete("/api/v1/jobs/submit")
    assert r.status_code == 405
    assert r.json() == {
        "error": {"code": "http_405", "message": "method DELETE is not allowed here", "field": "method"}
    }
    r = await api.get("/api/v1/jobs/0123456789abcdef01234567/status")  # our own errors name no field here
    assert set(r.json()["error"]) >= {"code", "message", "field"}


async def test_a_json_decode_error_names_a_line_and_column(api):
    body = b'{"engine": "testing",\n "operation": ok}'
    r = await api.post("/api/v1/jobs/submit", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["field"] == "body"
    assert error["position"] == {"line": 2, "column": 15, "character": 36}
    assert "at line 2, column 15" in error["message"] and "body.36" not in r.text


async def test_one_job_shows_the_same_times_everywhere(api, worker, live):
    """MongoDB keeps milliseconds: the submit answer must not show more than is stored, and
    the REST answers and the job's event stream agree to the millisecond."""
    submitted = (await api.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
    job_id = submitted["id"]

    async def finished():
        job = (await api.get(f"/api/v1/jobs/{job_id}/status")).json()
        return job if job["status"] == "completed" else None

    status = await eventually(finished, timeout=20)
    listed = next(j for j in (await api.get("/api/v1/jobs/")).json()["jobs"] if j["id"] == job_id)
    assert submitted["created_at"] == status["created_at"] == listed["created_at"]
    assert submitted["queued_at"] == status["queued_at"] == listed["queued_at"]
    assert status["completed_at"] == listed["completed_at"]
    frames = []
    async with api.stream("GET", f"/api/v1/jobs/{job_id}/events", params={"since": 0}) as r:
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                frames.append(json.loads(line[5:]))
    ats = [f["at"] for f in frames if "at" in f]
    assert ats and all(MILLIS.search(at) for at in ats), ats
    for stamp in (submitted["created_at"], submitted["queued_at"], status["completed_at"]):
        assert MILLIS.search(stamp), stamp


def test_a_stamp_on_a_whole_second_keeps_its_milliseconds():
    """A job created on a whole second showed `...:08Z` where the others showed
    `...:08.123Z`: one in a thousand runs of the test above failed on it."""
    from datetime import UTC, datetime

    from pydantic import TypeAdapter

    from app.api.schemas import Stamp
    from app.domain.events import public

    at = datetime(2026, 12, 3, 6, 59, 8, tzinfo=UTC)
    assert TypeAdapter(Stamp).dump_json(at) == b'"2026-12-03T06:59:08.000Z"'
    assert MILLIS.search(public({"_id": 1, "at": at})["at"])
