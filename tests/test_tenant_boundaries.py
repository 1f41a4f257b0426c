"""Tenant boundaries on shared engines (docs/security.md, "Engines"): a tenant operator
pauses only its own tenant's work and cannot change a deployment-wide limit; unknown
engines are 404s and nothing is created; queue status, the worker registry and `/health`
show a tenant only its own work; deployment-wide controls show in every tenant's audit log."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import TOKEN

ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def app(store, settings):
    from app.main import create_app

    app = create_app(settings, store=store, workers=0, maintenance=False, live=False)
    async with app.router.lifespan_context(app):
        yield app


def client(app, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
async def keys(app):
    out = {}
    async with client(app, TOKEN) as c:
        for t in ("ta", "tb"):
            for role in ("member", "operator", "admin"):
                r = await c.post(
                    "/api/v1/auth/keys", json={"name": "k", "tenant": t, "user": f"{role}-{t}", "role": role}
                )
                assert r.status_code == 201, r.text
                out[t, role] = r.json()["token"]
    return out


async def submit(app, token: str, n: int = 1) -> list[str]:
    async with client(app, token) as c:
        return [
            (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()["id"]
            for _ in range(n)
        ]


async def test_a_tenant_operator_pauses_only_its_own_work(app, keys, store):
    a_jobs, b_jobs = await submit(app, keys["ta", "member"], 2), await submit(app, keys["tb", "member"], 2)
    async with client(app, keys["tb", "operator"]) as c:
        r = await c.post("/api/v1/jobs/queue/testing/pause")
    assert r.status_code == 200 and r.json()["tenant_paused"] is True and r.json()["paused"] is False
    engine = await store.engines.get("testing")
    assert engine["paused"] is False
    claimed = await store.claimer.claim(engine, "w1", 10)
    assert sorted(c["_id"] for c in claimed) == sorted(a_jobs)  # tb's jobs wait, ta's run
    async with client(app, keys["tb", "member"]) as c:
        why = (await c.get(f"/api/v1/jobs/{b_jobs[0]}/status")).json()
    assert {"reason": "paused", "engine": "testing", "tenant": "tb"}.items() <= why["why"]["reasons"][0].items()
    async with client(app, keys["ta", "operator"]) as c:
        mine = {q["name"]: q for q in (await c.get("/api/v1/jobs/queue/status")).json()["queues"]}
    assert mine["testing"]["paused"] is False and mine["testing"]["tenant_paused"] is False
    async with client(app, keys["tb", "operator"]) as c:
        assert (await c.post("/api/v1/jobs/queue/testing/resume")).json()["tenant_paused"] is False
    again = await store.claimer.claim(await store.engines.get("testing"), "w1", 10)
    assert sorted(c["_id"] for c in again) == sorted(b_jobs)


async def test_only_the_bootstrap_admin_sets_a_limit_and_every_tenant_sees_it_audited(app, keys, store):
    before = (await store.engines.ensure("testing"))["limit"]
    async with client(app, keys["tb", "operator"]) as c:
        r = await c.put("/api/v1/jobs/queue/testing/limits", json={"max_concurrent_jobs": 1})
    assert r.status_code == 403 and r.json()["error"]["field"] == "name"
    assert (await store.engines.get("testing"))["limit"] == before
    async with client(app, TOKEN) as c:
        assert (await c.put("/api/v1/jobs/queue/testing/limits", json={"max_concurrent_jobs": 7})).status_code == 200
        assert (await c.post("/api/v1/jobs/queue/testing/pause")).json()["paused"] is True
    for tenant in ("ta", "tb"):
        async with client(app, keys[tenant, "admin"]) as c:
            actions = [e["action"] for e in (await c.get("/api/v1/audit")).json()["entries"]]
        assert "queue.limits" in actions and "queue.pause" in actions, (tenant, actions)


async def test_unknown_engines_are_404_and_nothing_is_created(app, keys, store):
    for token in (TOKEN, keys["ta", "operator"]):
        async with client(app, token) as c:
            for method, path in (("post", "pause"), ("post", "resume")):
                r = await getattr(c, method)(f"/api/v1/jobs/queue/nosuchengine/{path}")
                assert r.status_code == 404, r.text
            r = await c.put("/api/v1/jobs/queue/nosuchengine/limits", json={"max_concurrent_jobs": 3})
            assert r.status_code in (403, 404)
            names = [q["name"] for q in (await c.get("/api/v1/jobs/queue/status")).json()["queues"]]
            assert "nosuchengine" not in names
    assert "nosuchengine" not in {e["_id"] for e in await store.engines.list()}


async def test_queue_status_and_workers_show_a_tenant_only_its_own_work(app, keys, store):
    await submit(app, keys["ta", "member"], 3)
    b_jobs = await submit(app, keys["tb", "member"], 1)
    claimed = await store.claimer.claim(await store.engines.get("testing"), "w-shared", 10)
    await store.workers.register("w-shared", engines=None, concurrency=8, kind="worker")
    await store.workers.beat("w-shared", [c["_id"] for c in claimed], [])
    await store.numbers.flush()  # an open seq block counts its unused numbers until it closes
    async with client(app, keys["tb", "operator"]) as c:
        q = {q["name"]: q for q in (await c.get("/api/v1/jobs/queue/status")).json()["queues"]}["testing"]
        workers = (await c.get("/api/v1/jobs/workers")).json()["workers"]
    assert (q["running"], q["queued"]) == (1, 0)
    shown = {i for w in workers for i in w["running_jobs"]}
    assert shown == set(b_jobs)
    async with client(app, TOKEN) as c:  # the bootstrap admin sees every tenant's
        workers = (await c.get("/api/v1/jobs/workers")).json()["workers"]
    assert {i for w in workers for i in w["running_jobs"]} == {c["_id"] for c in claimed} and len(claimed) == 4
