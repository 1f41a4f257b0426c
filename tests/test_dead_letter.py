"""The dead letter and the operator endpoints over REST, against the real server: listing
failed jobs with filters and cursors, retrying one job (and what is refused), retrying by
filter, resetting stuck jobs, the engines' `queued` counters through all of it, and roles."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest

from app.api.auth import Principal, require_principal
from app.domain.workflow import StepSpec, WorkflowSpec
from app.errors import Conflict, InvalidTransition
from tests.helpers import wait_status


async def queued_counter(store, engine: str) -> int:
    await store.numbers.flush()  # an open seq block counts its unused numbers until it closes
    return (await store.engines.get(engine)).get("queued", 0)


async def assert_counter_exact(store, engine: str) -> None:
    assert await queued_counter(store, engine) == await store.jobs.count_queued(engine)


@pytest.fixture
async def as_user(store, settings):
    """An API client whose caller is `bob`, a member of tenant `acme`."""
    from app.main import create_app

    app = create_app(settings, store=store, workers=0, maintenance=False, live=False)
    app.dependency_overrides[require_principal] = lambda: Principal(user="bob", role="member", tenant="acme")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            yield client


# --- listing -----------------------------------------------------------------------------
async def test_dead_letter_lists_failed_jobs_newest_first_with_filters(api, jobs):
    a1 = await jobs.failed(engine="alpha", operation="send", code="timeout")
    a2 = await jobs.failed(engine="alpha", operation="render", code="bad_input")
    b1 = await jobs.failed(engine="beta", operation="send", code="timeout")
    await jobs.completed(engine="alpha")
    await jobs.cancelled(engine="alpha")
    await jobs.queued(engine="alpha")

    async def ids(**params):
        r = await api.get("/api/v1/jobs/dead-letter", params=params)
        assert r.status_code == 200, r.text
        return [j["id"] for j in r.json()["jobs"]]

    assert await ids() == [b1["_id"], a2["_id"], a1["_id"]]
    assert await ids(engine="alpha") == [a2["_id"], a1["_id"]]
    assert await ids(operation="send") == [b1["_id"], a1["_id"]]
    assert await ids(error_code="timeout", engine="alpha") == [a1["_id"]]
    assert await ids(error_code="nope") == []
    body = (await api.get("/api/v1/jobs/dead-letter", params={"engine": "beta"})).json()["jobs"][0]
    assert body["status"] == "failed" and body["last_error"]["code"] == "timeout" and len(body["errors"]) == 1


async def test_dead_letter_cursor_walks_every_failed_job_once(api, jobs):
    made = {(await jobs.failed(engine="gamma"))["_id"] for _ in range(7)}
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/v1/jobs/dead-letter", params=params)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and set(seen) == made and seen == sorted(seen, reverse=True)


async def test_dead_letter_of_the_deployment_merges_every_tenants_pages(store, jobs):
    made = [(await jobs.failed(engine="delta", owner=f"t{i % 3}/u"))["_id"] for i in range(8)]
    await jobs.completed(engine="delta", owner="t0/u")
    seen, cursor = [], None
    while True:
        page, cursor = await store.job_admin.dead_letter(engine="delta", after=cursor, limit=3)
        seen += [d["_id"] for d in page]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)
    mine, _ = await store.job_admin.dead_letter(engine="delta", tenant="t1", limit=50)
    assert [d["_id"] for d in mine] == [i for i in sorted(made, reverse=True) if i in made[1::3]]


async def test_dead_letter_refuses_unknown_and_injected_filters(api):
    for params in ({"status": "failed"}, {"engine[$ne]": "x"}, {"error_code": '{"$gt": ""}'}, {"cursor": "zz"}):
        r = await api.get("/api/v1/jobs/dead-letter", params=params)
        assert r.status_code == 422, (params, r.text)


async def test_a_plain_user_sees_only_their_own_failed_jobs(as_user, jobs):
    mine = await jobs.failed(owner="acme/bob")
    await jobs.failed(owner="admin")
    r = await as_user.get("/api/v1/jobs/dead-letter")
    assert [j["id"] for j in r.json()["jobs"]] == [mine["_id"]]


# --- retrying one job --------------------------------------------------------------------
async def test_retry_requeues_with_a_fresh_budget_and_keeps_the_history(api, store, jobs, worker):
    # Paused until the answer is read: the factory's own claim must win, not the worker's, and
    # the answer (the job as re-read) must not race the worker's claim of the retried job.
    await store.engines.set_paused("testing", True)
    job = await jobs.failed(engine="testing", code="timeout", retry_config={"max_retries": 0})
    before = await queued_counter(store, "testing")
    r = await api.post(f"/api/v1/jobs/{job['_id']}/retry")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "queued" and body["attempt"] == 0 and body["retry_count"] == 0
    assert [e["code"] for e in body["errors"]] == ["timeout"] and body["completed_at"] is None
    await store.engines.set_paused("testing", False)
    done = await wait_status(store, job["_id"], "completed")
    assert done["attempt"] == 1 and done["result"]["attempt"] == 1 and len(done["errors"]) == 1
    assert await queued_counter(store, "testing") == before == 0  # counted in, and out again by the claim


async def test_retry_a_cancelled_job(api, store, jobs):
    job = await jobs.cancelled(engine="delta")
    r = await api.post(f"/api/v1/jobs/{job['_id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued" and r.json()["cancel_reason"] is None
    assert await queued_counter(store, "delta") == 1
    await assert_counter_exact(store, "delta")
    claimed = await store.claimer.claim(await store.engines.get("delta"), "w", 5)
    assert [c["_id"] for c in claimed] == [job["_id"]]  # a fresh seq: claimers see it


@pytest.mark.parametrize("state", ["queued", "scheduled", "running", "completed"])
async def test_retry_refuses_jobs_that_are_not_failed_or_cancelled(api, store, jobs, state):
    job = await getattr(jobs, state)(engine="epsilon")
    before = await queued_counter(store, "epsilon")
    r = await api.post(f"/api/v1/jobs/{job['_id']}/retry")
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    assert (await store.jobs.get(job["_id"]))["status"] == state
    assert await queued_counter(store, "epsilon") == before


async def test_retry_unknown_job_is_404(api, as_user, jobs):
    r = await api.post("/api/v1/jobs/0123456789abcdef01234567/retry")
    assert r.status_code == 404
    theirs = await jobs.failed(owner="admin")
    assert (await as_user.post(f"/api/v1/jobs/{theirs['_id']}/retry")).status_code == 404


async def test_retry_of_a_workflow_step_points_to_the_workflow_retry(api, store, worker):
    await store.engines.set_limit("testing", 10)
    wf = await store.workflows.create(
        WorkflowSpec(
            name="w",
            jobs=[
                StepSpec(key="a", engine="testing", operation="permanent"),
                StepSpec(key="b", engine="testing", operation="ok", depends_on=["a"]),
            ],
        ),
        owner="admin",
    )
    step = wf["steps"]["a"]["job_id"]
    await wait_status(store, step, "failed")
    r = await api.post(f"/api/v1/jobs/{step}/retry")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["field"] == "workflow_id" and err["details"]["workflow_id"] == wf["_id"]
    assert err["details"]["retry_url"] == f"/api/v1/jobs/workflows/{wf['_id']}/retry"
    assert (await store.jobs.get(step))["status"] == "failed"
    with pytest.raises(Conflict):  # the store refuses too, for callers other than the API
        await store.job_admin.retry_job(step)


async def test_two_retries_of_one_job_move_it_once(store, jobs):
    job = await jobs.failed(engine="zeta")
    results = await asyncio.gather(*(store.job_admin.retry_job(job["_id"]) for _ in range(4)), return_exceptions=True)
    assert sum(isinstance(r, dict) for r in results) == 1
    assert all(isinstance(r, InvalidTransition) for r in results if not isinstance(r, dict))
    assert await queued_counter(store, "zeta") == 1
    await assert_counter_exact(store, "zeta")


async def test_retry_respects_a_live_job_holding_the_dedupe_key(api, store, jobs):
    old = await jobs.failed(engine="eta", dedupe_key="report")
    new = await jobs.queued(engine="eta", dedupe_key="report")  # the key was free once `old` failed
    r = await api.post(f"/api/v1/jobs/{old['_id']}/retry")
    assert r.status_code == 409 and r.json()["error"]["field"] == "dedupe_key"
    assert r.json()["error"]["details"]["job_id"] == new["_id"]
    await store.lifecycle.cancel(new["_id"])
    r = await api.post(f"/api/v1/jobs/{old['_id']}/retry")
    assert r.status_code == 200
    again, created = await store.lifecycle.submit(jobs.spec(engine="eta", dedupe_key="report"), owner="admin")
    assert not created and again["_id"] == old["_id"]  # the retried job holds the key again


# --- retrying by filter ------------------------------------------------------------------
async def test_bulk_retry_by_filter(api, store, jobs):
    t = [await jobs.failed(engine="theta", operation="send", code="timeout") for _ in range(3)]
    other_code = await jobs.failed(engine="theta", operation="send", code="bad_input")
    other_engine = await jobs.failed(engine="iota", operation="send", code="timeout")
    r = await api.post("/api/v1/jobs/retry", json={"engine": "theta", "error_code": "timeout", "limit": 2})
    assert r.status_code == 200, r.text
    assert r.json() == {"retried": 2, "matched": 3, "skipped_dedupe": 0, "skipped_steps": 0, "workflow_ids": []}
    statuses = [(await store.jobs.get(j["_id"]))["status"] for j in t]
    assert statuses == ["queued", "queued", "failed"]  # oldest failures first
    assert (await store.jobs.get(other_code["_id"]))["status"] == "failed"
    assert (await store.jobs.get(other_engine["_id"]))["status"] == "failed"
    await assert_counter_exact(store, "theta")
    r = await api.post("/api/v1/jobs/retry", json={"operation": "send"})
    assert r.json()["retried"] == 3
    await assert_counter_exact(store, "theta")
    await assert_counter_exact(store, "iota")


async def test_bulk_retry_by_failure_time(api, store, jobs):
    early = await jobs.failed(engine="kappa")
    await asyncio.sleep(0.05)
    late = await jobs.failed(engine="kappa")
    cut = late["completed_at"] - (late["completed_at"] - early["completed_at"]) / 2
    r = await api.post("/api/v1/jobs/retry", json={"engine": "kappa", "failed_before": cut.isoformat()})
    assert r.json()["retried"] == 1 and (await store.jobs.get(early["_id"]))["status"] == "queued"
    r = await api.post(
        "/api/v1/jobs/retry",
        json={"failed_after": cut.isoformat(), "failed_before": (cut + timedelta(hours=1)).isoformat()},
    )
    assert r.json()["retried"] == 1 and (await store.jobs.get(late["_id"]))["status"] == "queued"
    r = await api.post("/api/v1/jobs/retry", json={"failed_after": cut.isoformat(), "failed_before": cut.isoformat()})
    assert r.status_code == 422
    assert (await api.post("/api/v1/jobs/retry", json={"limit": 0})).status_code == 422
    assert (await api.post("/api/v1/jobs/retry", json={"status": "failed"})).status_code == 422


async def test_bulk_retry_names_workflows_instead_of_retrying_their_steps(api, store, worker):
    await store.engines.set_limit("testing", 10)
    wf = await store.workflows.create(
        WorkflowSpec(name="w", jobs=[StepSpec(key="a", engine="testing", operation="permanent")]), owner="admin"
    )
    await wait_status(store, wf["steps"]["a"]["job_id"], "failed")
    r = await api.post("/api/v1/jobs/retry", json={"engine": "testing"})
    assert r.json() == {
        "retried": 0,
        "matched": 0,
        "skipped_dedupe": 0,
        "skipped_steps": 1,
        "workflow_ids": [wf["_id"]],
    }


async def test_bulk_retry_and_reset_need_the_admin_role(as_user):
    for path in ("/api/v1/jobs/retry", "/api/v1/admin/jobs/reset-stuck"):
        r = await as_user.post(path, json={})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# --- stuck jobs --------------------------------------------------------------------------
async def test_reset_stuck_requeues_expired_leases_and_reports(api, store, jobs, settings):
    stuck = await jobs.running(engine="lambda")
    last = await jobs.running(engine="lambda", retry_config={"max_retries": 0})
    other = await jobs.running(engine="mu")
    await asyncio.sleep(settings.lease_seconds + 0.2)  # nobody heartbeats them: their worker is gone
    fresh = await jobs.running(engine="lambda")  # a live lease is not stuck
    r = await api.post("/api/v1/admin/jobs/reset-stuck", json={"engine": "lambda", "dry_run": True})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["dry_run"] and {j["job_id"]: j["new_status"] for j in report["jobs"]} == {
        stuck["_id"]: "queued",
        last["_id"]: "failed",
    }
    assert (await store.jobs.get(stuck["_id"]))["status"] == "running"  # a dry run changes nothing
    report = (await api.post("/api/v1/admin/jobs/reset-stuck", json={"engine": "lambda"})).json()
    assert report["requeued"] == 1 and report["failed"] == 1
    assert {j["lease_owner"] for j in report["jobs"]} == {"wfactory"}
    requeued = await store.jobs.get(stuck["_id"])
    assert requeued["status"] == "queued" and requeued["errors"][-1]["code"] == "lease_expired"
    assert (await store.jobs.get(last["_id"]))["status"] == "failed"
    assert (await store.jobs.get(fresh["_id"]))["status"] == "running"
    assert (await store.jobs.get(other["_id"]))["status"] == "running"  # another engine: not asked for
    await assert_counter_exact(store, "lambda")
    dead = (await api.get("/api/v1/jobs/dead-letter", params={"error_code": "lease_expired"})).json()["jobs"]
    assert [j["id"] for j in dead] == [last["_id"]]
    report = (await api.post("/api/v1/admin/jobs/reset-stuck")).json()
    assert [j["job_id"] for j in report["jobs"]] == [other["_id"]]  # no body: every engine


async def test_openapi_lists_the_new_routes(api):
    paths = (await api.get("/openapi.json")).json()["paths"]
    for p in (
        "/api/v1/jobs/dead-letter",
        "/api/v1/jobs/retry",
        "/api/v1/jobs/{job_id}/retry",
        "/api/v1/admin/jobs/reset-stuck",
    ):
        assert p in paths, p
