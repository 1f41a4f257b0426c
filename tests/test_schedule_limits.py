"""Schedules under the tenant's limits (issue 18), against the real server: creating one
draws a rate token, a tick goes through the same admission as a REST submit (refused ticks
are recorded, notified and passed over, and the schedule goes on), the cap on schedules per
tenant, the minimum gap between ticks, and that a refused request changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app.domain.schedule import ScheduleSpec
from app.worker.scheduler import Scheduler
from tests.conftest import make_settings

UTC = UTC
URL = "/api/v1/jobs/schedules"
JOB = {"engine": "testing", "operation": "ok"}
LIMITS = dict(
    rate_limit_per_second=0.001,
    rate_limit_burst=3,
    tenant_max_queued=2,
    tenant_max_schedules=2,
    schedule_min_interval_seconds=60,
)


@pytest.fixture
def settings():
    return make_settings(**LIMITS)


async def key(api, tenant: str, user: str = "bob") -> dict:
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "tenant": tenant, "user": user, "role": "member"})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def tokens(store, tenant: str) -> float | None:
    doc = await store.rate_limits.col.find_one({"_id": f"jobs:{tenant}"})
    return None if doc is None else doc["tokens"]


def z(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


async def make(store, owner: str, now: datetime, **kw) -> dict:
    body = {"name": "s", "cron": "*/5 * * * *", **kw}
    if "workflow" not in body:
        body["job"] = JOB
    return await store.schedules.create(ScheduleSpec.model_validate(body), owner=owner, now=now)


async def test_creating_a_schedule_draws_a_rate_token_like_a_submit(api, store):
    me = await key(api, "tok")
    r = await api.post(URL, json={"name": "s", "cron": "*/5 * * * *", "job": JOB}, headers=me)
    assert r.status_code == 201, r.text
    assert await tokens(store, "tok") == pytest.approx(2.0, abs=0.01)
    assert (await api.post("/api/v1/jobs/submit", json=JOB, headers=me)).status_code == 201
    assert await tokens(store, "tok") == pytest.approx(1.0, abs=0.01)  # one bucket for both


async def test_a_tick_over_the_quota_is_refused_recorded_notified_and_the_schedule_goes_on(api, store, jobs, settings):
    owner = "quo/bob"
    s = await make(store, owner, z(2030, 1, 1, 0, 0, 30))
    ops = await make(store, "admin", z(2030, 1, 1, 0, 0, 30))  # the bootstrap admin's: not limited
    for _ in range(2):
        await jobs.queued(owner="quo/ann")  # the tenant's quota of 2 is full
        await jobs.queued(owner="admin")
    sched = Scheduler(store, settings)
    for n, due in enumerate((z(2030, 1, 1, 0, 5), z(2030, 1, 1, 0, 10)), start=1):
        assert await sched.tick(due) == 1  # the admin's
        doc = await store.schedules.get(s["_id"])
        assert doc["next_run_at"] == due + timedelta(minutes=5) and doc["firing"] is None  # it goes on
        assert doc["refused_ticks"] == n and doc["run_count"] == 0
    assert await store.jobs.col.count_documents({"schedule_id": s["_id"]}) == 0
    assert await store.jobs.col.count_documents({"schedule_id": ops["_id"]}) == 2
    assert await tokens(store, "quo") is None  # refused: not even a token drawn

    body = (await api.get(f"{URL}/{s['_id']}")).json()
    err = body["last_error"]
    assert err["code"] == "rate_limited" and "quota is 2" in err["message"] and err["given_up"] is True
    assert datetime.fromisoformat(err["tick"]) == z(2030, 1, 1, 0, 10) and err["at"]
    notes = await store.notifications.col.find({"user": owner}).to_list(None)
    assert len(notes) == 1, notes  # once per run of refusals, not once per tick
    assert notes[0]["type"] == "schedule.refused" and notes[0]["error"]["code"] == "rate_limited"
    assert s["_id"] in notes[0]["title"] and notes[0]["read"] is False
    bob = await key(api, "quo", "bob")  # the owner reads it, and marks it read, like any other
    page = (await api.get("/api/v1/jobs/notifications", headers=bob)).json()
    assert [(n["type"], n["read"]) for n in page["notifications"]] == [("schedule.refused", False)]
    r = await api.post(f"/api/v1/jobs/notifications/{page['notifications'][0]['id']}/read", headers=bob)
    assert r.status_code == 200, r.text

    await store.lifecycle.cancel((await store.jobs.col.find_one({"tenant": "quo"}))["_id"])
    assert (
        await Scheduler(store, settings).tick(z(2030, 1, 1, 0, 15)) == 2
    )  # room again (a new process: no cached count)
    doc = await store.schedules.get(s["_id"])
    assert doc["run_count"] == 1 and doc["last_error"] is None and doc["refused_ticks"] == 2


async def test_a_refused_tick_is_mailed_by_the_failure_email_rule(store, jobs):
    settings = make_settings(**LIMITS, email_types="job.failed,schedule.refused", alert_email="ops@example.com")
    s = await make(store, "mail/bob", z(2030, 1, 1, 0, 0, 30))
    for _ in range(2):
        await jobs.queued(owner="mail/bob")
    assert await Scheduler(store, settings).tick(z(2030, 1, 1, 0, 5)) == 0
    mails = await store.mail.col.find({}).to_list(None)
    assert [m["to"] for m in mails] == ["ops@example.com"] and s["_id"] in mails[0]["subject"]


async def test_a_tick_over_the_rate_is_refused_and_a_workflow_costs_its_steps(store, settings):
    wf = {"name": "w", "jobs": [{"key": k, **JOB} for k in "ab"]}
    s = await make(store, "rat/bob", z(2030, 1, 1, 0, 0, 30), workflow=wf)
    assert await store.rate_limits.take("jobs:rat", rate=0.001, burst=3, now=store.clock.now(), n=2) == 0
    assert await Scheduler(store, settings).tick(z(2030, 1, 1, 0, 5)) == 0  # 2 steps, 1 token left
    doc = await store.schedules.get(s["_id"])
    assert doc["last_error"]["code"] == "rate_limited" and "faster than" in doc["last_error"]["message"]
    assert await store.workflows.col.count_documents({"metadata.schedule_id": s["_id"]}) == 0
    assert await tokens(store, "rat") == pytest.approx(1.0, abs=0.01)


async def test_a_tenant_has_a_cap_on_schedules_and_a_refused_create_changes_nothing(api, store):
    me = await key(api, "cap")
    for i in range(2):
        assert (
            await api.post(URL, json={"name": f"s{i}", "cron": "0 * * * *", "job": JOB}, headers=me)
        ).status_code == 201
    left = await tokens(store, "cap")
    r = await api.post(URL, json={"name": "s2", "cron": "0 * * * *", "job": JOB}, headers=me)
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert (
        err["field"] == "tenant" and err["details"]["reason"] == "tenant_max_schedules" and "cap is 2" in err["message"]
    )
    assert await store.schedules.count("cap") == 2 and await tokens(store, "cap") == pytest.approx(left, abs=0.01)
    other = await key(api, "cap2")  # the cap is per tenant
    assert (await api.post(URL, json={"name": "s", "cron": "0 * * * *", "job": JOB}, headers=other)).status_code == 201


async def test_ticks_closer_than_the_minimum_are_refused_naming_cron_without_echoing_it(api, store):
    cases = [
        ("* * * * * *", False),  # every second
        ("* * * * * 7,37", False),  # 30 s apart
        ("59 23 * * * 30,59", False),  # 29 s apart, once a day
        ("* * * * *", True),  # every minute: exactly the minimum
        ("0,1 9 * * *", True),  # 60 s apart, once a day
        ("0 0 1 1 *", True),
    ]  # yearly
    for i, (cron, ok) in enumerate(cases):
        tenant = f"gap{i}"
        r = await api.post(URL, json={"name": "s", "cron": cron, "job": JOB}, headers=await key(api, tenant))
        if ok:
            assert r.status_code == 201, (cron, r.text)
            continue
        assert r.status_code == 422, (cron, r.text)
        err = r.json()["error"]
        assert err["field"] == "cron" and "minimum is 60 s" in err["message"] and cron not in r.text
        assert await store.schedules.count(tenant) == 0 and await tokens(store, tenant) is None  # nothing changed


async def test_a_submit_refused_by_the_quota_draws_no_token(api, store, jobs):
    me = await key(api, "qsub")
    for _ in range(2):
        await jobs.queued(owner="qsub/ann")
    r = await api.post("/api/v1/jobs/submit", json=JOB, headers=me)
    assert r.status_code == 429 and "quota" in r.json()["error"]["message"]
    assert await tokens(store, "qsub") is None
