"""Usage reported by handlers (`ctx.usage`) against the real server: per attempt and summed
on the job, aggregated by `GET /api/v1/usage` with tenant scoping, refused when it is not a
number, and counted in Prometheus."""

from __future__ import annotations

import math

import httpx
import pytest
from prometheus_client import REGISTRY

from app import JobContext, handler
from app.domain.retry import RetryConfig
from tests.conftest import TOKEN
from tests.helpers import wait_status

BAD = {
    "string_cost": {"cost": "0.5"},
    "negative": {"tokens_in": -1},
    "nan": {"cost": math.nan},
    "inf": {"tokens_out": math.inf},
    "bad_name": {"a-b": 1},
    "fractional_tokens": {"tokens_in": 1.5},
}


@handler(engine="usage", operation="report")
async def report(ctx: JobContext) -> dict:
    """Twice on attempt 1, then fails if asked; once on a retry."""
    if ctx.attempt == 1:
        await ctx.usage(tokens_in=10, tokens_out=5, cost=0.25)
        await ctx.usage(tokens_in=1, images=2)
        if ctx.params.get("fail_first"):
            raise ConnectionError("the provider hung up")
    else:
        await ctx.usage(tokens_in=100, tokens_out=50, cost=0.5)
    return {"attempt": ctx.attempt}


@handler(engine="usage", operation="bad")
async def bad(ctx: JobContext) -> dict:
    await ctx.usage(tokens_in=3)
    try:
        await ctx.usage(**BAD[ctx.params["kind"]])
    except ValueError as exc:
        return {"raised": str(exc)}
    return {"raised": None}


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_usage_per_attempt_and_summed_on_the_job(worker, jobs, store):
    tokens_in = sample("switchyard_usage_tokens_total", engine="usage", direction="in")
    cost = sample("switchyard_usage_cost_total", engine="usage")
    cfg = RetryConfig(max_retries=2, retry_delay_seconds=0.01)
    job = await jobs.queued(engine="usage", operation="report", parameters={"fail_first": True}, retry_config=cfg)
    done = await wait_status(store, job["_id"], "completed")
    assert done["attempt"] == 2
    assert done["usage"] == {"tokens_in": 111, "tokens_out": 55, "cost": 0.75, "counters": {"images": 2}}
    per = {d["attempt"]: d for d in await store.usage.col.find({"job_id": job["_id"]}).to_list(None)}
    assert set(per) == {1, 2}
    assert (per[1]["tokens_in"], per[1]["tokens_out"], per[1]["cost"], per[1]["counters"]) == (
        11,
        5,
        0.25,
        {"images": 2},
    )
    assert (per[2]["tokens_in"], per[2]["tokens_out"], per[2]["cost"]) == (100, 50, 0.5)
    assert per[2]["engine"] == "usage" and per[2]["tenant"] == "default" and per[2]["owner"] == "admin"
    assert per[2]["day"] == store.clock.now().date().isoformat()
    assert sample("switchyard_usage_tokens_total", engine="usage", direction="in") == tokens_in + 111
    assert sample("switchyard_usage_cost_total", engine="usage") == pytest.approx(cost + 0.75)


@pytest.mark.parametrize("kind", sorted(BAD))
async def test_a_bad_usage_call_raises_and_writes_nothing(worker, jobs, store, kind):
    job = await jobs.queued(engine="usage", operation="bad", parameters={"kind": kind})
    done = await wait_status(store, job["_id"], "completed")
    assert done["result"]["raised"]
    assert done["usage"] == {"tokens_in": 3}  # the good call before it, nothing of the bad one
    [doc] = await store.usage.col.find({"job_id": job["_id"]}).to_list(None)
    assert doc["tokens_in"] == 3 and "cost" not in doc and "counters" not in doc


def client(app, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
async def app(store, settings):
    from app.main import create_app

    app = create_app(settings, store=store, workers=0, maintenance=False, live=False)
    async with app.router.lifespan_context(app):
        yield app


async def _tenant_token(app, tenant: str) -> str:
    async with client(app, TOKEN) as c:
        r = await c.post("/api/v1/auth/keys", json={"name": "k", "tenant": tenant, "user": "u", "role": "member"})
        assert r.status_code == 201, r.text
        return r.json()["token"]


async def test_the_usage_api_groups_and_scopes(app, worker, jobs, store):
    ta = await jobs.queued(engine="usage", operation="report", owner="ta/alice")
    ta2 = await jobs.queued(engine="usage", operation="report", owner="ta/alice")
    tb = await jobs.queued(engine="usage", operation="report", owner="tb/bob")
    for j in (ta, ta2, tb):
        await wait_status(store, j["_id"], "completed")
    today = store.clock.now().date().isoformat()
    async with client(app, TOKEN) as admin:
        r = await admin.get("/api/v1/usage", params={"group_by": "tenant", "from": today, "to": today})
        assert r.status_code == 200, r.text
        rows = {row["key"]: row for row in r.json()["rows"]}
        assert set(rows) == {"ta", "tb"}
        assert rows["ta"]["tokens_in"] == 22 and rows["ta"]["attempts"] == 2 and rows["ta"]["cost"] == 0.5
        assert rows["ta"]["counters"] == {"images": 4} and rows["tb"]["tokens_out"] == 5
        by_engine = (await admin.get("/api/v1/usage", params={"group_by": "engine"})).json()["rows"]
        assert [(r["key"], r["tokens_in"]) for r in by_engine] == [("usage", 33)]
        by_day = (await admin.get("/api/v1/usage", params={"group_by": "day"})).json()["rows"]
        assert [(r["key"], r["attempts"]) for r in by_day] == [(today, 3)]
        past = (await admin.get("/api/v1/usage", params={"to": "2000-01-01"})).json()["rows"]
        assert past == []
        job = (await admin.get(f"/api/v1/jobs/{ta['_id']}/status")).json()
        assert job["usage"] == {"tokens_in": 11, "tokens_out": 5, "cost": 0.25, "counters": {"images": 2}}
    async with client(app, await _tenant_token(app, "ta")) as mine:
        r = await mine.get("/api/v1/usage", params={"group_by": "job"})
        assert {row["key"] for row in r.json()["rows"]} == {ta["_id"], ta2["_id"]}
        r = await mine.get("/api/v1/usage", params={"group_by": "tenant"})
        assert [row["key"] for row in r.json()["rows"]] == ["ta"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"group_by": "owner"}, "query.group_by"),
        ({"from": "2024-02-30"}, "query.from"),
        ({"from": "yesterday"}, "query.from"),
        ({"from": "2024-03-02", "to": "2024-03-01"}, "query.to"),
        ({"from": "2020-01-01", "to": "2024-03-01"}, "query.to"),
        ({"tenant": "tb"}, "tenant"),  # unknown: refused by name
        ({"engine": "a.b"}, "query.engine"),
    ],
)
async def test_a_bad_usage_query_is_a_422_naming_the_field(api, params, field):
    r = await api.get("/api/v1/usage", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


async def test_a_workflows_usage_per_step_and_in_all(app, worker, store):
    """What the dashboard's workflow page reads: `group_by=job` with `workflow_id` gives the
    steps that reported usage and nothing else; `group_by=workflow` the total."""
    steps = [
        {"key": "a", "engine": "usage", "operation": "report"},
        {"key": "b", "engine": "usage", "operation": "report", "depends_on": ["a"]},
        {"key": "c", "engine": "testing", "operation": "ok", "depends_on": ["b"]},
    ]
    async with client(app, TOKEN) as admin:
        r = await admin.post("/api/v1/jobs/workflows", json={"name": "paid", "jobs": steps})
        assert r.status_code == 201, r.text
        wf = r.json()
        alone = (await admin.post("/api/v1/jobs/submit", json={"engine": "usage", "operation": "report"})).json()
        for job_id in [*wf["jobs"].values(), alone["id"]]:
            await wait_status(store, job_id, "completed")
        today = store.clock.now().date().isoformat()
        q = {"workflow_id": wf["id"], "from": today, "to": today}
        rows = (await admin.get("/api/v1/usage", params={**q, "group_by": "job"})).json()["rows"]
        assert sorted(r["key"] for r in rows) == sorted([wf["jobs"]["a"], wf["jobs"]["b"]])
        assert all(r["tokens_in"] == 11 and r["cost"] == 0.25 and r["counters"] == {"images": 2} for r in rows)
        [total] = (await admin.get("/api/v1/usage", params={**q, "group_by": "workflow"})).json()["rows"]
        assert total["key"] == wf["id"] and total["attempts"] == 2 and total["tokens_in"] == 22 and total["cost"] == 0.5
