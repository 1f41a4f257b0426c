"""Cron schedules against the real server: the REST API, a driven clock (ticks at exactly
their due times, DST, misfires), crash recovery, and exactly-once with three schedulers on
three connections racing over the same ticks."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from app.domain.schedule import ScheduleSpec
from app.store import connect
from app.store.schedules import tick_job_id
from app.worker.scheduler import STALE_CLAIM, Scheduler
from tests.conftest import make_settings
from tests.helpers import eventually

UTC = UTC
URL = "/api/v1/jobs/schedules"
JOB = {"engine": "testing", "operation": "ok", "parameters": {"n": 1}}


def z(*a) -> datetime:
    return datetime(*a, tzinfo=UTC)


def ms(t: datetime, n: int = 1) -> datetime:
    return t - timedelta(milliseconds=n)


async def make(store, now: datetime, cron="*/5 * * * *", **kw) -> dict:
    body = {"name": kw.pop("name", "s"), "cron": cron, **kw}
    if "workflow" not in body:
        body.setdefault("job", JOB)
    return await store.schedules.create(ScheduleSpec.model_validate(body), owner="admin", now=now)


async def runs(store, sid: str) -> list[dict]:
    return await store.jobs.col.find({"schedule_id": sid}).sort("schedule_tick", 1).to_list(None)


async def run_ticks(store, sid: str) -> list[datetime]:
    return [j["schedule_tick"] for j in await runs(store, sid)]


async def workflows_of(store, sid: str) -> list[dict]:
    return await store.workflows.col.find({"metadata.schedule_id": sid}).to_list(None)


# --- API: validation -------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,field",
    [
        ({"cron": "* * * *"}, "cron"),
        ({"cron": "0 0 30 2 *"}, "cron"),
        ({"cron": "* * * * * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"misfire_policy": "whenever"}, "misfire_policy"),
        ({"job": {"engine": "nope", "operation": "ok"}}, "job.operation"),
        ({"job": {"engine": "testing", "operation": "ok", "parameters": {"$gt": 1}}}, "job.parameters"),
        ({"job": {"engine": "testing", "operation": "ok", "run_at": "2030-01-01T00:00:00Z"}}, "job.run_at"),
        ({"job": None}, "job"),
        ({"workflow": {"name": "w", "jobs": [{"key": "a", **JOB}]}}, "workflow"),
        ({"owner": "mallory"}, "owner"),
    ],
)
async def test_create_refuses_with_the_field_named(api, body, field):
    r = await api.post(URL, json={"name": "s", "cron": "*/5 * * * *", "job": JOB, **body})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


@pytest.mark.parametrize(
    "jobs,field",
    [
        ([{"key": "a", **JOB, "depends_on": ["b"]}, {"key": "b", **JOB, "depends_on": ["a"]}], "workflow.jobs"),
        ([{"key": "a", **JOB}, {"key": "b", **JOB, "depends_on": ["zz"]}], "workflow.jobs[1].depends_on"),
        ([{"key": "a", **JOB}, {"key": "a", **JOB}], "workflow.jobs[1].key"),
        ([{"key": "a", "engine": "testing", "operation": "nope"}], "workflow.jobs[0].operation"),
    ],
)
async def test_create_refuses_a_bad_workflow_template(api, jobs, field):
    r = await api.post(URL, json={"name": "s", "cron": "*/5 * * * *", "workflow": {"name": "w", "jobs": jobs}})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


async def test_create_needs_the_token(api):
    r = await api.post(
        URL, json={"name": "s", "cron": "*/5 * * * *", "job": JOB}, headers={"Authorization": "Bearer no"}
    )
    assert r.status_code == 401


async def test_six_fields_have_seconds_last(api, store):
    r = await api.post(URL, json={"name": "s", "cron": "* * * * * 7,37", "timezone": "Europe/Paris", "job": JOB})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["cron"] == "* * * * * 7,37" and body["timezone"] == "Europe/Paris"
    assert datetime.fromisoformat(body["next_run_at"]).second in (7, 37)


# --- API: CRUD -------------------------------------------------------------------------
async def test_create_get_list_pause_resume_delete(api, store):
    ids = []
    for i in range(3):
        r = await api.post(
            URL,
            json={
                "name": f"s{i}",
                "cron": "0 3 * * *",
                "timezone": "Asia/Tokyo",
                "job": JOB,
                "misfire_policy": "catch_up",
            },
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    one = (await api.get(f"{URL}/{ids[0]}")).json()
    assert one["owner"] == "admin" and one["job"] == JOB and one["workflow"] is None and one["paused"] is False
    assert one["misfire_policy"] == "catch_up" and one["run_count"] == 0 and one["last_run_at"] is None
    nxt = datetime.fromisoformat(one["next_run_at"])
    assert (nxt.hour, nxt.minute) == (18, 0) and nxt > store.clock.now()  # 03:00 JST

    page = (await api.get(URL, params={"limit": 2})).json()
    assert [s["id"] for s in page["schedules"]] == ids[::-1][:2] and page["next_cursor"]
    rest = (await api.get(URL, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [s["id"] for s in rest["schedules"]] == [ids[0]] and rest["next_cursor"] is None
    assert (await api.get(URL, params={"paused": "true"})).status_code == 422

    paused = (await api.post(f"{URL}/{ids[0]}/pause")).json()
    assert paused["paused"] is True
    resumed = (await api.post(f"{URL}/{ids[0]}/resume")).json()
    assert resumed["paused"] is False and resumed["next_run_at"] == one["next_run_at"]

    assert (await api.delete(f"{URL}/{ids[0]}")).status_code == 204
    assert (await api.get(f"{URL}/{ids[0]}")).status_code == 404
    assert len((await api.get(URL)).json()["schedules"]) == 2


@pytest.mark.parametrize("method,suffix", [("get", ""), ("post", "/pause"), ("post", "/resume"), ("delete", "")])
async def test_unknown_schedule_is_404_and_a_malformed_id_422(api, method, suffix):
    r = await getattr(api, method)(f"{URL}/{'0' * 24}{suffix}")
    assert r.status_code == 404 and r.json()["error"]["field"] == "schedule_id"
    assert (await getattr(api, method)(f"{URL}/x{suffix}")).status_code == 422


# --- driven clock ----------------------------------------------------------------------
async def test_ticks_fire_at_exactly_their_due_times(store, settings):
    s = await make(store, z(2030, 1, 1, 0, 0, 30), name="every5")
    sched = Scheduler(store, settings)
    for due in (z(2030, 1, 1, 0, 5), z(2030, 1, 1, 0, 10), z(2030, 1, 1, 0, 15)):
        assert await sched.tick(ms(due)) == 0
        assert await sched.tick(due) == 1
        assert await sched.tick(due + timedelta(seconds=30)) == 0
        doc = await store.schedules.get(s["_id"])
        assert doc["last_run_at"] == due and doc["next_run_at"] == due + timedelta(minutes=5)
        assert doc["last_job_id"] == tick_job_id(s["_id"], due) and doc["firing"] is None
    jobs = await runs(store, s["_id"])
    assert [j["schedule_tick"] for j in jobs] == [z(2030, 1, 1, 0, m) for m in (5, 10, 15)]
    assert all(
        j["status"] == "queued" and j["owner"] == "admin" and j["name"] == "every5" and j["parameters"] == {"n": 1}
        for j in jobs
    )
    assert (await store.schedules.get(s["_id"]))["run_count"] == 3


async def test_clock_defaults_to_the_database_clock(store, settings):
    s = await make(store, store.clock.now() - timedelta(minutes=10), cron="* * * * *")
    assert await Scheduler(store, settings).tick() == 1  # one tick: skip after 10 missed minutes
    assert (await store.schedules.get(s["_id"]))["next_run_at"] > store.clock.now()


async def test_dst_in_new_york(store, settings):
    sched = Scheduler(store, settings)
    spring = await make(store, z(2024, 3, 8, 12), cron="30 2 * * *", timezone="America/New_York")
    for due in (z(2024, 3, 9, 7, 30), z(2024, 3, 10, 7, 0), z(2024, 3, 11, 6, 30)):  # 02:30 EST, 03:00 EDT, 02:30 EDT
        assert await sched.tick(ms(due)) == 0
        assert await sched.tick(due) == 1
    assert await run_ticks(store, spring["_id"]) == [z(2024, 3, 9, 7, 30), z(2024, 3, 10, 7, 0), z(2024, 3, 11, 6, 30)]
    await store.schedules.delete(spring["_id"])  # it would be long overdue in November

    fall = await make(store, z(2024, 11, 2, 12), cron="30 1 * * *", timezone="America/New_York")
    assert await sched.tick(z(2024, 11, 3, 5, 30)) == 1  # 01:30 EDT
    assert await sched.tick(z(2024, 11, 3, 6, 30)) == 0  # 01:30 EST, the same wall time again: not re-run
    assert (await store.schedules.get(fall["_id"]))["next_run_at"] == z(2024, 11, 4, 6, 30)

    hourly = await make(store, z(2024, 11, 3, 4, 10), cron="0 * * * *", timezone="America/New_York")
    for due in (z(2024, 11, 3, 5), z(2024, 11, 3, 6), z(2024, 11, 3, 7)):  # 01:00 EDT, 01:00 EST, 02:00 EST
        assert await sched.tick(due) == 1
    assert await run_ticks(store, hourly["_id"]) == [z(2024, 11, 3, 5), z(2024, 11, 3, 6), z(2024, 11, 3, 7)]


async def test_misfire_skip_runs_the_latest_and_catch_up_runs_all(store, settings):
    t0 = z(2030, 1, 1, 0, 0, 30)
    skip = await make(store, t0, name="skip")
    catch = await make(store, t0, name="catch", misfire_policy="catch_up")
    sched = Scheduler(store, settings)
    assert await sched.tick(z(2030, 1, 1, 0, 5)) == 2
    # down from 00:05:01 to 01:02: ticks 00:10 … 01:00 were missed
    assert await sched.tick(z(2030, 1, 1, 1, 2)) == 1 + 11

    assert await run_ticks(store, skip["_id"]) == [z(2030, 1, 1, 0, 5), z(2030, 1, 1, 1, 0)]
    doc = await store.schedules.get(skip["_id"])
    assert doc["next_run_at"] == z(2030, 1, 1, 1, 5) and doc["run_count"] == 2
    assert doc["last_misfire"]["skipped_from"] == z(2030, 1, 1, 0, 10)
    assert doc["last_misfire"]["skipped_until"] == z(2030, 1, 1, 0, 55)

    assert await run_ticks(store, catch["_id"]) == [z(2030, 1, 1, 0, 5) + timedelta(minutes=5 * i) for i in range(12)]
    doc = await store.schedules.get(catch["_id"])
    assert doc["next_run_at"] == z(2030, 1, 1, 1, 5) and doc["run_count"] == 12 and doc["last_misfire"] is None


async def test_catch_up_is_capped(store):
    catch = await make(store, z(2030, 1, 1, 0, 0, 30), misfire_policy="catch_up")
    sched = Scheduler(store, make_settings(schedule_max_catchup=3))
    assert await sched.tick(z(2030, 1, 1, 1, 2)) == 3
    assert await run_ticks(store, catch["_id"]) == [z(2030, 1, 1, 0, 50), z(2030, 1, 1, 0, 55), z(2030, 1, 1, 1, 0)]
    misfire = (await store.schedules.get(catch["_id"]))["last_misfire"]
    assert misfire["skipped_from"] == z(2030, 1, 1, 0, 5) and misfire["skipped_until"] == z(2030, 1, 1, 0, 45)


async def test_paused_ticks_never_run_even_with_catch_up(store, settings):
    s = await make(store, z(2030, 1, 1, 0, 0, 30), misfire_policy="catch_up")
    sched = Scheduler(store, settings)
    await store.schedules.pause(s["_id"], z(2030, 1, 1, 0, 1))
    assert await sched.tick(z(2030, 1, 1, 1, 0)) == 0
    doc = await store.schedules.resume(s["_id"], z(2030, 1, 1, 1, 2))
    assert doc["next_run_at"] == z(2030, 1, 1, 1, 5)
    assert await sched.tick(z(2030, 1, 1, 1, 5)) == 1
    assert await run_ticks(store, s["_id"]) == [z(2030, 1, 1, 1, 5)]


# --- crashes ----------------------------------------------------------------------------
async def crash_after_claim(store, s: dict, now: datetime, launch: bool) -> datetime:
    """What a process leaves behind when it dies after claiming the due tick (and, with
    `launch`, after creating its job or workflow) but before committing."""
    tick = s["next_run_at"]
    assert await store.schedules.claim(s["_id"], tick, tick, tick + timedelta(minutes=5), "dead-process", now)
    if launch:
        await store.schedules.launch(await store.schedules.get(s["_id"]), tick)
    return tick


@pytest.mark.parametrize("launched", [False, True])
async def test_a_job_tick_survives_its_process_dying(store, settings, launched):
    s = await make(store, z(2030, 1, 1, 0, 0, 30))
    t = z(2030, 1, 1, 0, 5)
    tick = await crash_after_claim(store, s, t, launch=launched)
    sched = Scheduler(store, settings)
    assert await sched.tick(t + STALE_CLAIM - timedelta(seconds=1)) == 0  # the claim is still fresh
    assert await sched.tick(t + STALE_CLAIM + timedelta(seconds=1)) == 1
    assert await run_ticks(store, s["_id"]) == [tick]
    doc = await store.schedules.get(s["_id"])
    assert doc["run_count"] == 1 and doc["firing"] is None and doc["next_run_at"] == z(2030, 1, 1, 0, 10)
    await store.numbers.flush()  # an open seq block counts its unused numbers until it closes
    assert (await store.engines.get("testing"))["queued"] == 1  # counted once


async def test_a_slow_process_losing_its_claim_cannot_double_a_job(store, settings):
    s = await make(store, z(2030, 1, 1, 0, 0, 30))
    t = z(2030, 1, 1, 0, 5)
    tick = await crash_after_claim(store, s, t, launch=False)  # "dead-process" is only slow
    assert await Scheduler(store, settings).tick(t + STALE_CLAIM + timedelta(seconds=1)) == 1
    target, job_id, created = await store.schedules.launch(s, tick)  # the slow one wakes up and launches
    assert (target, job_id, created) == ("job", tick_job_id(s["_id"], tick), [])
    assert not await store.schedules.commit(s["_id"], "dead-process", tick, tick, target, job_id, t)
    assert await run_ticks(store, s["_id"]) == [tick]
    await store.numbers.flush()
    assert (await store.engines.get("testing"))["queued"] == 1
    assert (await store.schedules.get(s["_id"]))["run_count"] == 1


@pytest.mark.parametrize("launched", [False, True])
async def test_a_workflow_tick_runs_at_most_once_when_its_process_dies(store, settings, launched):
    wf = {"name": "nightly", "jobs": [{"key": "a", **JOB}, {"key": "b", **JOB, "depends_on": ["a"]}]}
    s = await make(store, z(2030, 1, 1, 0, 0, 30), workflow=wf)
    t = z(2030, 1, 1, 0, 5)
    await crash_after_claim(store, s, t, launch=launched)
    assert await Scheduler(store, settings).tick(t + STALE_CLAIM + timedelta(seconds=1)) == 0
    assert len(await workflows_of(store, s["_id"])) == int(launched)
    doc = await store.schedules.get(s["_id"])
    assert doc["last_error"]["code"] == "outcome_unknown" and doc["last_error"]["given_up"] is True
    assert doc["firing"] is None and doc["next_run_at"] == z(2030, 1, 1, 0, 10) and doc["run_count"] == 0


async def test_a_launch_that_cannot_succeed_gives_the_tick_up(store, settings):
    wf = {"name": "w", "jobs": [{"key": k, **JOB} for k in "abc"]}
    s = await make(store, z(2030, 1, 1, 0, 0, 30), workflow=wf)
    store.settings.workflow_max_steps = 2  # lowered after the schedule was accepted
    assert await Scheduler(store, settings).tick(z(2030, 1, 1, 0, 5)) == 0
    doc = await store.schedules.get(s["_id"])
    assert doc["last_error"]["code"] == "validation_error" and doc["last_error"]["tick"] == z(2030, 1, 1, 0, 5)
    assert doc["next_run_at"] == z(2030, 1, 1, 0, 10) and doc["firing"] is None and doc["run_count"] == 0
    assert await workflows_of(store, s["_id"]) == []


# --- exactly once -----------------------------------------------------------------------
async def test_three_schedulers_racing_run_every_tick_exactly_once(store, settings, db_url):
    wf = {"name": "w", "jobs": [{"key": "a", "engine": "wfeng", "operation": "ok"}]}
    t0 = z(2030, 1, 1, 0, 0, 0, 500_000)
    skip = await make(store, t0, cron="* * * * * *", name="skip", job={**JOB, "engine": "skipeng"})
    catch = await make(
        store, t0, cron="* * * * * *", name="catch", misfire_policy="catch_up", job={**JOB, "engine": "catcheng"}
    )
    flow = await make(store, t0, cron="* * * * * */2", name="flow", misfire_policy="catch_up", workflow=wf)
    others = [connect(db_url, settings, db_name=store.db.name) for _ in range(2)]
    for st in others:
        await st.start()
    try:
        scheds = [Scheduler(st, settings) for st in (store, *others)]
        rng = random.Random(7)
        now = t0
        for _ in range(40):
            now += timedelta(milliseconds=rng.randrange(300, 3500))
            # each process reads the time a little differently
            await asyncio.gather(*(s.tick(now + timedelta(milliseconds=rng.randrange(0, 400))) for s in scheds))
        end = now + timedelta(milliseconds=400)  # later than any process read the time
        await asyncio.gather(*(s.tick(end) for s in scheds))  # settle: everything due by `end` has run
    finally:
        for st in others:
            await st.close()

    every_second = [
        z(2030, 1, 1) + timedelta(seconds=i) for i in range(1, int((end - z(2030, 1, 1)).total_seconds()) + 1)
    ]
    assert await run_ticks(store, catch["_id"]) == every_second
    skipped = await run_ticks(store, skip["_id"])
    assert skipped == sorted(set(skipped)) and set(skipped) <= set(every_second) and skipped[-1] == every_second[-1]
    assert len(skipped) >= 20  # about one per pass that crossed a second
    flows = sorted(w["metadata"]["schedule_tick"] for w in await workflows_of(store, flow["_id"]))
    assert flows == [t.isoformat() for t in every_second if t.second % 2 == 0]

    for s, n in ((skip, len(skipped)), (catch, len(every_second)), (flow, len(flows))):
        doc = await store.schedules.get(s["_id"])
        assert doc["run_count"] == n and doc["firing"] is None and doc["last_error"] is None
    # no insert was made twice and then undone: each engine counted each job once
    await store.numbers.flush()
    assert (await store.engines.get("catcheng"))["queued"] == len(every_second)
    assert (await store.engines.get("skipeng"))["queued"] == len(skipped)


# --- end to end -------------------------------------------------------------------------
async def test_maintenance_fires_a_workflow_schedule_on_the_real_clock(api, store, worker):
    await store.engines.set_limit("testing", 10)
    wf = {"name": "pair", "jobs": [{"key": "a", **JOB}, {"key": "b", **JOB, "depends_on": ["a"]}]}
    r = await api.post(URL, json={"name": "every-second", "cron": "* * * * * *", "workflow": wf})
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    async def two_done():
        done = [w for w in await workflows_of(store, sid) if w["status"] == "completed"]
        return done if len(done) >= 2 else None

    done = await eventually(two_done, timeout=30, interval=0.1)
    assert (await api.post(f"{URL}/{sid}/pause")).json()["paused"] is True
    body = (await api.get(f"{URL}/{sid}")).json()
    assert body["run_count"] >= 2 and body["last_workflow_id"] and body["workflow"]["name"] == "pair"
    status = (await api.get(f"/api/v1/jobs/workflows/{done[0]['_id']}/status")).json()
    assert status["status"] == "completed" and status["metadata"]["schedule_id"] == sid
    ticks = [w["metadata"]["schedule_tick"] for w in await workflows_of(store, sid)]
    assert len(ticks) == len(set(ticks))
