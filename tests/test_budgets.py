"""Cost budgets per tenant against the real server: a handler reporting cost through
`ctx.usage` crosses 80 % (one notification) and 100 % (a notification, and the tenant's
queued jobs wait while another tenant's run on the same engine); raising the budget lets
them run. The budget endpoints: validation, and who may set and read them."""

from __future__ import annotations

import asyncio

import pytest

from app.store import why
from tests.helpers import eventually, wait_status

BUDGET = "/api/v1/admin/tenants/{}/budget"


async def _key(api, tenant: str, user: str, role: str) -> dict:
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "tenant": tenant, "user": user, "role": role})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


async def _spend(store, jobs, cost: float, owner: str = "ta/alice") -> dict:
    job = await jobs.queued(engine="billing", operation="spend", owner=owner, parameters={"cost": cost})
    return await wait_status(store, job["_id"], "completed")


async def _notes(store, user: str) -> list[str]:
    return [n["type"] for n in await store.notifications.col.find({"user": user}).sort("created_at", 1).to_list(None)]


async def test_a_budget_notifies_at_80_and_100_holds_the_tenant_and_a_raise_releases_it(store, jobs, worker, api):
    alice = await _key(api, "ta", "alice", "admin")
    r = await api.put(BUDGET.format("ta"), json={"daily": 1.0})
    assert r.status_code == 200, r.text
    assert r.json()["daily"] == 1.0 and r.json()["periods"]["daily"]["reached"] is False

    await _spend(store, jobs, 0.5)
    assert await _notes(store, "ta/alice") == []
    await _spend(store, jobs, 0.35)  # 85 %
    assert await _notes(store, "ta/alice") == ["budget.warning"]
    await _spend(store, jobs, 0.05)  # 90 %: no second warning in the period
    assert await _notes(store, "ta/alice") == ["budget.warning"]
    crossing = await _spend(store, jobs, 0.2)  # 110 %: the job that crosses runs to its end
    assert crossing["status"] == "completed"
    assert await _notes(store, "ta/alice") == ["budget.warning", "budget.reached"]

    # held: the tenant's next job waits, another tenant's on the same engine runs
    waiting = await jobs.queued(engine="billing", operation="spend", owner="ta/alice")
    other = await _spend(store, jobs, 0, owner="tb/bob")
    assert other["status"] == "completed"
    await asyncio.sleep(0.5)
    doc = await store.jobs.get(waiting["_id"])
    assert doc["status"] == "queued"
    reason = next(r for r in (await why.explain(store, doc))["reasons"] if r["reason"] == "budget_reached")
    assert reason["period"] == "daily" and reason["seconds_left"] > 0
    queues = (await api.get("/api/v1/jobs/queue/status", headers=alice)).json()["queues"]
    billing = next(q for q in queues if q["name"] == "billing")
    assert billing["budget_reached"] is True and billing["budget_until"] is not None
    got = (await api.get(BUDGET.format("ta"), headers=alice)).json()
    assert got["periods"]["daily"]["reached"] is True and got["periods"]["daily"]["spend"] == pytest.approx(1.1)

    # the user can mark the notification read by its id
    page = (await api.get("/api/v1/jobs/notifications", headers=alice)).json()["notifications"]
    r = await api.post(f"/api/v1/jobs/notifications/{page[0]['id']}/read", headers=alice)
    assert r.status_code == 200, r.text

    # raised above the spend: released at once
    r = await api.put(BUDGET.format("ta"), json={"daily": 5.0})
    assert r.status_code == 200, r.text
    await wait_status(store, waiting["_id"], "completed")
    engine = await store.engines.get("billing")
    assert "ta" not in (engine.get("budget_held") or {})
    audit = await store.audit.col.find({"action": "tenant.budget"}).to_list(None)
    assert [a["details"] for a in audit] == [{"daily": 1.0}, {"daily": 5.0}]


async def test_a_monthly_budget_set_below_the_spend_holds_at_once(store, jobs, worker, api):
    await _spend(store, jobs, 0.4, owner="tc/carol")
    r = await api.put(BUDGET.format("tc"), json={"monthly": 0.3, "daily": None})
    assert r.status_code == 200, r.text
    assert r.json()["periods"]["monthly"]["reached"] is True
    waiting = await jobs.queued(engine="billing", operation="spend", owner="tc/carol")

    async def reason():
        doc = await store.jobs.get(waiting["_id"])
        reasons = (await why.explain(store, doc))["reasons"]
        return next((r for r in reasons if r["reason"] == "budget_reached"), None)

    assert (await eventually(reason))["period"] == "monthly"
    await asyncio.sleep(0.3)
    assert (await store.jobs.get(waiting["_id"]))["status"] == "queued"
    r = await api.put(BUDGET.format("tc"), json={"monthly": None})  # cleared: no limit
    assert r.status_code == 200 and r.json()["monthly"] is None
    await wait_status(store, waiting["_id"], "completed")


@pytest.mark.parametrize(
    "body,field",
    [
        ('{"daily": -1}', "daily"),
        ('{"daily": "5"}', "daily"),
        ('{"monthly": true}', "monthly"),
        ('{"monthly": 1e999}', "monthly"),
        ('{"daily": 1, "weekly": 2}', "weekly"),
    ],
)
async def test_a_bad_budget_is_a_422_naming_the_field(api, store, body, field):
    r = await api.put(BUDGET.format("ta"), content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in r.text
    assert await store.budgets.col.count_documents({}) == 0


async def test_only_the_bootstrap_admin_sets_budgets_and_a_tenant_admin_reads_its_own(api, store):
    admin_a = await _key(api, "ta", "alice", "admin")
    member_a = await _key(api, "ta", "ann", "member")
    assert (await api.put(BUDGET.format("tb"), json={"daily": 2.0})).status_code == 200
    assert (await api.put(BUDGET.format("ta"), json={"daily": 9.0}, headers=admin_a)).status_code == 403
    assert (await api.put(BUDGET.format("ta"), json={"daily": 9.0}, headers=member_a)).status_code == 403
    own = await api.get(BUDGET.format("ta"), headers=admin_a)
    assert own.status_code == 200 and own.json()["daily"] is None
    assert (await api.get(BUDGET.format("tb"), headers=admin_a)).status_code == 404
    assert (await api.get(BUDGET.format("ta"), headers=member_a)).status_code == 403
    assert (await api.get(BUDGET.format("tb"))).json()["daily"] == 2.0
