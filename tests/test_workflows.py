"""Workflows end to end against the real server, with an in-process worker: DAG shapes,
result passing, failure policies, cancel, add-steps, retry and "why"."""

from __future__ import annotations

import pytest

from tests.factories import dying_lifecycle
from tests.helpers import eventually, wait_workflow


@pytest.fixture(autouse=True)
async def roomy_engine(store):
    await store.engines.set_limit("testing", 50)


def step(key, deps=(), op="collect", value=None, **kw):
    if value is not None:
        kw["parameters"] = {"value": value}
    return {"key": key, "engine": "testing", "operation": op, "depends_on": list(deps), **kw}


async def submit(api, steps, **kw):
    r = await api.post("/api/v1/jobs/workflows", json={"name": "wf", "jobs": steps, **kw})
    assert r.status_code == 201, r.text
    return r.json()


async def docs(store, wf):
    return {s["step_key"]: s for s in await store.jobs.steps_of(wf["id"])}


def assert_order(steps: dict):
    for s in steps.values():
        for d in s.get("depends_on", []):
            assert s["started_at"] >= steps[d]["completed_at"], f"{s['step_key']} started before {d} completed"


async def test_diamond_passes_results(api, store, worker):
    wf = await submit(
        api, [step("a", value=1), step("b", ["a"], value=2), step("c", ["a"], value=3), step("d", ["b", "c"])]
    )
    body = await wait_workflow(api, wf["id"])
    assert body["counts"]["completed"] == 4 and body["progress"] == 100
    steps = await docs(store, wf)
    assert steps["d"]["result"]["parents"]["b"]["value"] == 2 and steps["d"]["result"]["parents"]["c"]["value"] == 3
    assert set(steps["b"]["result"]["parents"]) == {"a"}
    assert_order(steps)


async def test_chain_of_100(api, store, worker):
    wf = await submit(api, [step(f"s{i}", [f"s{i - 1}"] if i else [], op="ok") for i in range(100)])
    await wait_workflow(api, wf["id"], timeout=120)
    assert_order(await docs(store, wf))


async def test_fan_out_500_and_fan_in(api, store, worker):
    mids = [step(f"m{i}", ["root"], value=i) for i in range(500)]
    wf = await submit(api, [step("root"), *mids, step("sink", [m["key"] for m in mids])])
    await wait_workflow(api, wf["id"], timeout=120)
    steps = await docs(store, wf)
    sink = steps["sink"]["result"]
    assert sink["n_parents"] == 500 and sorted(p["value"] for p in sink["parents"].values()) == list(range(500))
    assert_order(steps)


async def test_fail_fast_cancels_everything_unfinished(api, store, worker):
    wf = await submit(
        api,
        [
            step("bad", op="permanent"),
            step("after", ["bad"]),
            step("slow", op="stubborn", parameters={"seconds": 60}),
            step("later", ["slow"]),
        ],
    )
    body = await wait_workflow(api, wf["id"], ("failed",), timeout=30)
    steps = await docs(store, wf)
    assert steps["bad"]["status"] == "failed"
    assert {k: steps[k]["status"] for k in ("after", "slow", "later")} == {
        "after": "cancelled",
        "slow": "cancelled",
        "later": "cancelled",
    }
    assert steps["after"]["cancel_reason"] == "dependency_failed"
    assert body["counts"] == {**body["counts"], "failed": 1, "cancelled": 3}


async def test_continue_runs_independent_branches(api, store, worker):
    wf = await submit(
        api,
        [
            step("bad", op="permanent"),
            step("child", ["bad"]),
            step("grandchild", ["child"]),
            step("other"),
            step("other2", ["other"]),
        ],
        failure_policy="continue",
    )
    await wait_workflow(api, wf["id"], ("failed",))
    steps = await docs(store, wf)
    assert steps["other2"]["status"] == "completed"
    assert steps["child"]["cancel_reason"] == steps["grandchild"]["cancel_reason"] == "dependency_failed"


async def test_cancel_a_workflow(api, store, worker):
    wf = await submit(api, [step("slow", op="wait_cancel"), step("next", ["slow"])])
    await eventually(lambda: _status(store, wf, "slow", "running"))
    r = await api.post(f"/api/v1/jobs/workflows/{wf['id']}/cancel")
    assert r.status_code == 200
    await wait_workflow(api, wf["id"], ("cancelled",))
    steps = await docs(store, wf)
    assert steps["slow"]["status"] == steps["next"]["status"] == "cancelled"
    r = await api.post(f"/api/v1/jobs/workflows/{wf['id']}/cancel")
    assert r.status_code == 409


async def _status(store, wf, key, status):
    return (await docs(store, wf))[key]["status"] == status


async def test_add_steps_to_a_running_workflow(api, store, worker):
    wf = await submit(api, [step("first", value="x"), step("gate", op="wait_cancel", parameters={"max": 60})])
    await eventually(lambda: _status(store, wf, "first", "completed"))
    r = await api.post(
        f"/api/v1/jobs/workflows/{wf['id']}/jobs",
        json={"jobs": [step("late", ["first"]), step("after_gate", ["gate"])]},
    )
    assert r.status_code == 200, r.text
    await eventually(lambda: _status(store, wf, "late", "completed"))
    steps = await docs(store, wf)
    assert steps["late"]["result"]["parents"]["first"]["value"] == "x"  # a completed dependency counts as satisfied
    assert steps["after_gate"]["status"] == "pending"
    assert list(await store.workflows.graph(wf["id"])) == ["first", "gate", "late", "after_gate"]
    bad = await api.post(f"/api/v1/jobs/workflows/{wf['id']}/jobs", json={"jobs": [step("x", ["y"]), step("y", ["x"])]})
    assert bad.status_code == 422 and "cycle" in bad.json()["error"]["message"]
    await api.post(f"/api/v1/jobs/{steps['gate']['_id']}/cancel")
    await wait_workflow(api, wf["id"], ("cancelled",))
    assert (await docs(store, wf))["after_gate"]["cancel_reason"] == "dependency_cancelled"


async def test_retry_keeps_completed_steps(api, store, worker, tmp_path):
    marker = tmp_path / "ok"
    wf = await submit(
        api,
        [
            step("done", value=7),
            step("flaky", ["done"], op="fail_unless", parameters={"marker": str(marker)}),
            step("tail", ["flaky"]),
        ],
    )
    await wait_workflow(api, wf["id"], ("failed",))
    before = await docs(store, wf)
    marker.write_text("now it works")
    r = await api.post(f"/api/v1/jobs/workflows/{wf['id']}/retry")
    assert r.status_code == 200 and set(r.json()["jobs"]) == {"flaky", "tail"}
    await wait_workflow(api, wf["id"])
    after = await docs(store, wf)
    assert after["done"]["completed_at"] == before["done"]["completed_at"] and after["done"]["attempt"] == 1
    assert after["tail"]["status"] == "completed"
    assert (await api.post(f"/api/v1/jobs/workflows/{wf['id']}/retry")).status_code == 409


@pytest.mark.parametrize(
    "steps,needle",
    [
        ([step("a", ["nope"])], "unknown step 'nope'"),
        ([step("a"), step("a")], "duplicate step key 'a'"),
        ([step("a", ["c"]), step("b", ["a"]), step("c", ["b"])], "cycle: a -> c -> b -> a"),
        ([step("a", ["a"])], "depends on itself"),
        ([{"key": "a", "engine": "nowhere", "operation": "x"}], "nowhere.x"),
        ([step("a b")], "key"),
    ],
)
async def test_validation_names_the_problem(api, store, steps, needle):
    r = await api.post("/api/v1/jobs/workflows", json={"name": "bad", "jobs": steps})
    assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text
    assert await store.workflows.col.count_documents({}) == 0 and await store.jobs.col.count_documents({}) == 0


async def test_step_cap(api, store, settings):
    settings.workflow_max_steps = 3
    r = await api.post("/api/v1/jobs/workflows", json={"name": "big", "jobs": [step(f"s{i}") for i in range(4)]})
    assert r.status_code == 422 and "at most 3 steps" in r.json()["error"]["message"]


async def test_why_a_step_waits(api, store):
    await store.engines.set_paused("testing", True)
    wf = await submit(api, [step("a"), step("b"), step("c", ["a", "b"])])
    body = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    assert body["status"] == "pending"
    by_key = {s["key"]: s for s in body["steps"]}
    deps = by_key["c"]["why"]["reasons"][0]
    assert deps["reason"] == "dependencies" and deps["waiting_for"] == ["a", "b"]
    reasons = {r["reason"]: r for r in by_key["b"]["why"]["reasons"]}
    assert reasons["paused"]["engine"] == "testing" and reasons["position"]["ahead"] == 1
    single = (await api.get(f"/api/v1/jobs/{by_key['a']['job_id']}/status")).json()
    assert {r["reason"] for r in single["why"]["reasons"]} == {"paused", "position"}
    listing = (await api.get("/api/v1/jobs/workflows")).json()
    assert [w["id"] for w in listing["workflows"]] == [wf["id"]]


async def test_a_workflow_of_many_steps_is_accepted(api, store):
    r = await api.post("/api/v1/jobs/workflows", json={"name": "wide", "jobs": [step(f"s{i}") for i in range(2000)]})
    assert r.status_code == 201 and len(r.json()["jobs"]) == 2000
    assert (await store.engines.get("testing"))["queued"] == 2000


async def test_a_fan_out_lost_with_its_worker_is_repaired(api, store):
    """A step completes and its worker dies before the fan-out: once the workflow has been
    quiet, the repair releases the child and re-counts. Repairing twice changes nothing."""
    from datetime import timedelta

    wf = await submit(api, [step("parent", op="ok"), step("child", ["parent"], op="ok")])
    ids = wf["jobs"]
    engine = await store.engines.get("testing")
    (claimed,) = await store.claimer.claim(engine, "wdead", 1)
    assert claimed["_id"] == ids["parent"]
    await dying_lifecycle(store).complete(claimed, claimed["lease_token"], {"v": 1}, 1)
    await store.lifecycle.drain()
    assert (await store.jobs.get(ids["child"]))["status"] == "pending"
    later = store.clock.now() + timedelta(hours=1)
    assert await store.flow.repair_stalled(store.clock.now() - timedelta(hours=1)) == 0  # not quiet yet
    assert await store.flow.repair_stalled(later) == 1
    assert await store.flow.repair_stalled(later) == 0
    assert (await store.jobs.get(ids["child"]))["status"] == "queued"
    assert (await store.workflows.get(wf["id"]))["open"] == 1


async def test_a_failed_steps_lost_fan_out_is_replayed(api, store):
    """A failed step carries the unsettled mark until its fan-out ran; replaying it applies the
    failure policy once."""
    from datetime import timedelta

    wf = await submit(api, [step("bad", op="permanent"), step("child", ["bad"], op="ok")])
    engine = await store.engines.get("testing")
    (claimed,) = await store.claimer.claim(engine, "wdead", 1)
    err = {"code": "x", "message": "m", "attempt": 1, "at": None, "worker": None}
    await dying_lifecycle(store).fail(claimed, claimed["lease_token"], err, 1)
    await store.lifecycle.drain()
    marked = await store.jobs.unsettled(store.clock.now() + timedelta(hours=1))
    assert [m["_id"] for m in marked] == [wf["jobs"]["bad"]]
    await store.flow.settle_many([wf["jobs"]["bad"]])
    await store.flow.settle_many([wf["jobs"]["bad"]])
    assert (await store.jobs.get(wf["jobs"]["child"]))["cancel_reason"] == "dependency_failed"
    done = await store.workflows.get(wf["id"])
    assert done["status"] == "failed" and done["open"] == 0 and done["n_failed"] == 1 and done["n_cancelled"] == 1


async def test_an_unsettled_mark_is_never_taken_for_an_expiry(api, store):
    """The mark shares the retention index: the cleaner, run far in the future, leaves a
    marked step alone, and the settle sweep still finds it."""
    from datetime import timedelta

    wf = await submit(api, [step("bad", op="permanent"), step("child", ["bad"], op="ok")])
    (claimed,) = await store.claimer.claim(await store.engines.get("testing"), "wdead", 1)
    err = {"code": "x", "message": "m", "attempt": 1, "at": None, "worker": None}
    await dying_lifecycle(store).fail(claimed, claimed["lease_token"], err, 1)
    assert await store.job_retention.expire_jobs(store.clock.now() + timedelta(days=3650)) == 0
    marked = await store.jobs.unsettled(store.clock.now() + timedelta(hours=1))
    assert [m["_id"] for m in marked] == [wf["jobs"]["bad"]]


async def test_marks_from_before_the_shared_index_are_carried_over(store):
    """An older version marked steps with `fanout_pending` under its own index: the upgrade
    moves each mark into `expires_at` and drops that index."""
    from datetime import timedelta

    await store.jobs.col.create_index("fanout_pending", sparse=True)
    await store.jobs.col.insert_one(
        {
            "_id": "old-step",
            "status": "failed",
            "workflow_id": "w",
            "fanout_pending": True,
            "completed_at": store.clock.now(),
        }
    )
    await store.jobs.ensure_indexes()
    assert "fanout_pending_1" not in await store.jobs.col.index_information()
    doc = await store.jobs.col.find_one({"_id": "old-step"})
    assert "fanout_pending" not in doc
    assert [m["_id"] for m in await store.jobs.unsettled(store.clock.now() + timedelta(hours=1))] == ["old-step"]


async def test_the_graph_is_kept_apart_from_the_counted_document(api, store):
    """Settling writes the workflow document once per batch; the graph, written only at
    creation and by add-jobs, lives in `workflow_graphs`, so those writes stay small."""
    wf = await submit(api, [step("a"), step("b", ["a"])])
    doc = await store.workflows.col.find_one({"_id": wf["id"]})
    assert "steps" not in doc and doc["open"] == 2
    assert await store.workflows.graph(wf["id"]) == {
        "a": {"job_id": wf["jobs"]["a"], "depends_on": []},
        "b": {"job_id": wf["jobs"]["b"], "depends_on": ["a"]},
    }
    assert (await store.workflows.get(wf["id"], steps=True))["steps"]["b"]["job_id"] == wf["jobs"]["b"]


async def test_graphs_stored_inside_the_workflow_are_moved_out(store):
    """An older version kept the graph inside the workflow document: the upgrade moves it."""
    graph = {"a": {"job_id": "j1", "depends_on": []}}
    await store.workflows.graphs.drop()  # as before the upgrade
    await store.workflows.col.insert_one({"_id": "old-wf", "status": "running", "steps": graph})
    await store.workflows.ensure_indexes()
    assert "steps" not in await store.workflows.col.find_one({"_id": "old-wf"})
    assert await store.workflows.graph("old-wf") == graph
    await store.workflows.col.insert_one({"_id": "older-wf", "status": "running", "steps": graph})
    await store.workflows.ensure_indexes()  # once done, later starts do not scan again
    assert "steps" in await store.workflows.col.find_one({"_id": "older-wf"})


async def test_a_fan_in_wider_than_the_result_cache_gets_every_parent(store):
    """A worker's parent-result cache is bounded; a step with more parents than it holds
    still receives every parent's result, and the cache stays within its bound."""
    from app.domain.workflow import StepSpec, WorkflowSpec
    from app.worker.executor import ResultCache

    roots = [StepSpec(key=f"r{i}", engine="testing", operation="collect") for i in range(5)]
    sink = StepSpec(key="sink", engine="testing", operation="collect", depends_on=[r.key for r in roots])
    wf = await store.workflows.create(WorkflowSpec(name="wide", jobs=[*roots, sink]), owner="admin")
    for r in roots:
        await store.jobs.col.update_one({"_id": wf["steps"][r.key]["job_id"]}, {"$set": {"result": {"from": r.key}}})
    cache = ResultCache(2)
    parents = await store.jobs.parent_results(await store.jobs.get(wf["steps"]["sink"]["job_id"]), cache)
    assert parents == {r.key: {"from": r.key} for r in roots}
    assert len(cache) <= 2
