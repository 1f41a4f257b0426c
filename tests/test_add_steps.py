"""`await ctx.add_steps([...])` against the real server (docs/map-steps.md): a running step
adds steps to its workflow, validated as `POST /jobs/workflows/{id}/jobs` validates them,
and the steps that depend on it wait for them too and get their results. The handler is
`testing.spawn` (tests/support_handlers.py)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from app.domain.retry import RetryConfig
from app.worker.maintenance import Maintenance
from app.worker.processor import JobProcessor
from tests.helpers import eventually, wait_status, wait_workflow


@pytest.fixture(autouse=True)
async def roomy_engine(store):
    await store.engines.set_limit("testing", 50)


def step(key, deps=(), op="collect", **kw):
    return {"key": key, "engine": "testing", "operation": op, "depends_on": list(deps), **kw}


def spawning(steps, *, after=("sink",), **params):
    """`s` adds `steps`; `sink` (and any key in `after`) depends on `s`."""
    jobs = [step("s", op="spawn", parameters={"steps": steps, **params})]
    jobs += [step(k, ["s"]) for k in after]
    return {"name": "spawn", "jobs": jobs}


async def submit(api, body):
    r = await api.post("/api/v1/jobs/workflows", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def docs(store, wf_id):
    return {s["step_key"]: s for s in await store.jobs.steps_of(wf_id)}


async def test_a_fan_in_waits_for_the_steps_a_handler_added_and_gets_their_results(api, store, worker):
    spawned = [
        step("a", parameters={"value": 1}),  # instant: may finish before the sink is wired to it
        step("b", ["a"], op="stubborn", parameters={"seconds": 0.5}),
        step("c", ["s"], parameters={"value": 3}),  # depends on the spawner itself: waits for it
    ]
    wf = await submit(api, spawning(spawned))
    body = await wait_workflow(api, wf["id"])
    steps = await docs(store, wf["id"])
    assert set(steps["s"]["result"]["added"]) == {"a", "b", "c"}
    sink = steps["sink"]
    assert list(sink["result"]["parents"]) == ["s", "a", "b", "c"]  # keyed by step key, s first
    assert sink["result"]["parents"]["a"] == {"value": 1, "parents": {}, "n_parents": 0}
    assert sink["result"]["parents"]["b"] == {"finished": True}
    assert sink["result"]["parents"]["c"]["parents"]["s"] == steps["s"]["result"]
    for k in ("s", "a", "b", "c"):
        assert sink["started_at"] >= steps[k]["completed_at"], k
    assert steps["a"]["spawned_by"] == steps["s"]["_id"]
    assert body["total"] == 5 and body["counts"]["completed"] == 5
    by_key = {s["key"]: s for s in body["steps"]}
    assert by_key["sink"]["depends_on"] == ["s", "a", "b", "c"]
    assert (await store.workflows.graph(wf["id"]))["sink"]["depends_on"] == ["s", "a", "b", "c"]


async def test_a_sink_waits_while_a_spawned_step_runs(api, store, worker):
    wf = await submit(api, spawning([step("slow", op="wait_cancel", parameters={"max": 60})]))

    async def slow_running():
        return (await docs(store, wf["id"])).get("slow", {}).get("status") == "running"

    await eventually(slow_running)
    await eventually(lambda: _is(store, wf["id"], "s", "completed"))

    async def sink_waits_for_slow_alone():  # once `s`'s settle (batched after its exit) ran
        body = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
        sink = next(s for s in body["steps"] if s["key"] == "sink")
        return sink if sink["why"]["reasons"][0]["waiting_for"] == ["slow"] else None

    assert (await eventually(sink_waits_for_slow_alone))["status"] == "pending"
    await api.post(f"/api/v1/jobs/{(await docs(store, wf['id']))['slow']['_id']}/cancel")
    await wait_workflow(api, wf["id"], ("cancelled",))
    assert (await docs(store, wf["id"]))["sink"]["cancel_reason"] == "dependency_cancelled"


async def _is(store, wf_id, key, status):
    return (await docs(store, wf_id)).get(key, {}).get("status") == status


@pytest.mark.parametrize(
    "steps,field,needle",
    [
        ([step("x", ["nope"])], "jobs[0].depends_on", "depends on unknown step 'nope'"),
        ([step("s")], "jobs[0].key", "duplicate step key 's'"),
        ([step("x", ["y"]), step("y", ["x"])], "jobs", "cycle: x -> y -> x"),
        ([{"key": "x", "engine": "nowhere", "operation": "x"}], "jobs[0].operation", "nowhere.x"),
        ([step("x", priority=11)], "jobs.0.priority", "less than or equal to 10"),
        ([step("x", map_over="s.v")], "jobs[0].map_over", "not in its depends_on"),
    ],
)
async def test_refusals_are_the_endpoints(api, store, worker, steps, field, needle):
    """The handler gets `StepsRejected` with the field and message the REST endpoint's 422
    gives for the same steps, and nothing is added."""
    wf = await submit(api, spawning(steps, catch=True))
    await wait_workflow(api, wf["id"])
    got = (await docs(store, wf["id"]))["s"]["result"]["rejected"]
    live = await submit(api, {"name": "live", "jobs": [step("s", op="wait_cancel", parameters={"max": 60})]})
    r = await api.post(f"/api/v1/jobs/workflows/{live['id']}/jobs", json={"jobs": steps})
    err = r.json()["error"]
    assert r.status_code == 422 and needle in err["message"] and err["field"] == field, r.text
    assert got == {"field": err["field"], "message": err["message"]}
    assert set(await docs(store, wf["id"])) == {"s", "sink"}


async def test_a_step_may_not_wait_for_what_waits_for_it(api, store, worker):
    wf = await submit(api, spawning([step("x", ["sink2"])], after=("sink", "sink2"), catch=True))
    await wait_workflow(api, wf["id"])
    got = (await docs(store, wf["id"]))["s"]["result"]["rejected"]
    assert got == {
        "field": "jobs[0].depends_on",
        "message": "step 'x' depends on 'sink2', which waits for the steps 's' adds: neither could start",
    }


async def test_an_uncaught_refusal_fails_the_step_without_a_retry(api, store, worker):
    body = spawning([step("x", ["nope"])])
    body["jobs"][0]["retry_config"] = {"max_retries": 3, "retry_delay_seconds": 0.05}
    wf = await submit(api, body)
    await wait_workflow(api, wf["id"], ("failed",))
    s = (await docs(store, wf["id"]))["s"]
    assert s["attempt"] == 1 and s["last_error"]["code"] == "steps_rejected"
    assert "unknown step 'nope'" in s["last_error"]["message"]


async def test_a_standalone_job_cannot_add_steps(api, store, worker):
    r = await api.post(
        "/api/v1/jobs/submit",
        json={"engine": "testing", "operation": "spawn", "parameters": {"steps": [step("x")], "catch": True}},
    )
    job = await wait_status(store, r.json()["id"], "completed")
    assert job["result"]["rejected"]["field"] == "workflow_id"
    assert "is not a workflow step" in job["result"]["rejected"]["message"]
    r = await api.post(
        "/api/v1/jobs/submit", json={"engine": "testing", "operation": "spawn", "parameters": {"steps": []}}
    )
    job = await wait_status(store, r.json()["id"], "failed")
    assert job["last_error"]["code"] == "steps_rejected" and job["attempt"] == 1


async def test_a_retried_step_adds_its_steps_once(api, store, worker):
    """Its first attempt adds the steps and then fails; the second adds the same keys: the
    same jobs, not new ones, and the fan-in waits for them once."""
    body = spawning([step("a", parameters={"value": 1})], fail_first=True)
    body["jobs"][0]["retry_config"] = {"max_retries": 2, "retry_delay_seconds": 0.05}
    wf = await submit(api, body)
    res = await wait_workflow(api, wf["id"])
    steps = await docs(store, wf["id"])
    assert steps["s"]["attempt"] == 2 and steps["s"]["result"]["added"] == {"a": steps["a"]["_id"]}
    assert len(steps) == 3 and res["total"] == 3
    assert steps["sink"]["parent_ids"] == [steps["s"]["_id"], steps["a"]["_id"]]
    assert list(steps["sink"]["result"]["parents"]) == ["s", "a"]


async def test_a_quarantined_step_adds_its_steps_through_its_worker(api, store, settings):
    """An attempt running in a quarantine child asks its worker to add the steps."""
    await store.engines.set_paused("testing", True)
    wf = await submit(api, spawning([step("a", parameters={"value": 1})]))
    sid = wf["jobs"]["s"]
    await store.jobs.col.update_one({"_id": sid}, {"$set": {"retry_config": RetryConfig(max_retries=2).model_dump()}})
    (claimed,) = await store.claimer.claim(await store.engines.get("testing"), "wdead", 1)
    assert claimed["_id"] == sid
    later = store.clock.now() + timedelta(seconds=60)
    (expired,) = await store.jobs.expired_leases(later)
    assert await store.lifecycle.rescue(expired, later) == "queued"  # its worker "died": now suspect
    await store.engines.set_paused("testing", False)
    maint, proc = Maintenance(store, settings), JobProcessor(store, settings, concurrency=4)
    await maint.start()
    await proc.start()
    try:
        await wait_workflow(api, wf["id"])
    finally:
        await proc.stop(grace=1)
        await maint.stop()
    steps = await docs(store, wf["id"])
    assert steps["s"]["result"]["pid"] != os.getpid()  # it ran in the child
    assert list(steps["sink"]["result"]["parents"]) == ["s", "a"]
