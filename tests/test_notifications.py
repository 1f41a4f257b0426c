"""Stored notifications and preferences: the notifier turns events into per-user
notifications, the API lists them (unread filter, pagination) and marks them read, and
preferences choose the channels per event type."""

from __future__ import annotations

import pytest

from app.notifications.service import NotificationService
from tests.helpers import eventually, wait_status


async def notifications(api, **params):
    r = await api.get("/api/v1/jobs/notifications", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def until_count(api, n, **params):
    async def check():
        body = await notifications(api, **params)
        return body if len(body["notifications"]) >= n else None

    return await eventually(check, timeout=30)


async def test_a_failed_job_becomes_an_unread_notification_that_can_be_read(api, live, jobs, store):
    job = await jobs.failed(name="nightly report")
    body = await until_count(api, 1)
    [n] = body["notifications"]
    assert n["type"] == "job.failed" and n["job_id"] == job["_id"] and n["read"] is False
    assert "nightly report" in n["title"] and job["_id"] in n["title"]
    assert n["error"]["code"] == "boom"
    assert body["unread_count"] == 1

    r = await api.post(f"/api/v1/jobs/notifications/{n['id']}/read")
    assert r.status_code == 200 and r.json()["read"] is True
    assert (await notifications(api, unread="true"))["notifications"] == []
    assert (await notifications(api))["unread_count"] == 0


async def test_read_all_pagination_and_bad_ids(api, live, jobs):
    made = [await jobs.cancelled() for _ in range(5)]
    await until_count(api, 5)
    page1 = await notifications(api, limit=2)
    page2 = await notifications(api, limit=2, cursor=page1["next_cursor"])
    page3 = await notifications(api, limit=2, cursor=page2["next_cursor"])
    seen = [n["job_id"] for p in (page1, page2, page3) for n in p["notifications"]]
    assert sorted(seen) == sorted(j["_id"] for j in made) and page3["next_cursor"] is None
    assert seen == [j["_id"] for j in reversed(made)]  # newest first

    assert (await api.post("/api/v1/jobs/notifications/read-all")).json() == {"marked": 5}
    assert (await notifications(api, unread="true"))["notifications"] == []
    assert (await api.post("/api/v1/jobs/notifications/123:someone-else/read")).status_code == 404
    r = await api.post("/api/v1/jobs/notifications/$where/read")
    assert r.status_code == 422 and r.json()["error"]["field"] == "path.notification_id"
    r = await api.get("/api/v1/jobs/notifications", params={"user": "x"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "user"


async def test_preferences_validate_and_route(api, live, jobs, store):
    r = await api.get("/api/v1/jobs/notifications/preferences")
    assert r.json() == {"email": None, "channels": {}}
    for bad, field in (
        ({"channels": {"job.exploded": ["db"]}}, "channels"),
        ({"channels": {"job.completed": ["pigeon"]}}, "channels"),
        ({"email": "a@b.c\r\nBcc: x@y.z"}, "email"),
        ({"colour": "red"}, "colour"),
    ):
        r = await api.put("/api/v1/jobs/notifications/preferences", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["error"]["field"] == field
    r = await api.put(
        "/api/v1/jobs/notifications/preferences",
        json={"email": "ops@example.com", "channels": {"job.completed": ["db"], "job.failed": []}},
    )
    assert r.status_code == 200 and r.json()["email"] == "ops@example.com"

    done = await jobs.completed()
    failed = await jobs.failed()
    await until_count(api, 1)
    await store.events.since(0)  # both events exist by now or soon; the failed one is muted
    body = await eventually(lambda: _settled(api, live, failed["_id"]), timeout=20)
    assert [n["job_id"] for n in body["notifications"]] == [done["_id"]]


async def _settled(api, live, last_job):
    evs = await live.store.events.since(0, job_id=last_job)
    if not evs or live.notifier.position < evs[-1]["_id"]:
        return None
    return await notifications(api)


async def test_replaying_a_batch_stores_nothing_twice(store, settings, jobs, live):
    await jobs.failed()
    evs = await eventually(lambda: _failed_events(store), timeout=20)
    await eventually(lambda: _count(store, 1), timeout=20)
    second = NotificationService(store, settings, [ch for ch in live.notifier.channels.values()], live.hub)
    await second.fan_out(evs)
    assert await store.notifications.col.count_documents({}) == 1


async def _failed_events(store):
    return [e for e in await store.events.since(0) if e["type"] == "job.failed"] or None


async def _count(store, n):
    return await store.notifications.col.count_documents({}) == n


@pytest.mark.parametrize("operation", ["permanent"])
async def test_worker_failures_notify_once(api, live, worker, jobs, store, operation):
    job = await jobs.queued(operation=operation)
    await wait_status(store, job["_id"], "failed")
    body = await until_count(api, 1)
    assert [n["job_id"] for n in body["notifications"]] == [job["_id"]]
