"""Map steps against the real server (docs/map-steps.md): a step with `map_over` runs once per
item of a list in its parent's result, and its dependents get the children's results as a
list in item order; its failures, its cap, its "why", its graph, and its repair."""

from __future__ import annotations

import asyncio
import time

import pytest
from pymongo import monitoring

from app import JobContext, PermanentError, handler
from app.domain.workflow import StepSpec, WorkflowSpec
from app.store import connect
from tests.helpers import eventually, wait_workflow


@handler(engine="testing", operation="fail_item")
async def fail_item(ctx: JobContext) -> dict:
    """A mapped child that fails for good on the item named by `bad`, and is slow on the
    others when `seconds` says so."""
    if ctx.params.get("item") == ctx.params.get("bad"):
        raise PermanentError("bad_item", f"item {ctx.params['item']!r} cannot be done")
    await asyncio.sleep(ctx.params.get("seconds", 0))
    return {"item": ctx.params["item"], "index": ctx.params["index"]}


@pytest.fixture(autouse=True)
async def roomy_engine(store):
    await store.engines.set_limit("testing", 50)


def step(key, deps=(), op="collect", **kw):
    return {"key": key, "engine": "testing", "operation": op, "depends_on": list(deps), **kw}


def mapped(items, *, policy="fail_fast", op="ok", params=None, map_over="src.value"):
    """src (returns `items` as its `value`) -> each (mapped over it) -> sink (a fan-in)."""
    return {
        "name": "map",
        "failure_policy": policy,
        "jobs": [
            step("src", parameters={"value": items}),
            step("each", ["src"], op=op, map_over=map_over, parameters=params or {"style": "short"}),
            step("sink", ["each"]),
        ],
    }


async def submit(api, body):
    r = await api.post("/api/v1/jobs/workflows", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def docs(store, wf_id):
    return {s["step_key"]: s for s in await store.jobs.steps_of(wf_id)}


@pytest.mark.parametrize("items", [[], ["only"], ["a", {"b": 2}, 3, None, ["e"]]], ids=["0", "1", "5"])
async def test_a_map_gives_its_fan_in_the_results_in_item_order(api, store, worker, items):
    wf = await submit(api, mapped(items))
    body = await wait_workflow(api, wf["id"])
    steps = await docs(store, wf["id"])
    each = steps["each"]
    assert each["status"] == "completed"
    assert [r["params"] for r in each["result"]] == [
        {"style": "short", "item": item, "index": i} for i, item in enumerate(items)
    ]
    sink = steps["sink"]["result"]
    assert sink["parents"]["each"] == each["result"] and sink["n_parents"] == 1
    children = [steps[f"each[{i}]"] for i in range(len(items))]
    assert all(c["status"] == "completed" and c["map_of"] == each["_id"] for c in children)
    assert body["total"] == 3 + len(items) and body["counts"]["completed"] == 3 + len(items)
    assert {s["key"] for s in body["steps"]} == {"src", "each", "sink", *(f"each[{i}]" for i in range(len(items)))}
    for c in children:  # each child started after the list's step completed, the join after each child
        assert c["started_at"] >= steps["src"]["completed_at"] and each["completed_at"] >= c["completed_at"]
    assert steps["sink"]["started_at"] >= each["completed_at"]


async def test_a_path_into_the_result(api, store, worker):
    """`key.a.0.b`: object keys and list indices; the whole result when only a key is given."""
    body = {
        "name": "paths",
        "jobs": [
            step("src", parameters={"value": {"pages": [{"rows": [10, 20]}]}}),
            step("rows", ["src"], op="ok", map_over="src.value.pages.0.rows"),
            step("whole", ["rows"], op="ok", map_over="rows"),
        ],
    }
    wf = await submit(api, body)
    await wait_workflow(api, wf["id"])
    steps = await docs(store, wf["id"])
    assert [r["params"]["item"] for r in steps["rows"]["result"]] == [10, 20]
    assert [r["params"]["item"]["params"]["item"] for r in steps["whole"]["result"]] == [10, 20]


@pytest.mark.parametrize(
    "map_over,code,needle",
    [
        ("src.value", "map_not_a_list", "map_over 'src.value' is a string, not a list"),
        ("src.nothing", "map_path_missing", "src is an object of 3 keys, with no 'nothing' in it"),
        ("src.value.0", "map_path_missing", "src.value is a string, with no '0' in it"),
    ],
)
async def test_no_list_at_the_path_fails_the_step_clearly(api, store, worker, map_over, code, needle):
    wf = await submit(api, mapped("not a list", map_over=map_over))
    body = await wait_workflow(api, wf["id"], ("failed",))
    steps = await docs(store, wf["id"])
    err = steps["each"]["last_error"]
    assert steps["each"]["status"] == "failed" and err["code"] == code and needle in err["message"], err
    assert steps["sink"]["status"] == "cancelled" and steps["sink"]["cancel_reason"] == "dependency_failed"
    assert body["total"] == 3


async def test_a_list_over_the_cap_fails_the_step_naming_path_and_length(api, store, worker, settings):
    settings.map_max_items = 3
    wf = await submit(api, mapped([1, 2, 3, 4]))
    await wait_workflow(api, wf["id"], ("failed",))
    err = (await docs(store, wf["id"]))["each"]["last_error"]
    assert err["code"] == "map_too_large"
    assert err["message"] == "step 'each': map_over 'src.value' is a list of 4 items; a map step takes at most 3"
    settings.map_max_items, settings.workflow_max_steps = 1000, 6  # the workflow's cap bounds it too
    wf = await submit(api, mapped([1, 2, 3, 4]))
    await wait_workflow(api, wf["id"], ("failed",))
    err = (await docs(store, wf["id"]))["each"]["last_error"]
    assert err["code"] == "map_too_large" and "the workflow would have 7 steps, at most 6" in err["message"]


async def test_a_failing_child_under_fail_fast(api, store, worker):
    """The failed child's map step and its dependents are cancelled as its descendants; its
    siblings still running or waiting are stopped because the workflow failed."""
    items = list(range(8))
    body = mapped(items, op="fail_item", params={"bad": 0, "seconds": 30})
    body["jobs"].append(step("other", op="stubborn", parameters={"seconds": 30}))
    wf = await submit(api, body)
    await wait_workflow(api, wf["id"], ("failed",), timeout=30)
    steps = await docs(store, wf["id"])
    assert steps["each[0]"]["status"] == "failed"
    assert steps["each"]["status"] == steps["sink"]["status"] == "cancelled"
    assert steps["each"]["cancel_reason"] == steps["sink"]["cancel_reason"] == "dependency_failed"
    for i in range(1, 8):
        assert steps[f"each[{i}]"]["status"] == "cancelled"
        assert steps[f"each[{i}]"]["cancel_reason"].startswith("workflow_failed: step 'each[0]' failed")
    assert steps["other"]["cancel_reason"].startswith("workflow_failed: step 'each[0]' failed")


async def test_a_failing_child_under_continue_then_a_retry(api, store, worker):
    """The other children finish; the map step is cancelled as a step whose parent failed
    (`dependency_failed`), and so is its fan-in; independent steps run. A retry re-runs the
    failed child, then joins the map step in item order."""
    body = mapped(["x", "y", "z"], policy="continue", op="fail_item", params={"bad": "y"})
    body["jobs"].append(step("other"))
    wf = await submit(api, body)
    res = await wait_workflow(api, wf["id"], ("failed",))
    steps = await docs(store, wf["id"])
    assert [steps[f"each[{i}]"]["status"] for i in range(3)] == ["completed", "failed", "completed"]
    assert steps["each"]["status"] == "cancelled" and steps["each"]["cancel_reason"] == "dependency_failed"
    assert steps["sink"]["cancel_reason"] == "dependency_failed" and steps["other"]["status"] == "completed"
    assert res["counts"]["failed"] == 1 and res["counts"]["cancelled"] == 2
    # The failing item is fixed (its parameter, here): the retry re-runs it and joins.
    await store.jobs.col.update_one({"_id": steps["each[1]"]["_id"]}, {"$set": {"parameters.bad": "none"}})
    r = await api.post(f"/api/v1/jobs/workflows/{wf['id']}/retry")
    assert r.status_code == 200 and set(r.json()["jobs"]) == {"each[1]", "each", "sink"}, r.text
    await wait_workflow(api, wf["id"])
    steps = await docs(store, wf["id"])
    assert [r["item"] for r in steps["each"]["result"]] == ["x", "y", "z"]
    assert steps["sink"]["result"]["parents"]["each"] == steps["each"]["result"]


@pytest.mark.parametrize(
    "jobs,field,needle",
    [
        ([step("a"), step("m", map_over="a.x")], "jobs[1].map_over", "maps over 'a', which is not in its depends_on"),
        ([step("a"), step("m", ["a"], map_over="b.x")], "jobs[1].map_over", "not in its depends_on"),
        ([step("a"), step("m", ["a"], map_over="a..x")], "jobs[1].map_over", "'<parent key>.<path to a list>'"),
        ([step("a"), step("m", ["a"], map_over="a.x y")], "jobs[1].map_over", "'<parent key>.<path to a list>'"),
        ([step("a"), step("m", ["a"], map_over="")], "jobs[1].map_over", "'<parent key>.<path to a list>'"),
        (
            [step("a"), step("m", ["a"], map_over="a.x", parameters={"item": 1})],
            "jobs[1].parameters",
            "may not hold 'item'",
        ),
    ],
)
async def test_map_over_is_checked_at_submit(api, store, jobs, field, needle):
    r = await api.post("/api/v1/jobs/workflows", json={"name": "bad", "jobs": jobs})
    err = r.json()["error"]
    assert r.status_code == 422 and err["field"] == field and needle in err["message"], r.text
    assert await store.jobs.col.count_documents({}) == 0
    wf = await submit(api, {"name": "ok", "jobs": [step("a", op="wait_cancel")]})
    r = await api.post(f"/api/v1/jobs/workflows/{wf['id']}/jobs", json={"jobs": jobs[1:]})  # adding steps: the same
    assert r.status_code == 422 and r.json()["error"]["field"] == field.replace("jobs[1]", "jobs[0]"), r.text


async def _complete(store, job_id: str, result) -> None:
    """Run one step by hand: claim it and complete it with `result`, settling at once."""
    job = await store.jobs.get(job_id)
    claimed = await store.claimer.claim(await store.engines.get(job["engine"]), "whand", 1)
    assert [c["_id"] for c in claimed] == [job_id]
    await store.lifecycle.complete(claimed[0], claimed[0]["lease_token"], result, 1)
    await store.lifecycle.drain()


async def test_why_a_map_step_waits_and_the_graph_it_grows(api, store):
    wf = await submit(api, mapped([]))
    body = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    each = next(s for s in body["steps"] if s["key"] == "each")
    assert each["why"]["reasons"][0]["waiting_for"] == ["src"]  # before: its parent, as any step
    await _complete(store, wf["jobs"]["src"], {"value": list("abcd")})
    body = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    by_key = {s["key"]: s for s in body["steps"]}
    reason = by_key["each"]["why"]["reasons"][0]
    assert reason == {
        "reason": "map_children",
        "waiting": 4,
        "items": 4,
        "map_over": "src.value",
        "message": "maps over src.value: waits for 4 of its 4 children (each[0] .. each[3])",
    }
    assert by_key["each"]["depends_on"] == ["src", "each[0]", "each[1]", "each[2]", "each[3]"]
    assert by_key["each[2]"]["depends_on"] == ["src"] and by_key["each[2]"]["status"] == "queued"
    graph = await store.workflows.graph(wf["id"])
    assert graph["each[3]"] == {"job_id": by_key["each[3]"]["job_id"], "depends_on": ["src"]}
    assert graph["each"]["depends_on"] == ["src", "each[0]", "each[1]", "each[2]", "each[3]"]
    assert body["total"] == 7 and body["counts"]["queued"] == 4
    await _complete(store, by_key["each[0]"]["job_id"], {"n": 0})  # the first in line
    single = (await api.get(f"/api/v1/jobs/{by_key['each']['job_id']}/status")).json()
    assert single["why"]["reasons"][0]["waiting"] == 3


async def test_a_map_step_added_to_a_running_workflow(api, store, worker):
    """Added by `POST .../jobs` over a parent that already completed: it expands at once."""
    wf = await submit(
        api, {"name": "late", "jobs": [step("src", parameters={"value": [1, 2]}), step("gate", op="wait_cancel")]}
    )
    await eventually(lambda: _status(store, wf["id"], "src", "completed"))
    r = await api.post(
        f"/api/v1/jobs/workflows/{wf['id']}/jobs",
        json={"jobs": [step("each", ["src"], op="ok", map_over="src.value"), step("sink", ["each"])]},
    )
    assert r.status_code == 200, r.text
    await eventually(lambda: _status(store, wf["id"], "sink", "completed"))
    steps = await docs(store, wf["id"])
    assert [p["params"]["item"] for p in steps["sink"]["result"]["parents"]["each"]] == [1, 2]


async def _status(store, wf_id, key, status):
    return (await docs(store, wf_id)).get(key, {}).get("status") == status


async def test_an_expansion_cut_short_is_finished_by_the_repair(api, store, worker):
    """The process expanding a map step dies after its claim, before the children exist:
    once the workflow is quiet, the repair makes them (once), and the workflow completes."""
    from datetime import timedelta

    real = store.lifecycle.insert_many
    calls = []

    async def dies(docs):
        if not any("map_of" in d for d in docs):
            return await real(docs)
        calls.append(len(docs))
        raise ConnectionError("the process died here")

    store.lifecycle.insert_many = dies
    wf = await submit(api, mapped(["a", "b", "c"]))
    await eventually(lambda: _status(store, wf["id"], "src", "completed"))
    await eventually(lambda: asyncio.sleep(0.05, bool(calls)))
    store.lifecycle.insert_many = real
    each = (await docs(store, wf["id"]))["each"]
    assert each["status"] == "pending" and each["kind"] == "map_join" and len(each["map_children"]) == 3
    assert await store.flow.repair_stalled(store.clock.now() - timedelta(hours=1)) == 0  # not quiet yet
    later = store.clock.now() + timedelta(hours=1)
    assert await store.flow.repair_stalled(later) == 1
    assert await store.flow.repair_stalled(later) == 0  # done once
    body = await wait_workflow(api, wf["id"])
    assert body["total"] == 6
    assert [r["params"]["item"] for r in (await docs(store, wf["id"]))["each"]["result"]] == ["a", "b", "c"]


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event):
        self.names.append(event.command_name)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass


async def test_a_1000_item_map_is_made_in_a_few_bulk_writes(db_url, store, settings):
    """The expansion of 1,000 items: one insert and one seq `$inc` for the children, a
    handful of other writes, then a fan-in that gets all 1,000 results in order."""
    listener = Commands()
    watched = connect(db_url, settings, db_name=store.db.name, event_listeners=[listener])
    await watched.start()
    try:
        spec = WorkflowSpec(
            name="wide",
            jobs=[
                StepSpec(key="src", engine="testing", operation="collect", parameters={"value": list(range(1000))}),
                StepSpec(key="each", engine="testing", operation="ok", depends_on=["src"], map_over="src.value"),
                StepSpec(key="sink", engine="testing", operation="collect", depends_on=["each"]),
            ],
        )
        wf = await watched.workflows.create(spec, owner="admin")
        src = await watched.jobs.get(wf["steps"]["src"]["job_id"])
        (claimed,) = await watched.claimer.claim(await watched.engines.get("testing"), "whand", 1)
        listener.names.clear()
        t0 = time.perf_counter()
        await watched.lifecycle.complete(claimed, claimed["lease_token"], {"value": list(range(1000))}, 1)
        await watched.lifecycle.drain()
        took = time.perf_counter() - t0
        writes = [n for n in listener.names if n in ("insert", "update", "delete")]
        assert listener.names.count("insert") == 1, listener.names
        assert len(writes) <= 16, writes
        assert (await watched.engines.get("testing"))["queued"] == 1000
        body = await watched.workflows.get(wf["_id"])
        assert body["total"] == 1003 and body["open"] == 1002
        print(f"1,000-item map made in {took:.2f}s with {len(listener.names)} commands ({len(writes)} writes)")
        assert src["status"] == "queued"
    finally:
        await watched.close()


async def test_a_1000_item_map_runs_to_its_fan_in(api, store, worker):
    items = [{"n": i} for i in range(1000)]
    wf = await submit(api, mapped(items))
    await wait_workflow(api, wf["id"], timeout=180)
    steps = await docs(store, wf["id"])
    assert [r["params"]["item"] for r in steps["sink"]["result"]["parents"]["each"]] == items
    assert [r["params"]["index"] for r in steps["each"]["result"]] == list(range(1000))


async def test_the_benchmarks_map_row_runs(db_url):
    """scripts/bench's "a 1,000-item map makes its children" row, at a smaller size: the
    code path it times expands the map on a real server."""
    import sys
    import uuid
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import bench_switchyard

    db = f"t_{uuid.uuid4().hex[:12]}"
    try:
        out = await bench_switchyard.map_expand(db_url, db, 50)
    finally:
        from pymongo import AsyncMongoClient

        client = AsyncMongoClient(db_url)
        await client.drop_database(db)
        await client.close()
    assert out["items"] == 50 and out["seconds"] > 0


async def test_a_map_survives_a_killed_worker(db_url, store, settings):
    """Worker processes run a 40-item map; one is SIGKILLed while it holds children. Its
    leases run out and the children run again elsewhere, fan-outs it never ran are repaired,
    and the map step still joins every result, in item order, after its last child."""
    import signal
    from datetime import timedelta

    from app.worker.maintenance import Maintenance
    from tests.procs import start_worker, stop

    await store.engines.set_limit("testing", 16)
    items = list(range(40))
    spec = WorkflowSpec(
        name="kill",
        jobs=[
            StepSpec(key="src", engine="testing", operation="collect", parameters={"value": items}),
            StepSpec(
                key="each",
                engine="testing",
                operation="stubborn",
                depends_on=["src"],
                map_over="src.value",
                parameters={"seconds": 0.4},
                retry_config={"max_retries": 5, "retry_delay_seconds": 0.05},
            ),
            StepSpec(key="sink", engine="testing", operation="collect", depends_on=["each"]),
        ],
    )
    maint = Maintenance(store, settings)
    await maint.start()
    workers = [start_worker(db_url, store.db.name, concurrency=8) for _ in range(2)]
    try:
        wf = await store.workflows.create(spec, owner="admin")

        async def holders():
            """pids of the worker processes running mapped children's handlers: claimed and
            the claim's start recorded, so the kill charges an attempt (a claim killed before
            its start mark is refunded with no error, rightly)."""
            by_id = {w["_id"]: w for w in await store.workers.list()}
            running = await store.jobs.col.find(
                {"workflow_id": wf["_id"], "status": "running", "map_of": each_id},
                {"lease_owner": 1, "lease_token": 1},
            ).to_list(None)
            return {
                by_id[r["lease_owner"]]["pid"]
                for r in running
                if r.get("lease_owner") in by_id and r["lease_token"] in (by_id[r["lease_owner"]].get("started") or {})
            }

        each_id = wf["steps"]["each"]["job_id"]
        pids = await eventually(holders, timeout=60)
        victim = next(w for w in workers if w.pid in pids)
        stop(victim, signal.SIGKILL)
        workers.append(start_worker(db_url, store.db.name, concurrency=8))

        async def done():
            await store.flow.repair_stalled(store.clock.now() + timedelta(hours=1))  # as if quiet for 30 s
            return (await store.workflows.get(wf["_id"]))["status"] != "running"

        await eventually(done, timeout=120, interval=0.5)
    finally:
        for w in workers:
            stop(w)
        await maint.stop()
    steps = await docs(store, wf["_id"])
    assert (await store.workflows.get(wf["_id"]))["status"] == "completed"
    each = steps["each"]
    assert each["result"] == [steps[f"each[{i}]"]["result"] for i in items]
    assert steps["sink"]["result"]["parents"]["each"] == each["result"]
    assert all(each["completed_at"] >= steps[f"each[{i}]"]["completed_at"] for i in items)
    assert steps["sink"]["started_at"] >= each["completed_at"]
    assert sum(len(steps[f"each[{i}]"].get("errors") or []) for i in items) >= 1  # the kill cost some a lease
