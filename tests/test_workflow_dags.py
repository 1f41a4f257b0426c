"""Random DAGs (hypothesis) run by several real worker processes: from the timestamps in
the database, no step started before all of its dependencies completed, and every
workflow ended in a terminal state."""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from app.domain.workflow import StepSpec, WorkflowSpec
from tests.helpers import eventually
from tests.procs import start_worker, stop


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=14))
    steps = []
    for i in range(n):
        deps = draw(st.lists(st.integers(min_value=0, max_value=i - 1), unique=True, max_size=min(i, 4))) if i else []
        op = draw(st.sampled_from(["ok", "ok", "ok", "flaky"]))
        steps.append({"key": f"n{i}", "depends_on": [f"n{d}" for d in deps], "op": op})
    return steps


def generate(count: int) -> list[list[dict]]:
    out: list[list[dict]] = []

    @hsettings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(dags())
    def collect(dag):
        out.append(dag)

    collect()
    return out[:count]


async def test_random_dags_respect_dependencies(db_url, store):
    await store.engines.set_limit("testing", 8)
    workers = [start_worker(db_url, store.db.name, concurrency=4) for _ in range(3)]
    try:
        made = []
        for dag in generate(12):
            spec = WorkflowSpec(
                name="random",
                jobs=[
                    StepSpec(
                        key=s["key"],
                        engine="testing",
                        operation=s["op"],
                        depends_on=s["depends_on"],
                        parameters={"succeed_on": 2},
                        retry_config={"max_retries": 2, "retry_delay_seconds": 0.05},
                    )
                    for s in dag
                ],
            )
            made.append(await store.workflows.create(spec, owner="admin"))

        async def all_done():
            docs = [await store.workflows.get(w["_id"]) for w in made]
            return all(d["status"] in ("completed", "failed", "cancelled") for d in docs)

        await eventually(all_done, timeout=120, interval=0.2)
    finally:
        for w in workers:
            stop(w)
    for wf in made:
        assert (await store.workflows.get(wf["_id"]))["status"] == "completed"
        steps = {s["step_key"]: s for s in await store.jobs.steps_of(wf["_id"])}
        for s in steps.values():
            for d in s.get("depends_on", []):
                # The two stamps come from different processes' estimates of the server clock,
                # each within half a round trip of it: allow 20 ms for that, nothing more.
                gap = (s["started_at"] - steps[d]["completed_at"]).total_seconds()
                assert gap >= -0.02, f"{s['step_key']} started {-gap:.3f}s before {d} completed"
    assert (await store.engines.get("testing")).get("running", 0) == 0


async def test_fail_fast_tells_the_steps_it_cancels_why(api, store, worker, live):
    """A step that fail_fast stops, running or waiting, says the workflow failed and which
    step failed, in the API and in its event, not "cancelled by user"."""
    await store.engines.set_limit("testing", 50)
    r = await api.post(
        "/api/v1/jobs/workflows",
        json={
            "name": "ff",
            "failure_policy": "fail_fast",
            "jobs": [
                {"key": "slow", "engine": "testing", "operation": "wait_cancel", "parameters": {"max": 60}},
                {"key": "later", "engine": "testing", "operation": "ok", "depends_on": ["slow"]},
            ],
        },
    )
    assert r.status_code == 201, r.text
    wf_id = r.json()["id"]

    async def step_status(key):
        steps = (await api.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()["steps"]
        return next(s for s in steps if s["key"] == key)

    await eventually(lambda: _is(step_status("slow"), "running"))
    r = await api.post(
        f"/api/v1/jobs/workflows/{wf_id}/jobs",
        json={
            "jobs": [
                {"key": "bad", "engine": "testing", "operation": "permanent"},
                {"key": "after", "engine": "testing", "operation": "ok", "depends_on": ["bad"]},
            ]
        },
    )
    assert r.status_code in (200, 201), r.text

    async def failed():
        body = (await api.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
        return body if body["status"] == "failed" else None

    body = await eventually(failed, timeout=30)
    steps = {s["key"]: s for s in body["steps"]}
    why = "workflow_failed: step 'bad' failed"
    assert steps["slow"]["status"] == steps["later"]["status"] == "cancelled"
    assert steps["slow"]["cancel_reason"] == steps["later"]["cancel_reason"] == why
    assert steps["after"]["cancel_reason"] == "dependency_failed"  # it depended on the failed step
    slow = (await api.get(f"/api/v1/jobs/{steps['slow']['job_id']}/status")).json()
    assert slow["cancel_reason"] == why

    async def cancelled_event(key):
        events = await store.events.since(0, job_id=steps[key]["job_id"])
        return next((e for e in events if e["type"] == "job.cancelled"), None)

    for key in ("later", "slow"):  # waiting, and running when it was stopped
        assert (await eventually(lambda k=key: cancelled_event(k), timeout=20))["reason"] == why, key


async def _is(step, status) -> bool:
    return (await step)["status"] == status
