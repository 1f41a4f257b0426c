"""Approval steps against the real server, with an in-process worker and maintenance: who
may decide (the named approver; not another user, another tenant or the bootstrap admin:
404), deciding twice (409), the decision in the child's `ctx.parents`, a rejection and the
failure policy, the audit log, timeouts for each `on_timeout`, the inbox API, and the 422s
for steps that make no sense."""

from __future__ import annotations

import httpx
import pytest

from app.api import auth
from app.domain import flowsteps
from tests.helpers import eventually


@pytest.fixture(autouse=True)
async def roomy_engine(store):
    await store.engines.set_limit("testing", 20)


@pytest.fixture
async def people(api):
    """Clients of the app for users of tenants acme and globex (API keys)."""
    made = {}
    for tenant, user, role in (
        ("acme", "ann", "member"),
        ("acme", "bob", "member"),
        ("acme", "olga", "operator"),
        ("acme", "ada", "admin"),
        ("globex", "gus", "admin"),
    ):
        r = await api.post("/api/v1/auth/keys", json={"name": user, "tenant": tenant, "user": user, "role": role})
        assert r.status_code == 201, r.text
        made[user] = httpx.AsyncClient(
            transport=api._transport, base_url="http://test", headers={"Authorization": f"Bearer {r.json()['token']}"}
        )
    yield made
    for c in made.values():
        await c.aclose()


def review(deps=("draft",), **kw) -> dict:
    return {"key": "review", "type": "approval", "depends_on": list(deps), **kw}


def job(key, deps=(), op="collect", **kw) -> dict:
    return {"key": key, "engine": "testing", "operation": op, "depends_on": list(deps), **kw}


async def submit(client, steps, **kw) -> dict:
    r = await client.post("/api/v1/jobs/workflows", json={"name": "article", "jobs": steps, **kw})
    assert r.status_code == 201, r.text
    return r.json()


async def step_of(store, wf: dict, key: str) -> dict:
    return await store.jobs.get(wf["jobs"][key])


async def wait_step(store, wf, key, statuses, timeout=30) -> dict:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    async def check():
        s = await step_of(store, wf, key)
        return s if s["status"] in statuses else None

    return await eventually(check, timeout=timeout)


async def wait_wf(client, wf, statuses, timeout=30) -> dict:
    async def check():
        body = (await client.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
        return body if body["status"] in statuses else None

    return await eventually(check, timeout=timeout, interval=0.1)


def url(wf, verb, key="review") -> str:
    return f"/api/v1/jobs/workflows/{wf['id']}/steps/{key}/{verb}"


async def test_the_named_approver_decides_once_and_the_child_gets_the_decision(api, store, worker, people):
    wf = await submit(
        people["ann"],
        [
            job("draft", op="ok", parameters={"text": "hello"}),
            review(approvers=["acme/bob"]),
            job("publish", ["review"]),
        ],
    )
    waiting = await wait_step(store, wf, "review", "awaiting")
    assert waiting["engine"] == flowsteps.FLOW_ENGINE and waiting.get("attempt", 0) == 0  # no worker took it
    status = (await people["ann"].get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    (shown,) = [s for s in status["steps"] if s["key"] == "review"]
    assert shown["status"] == "awaiting" and shown["type"] == "approval" and not shown["can_decide"]
    assert shown["why"]["reasons"][0]["message"] == "awaiting approval by acme/bob"
    assert status["counts"]["awaiting"] == 1
    job_view = (await people["ann"].get(f"/api/v1/jobs/{wf['jobs']['review']}/status")).json()
    assert job_view["status"] == "awaiting" and job_view["why"]["reasons"][0]["reason"] == "approval"

    # Not listed, another tenant, the bootstrap admin (another tenant too): as if there were none.
    for who in (people["ann"], people["olga"], people["gus"], api):
        r = await who.post(url(wf, "approve"), json={"comment": "sneaky"})
        assert r.status_code == 404, (who.headers, r.text)
    assert (await step_of(store, wf, "review"))["status"] == "awaiting"
    bob_view = (await people["bob"].get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    assert [s["can_decide"] for s in bob_view["steps"] if s["key"] == "review"] == [True]

    r = await people["bob"].post(url(wf, "approve"), json={"comment": "ship it", "payload": {"tone": "warm"}})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "completed" and out["decision"]["decision"] == "approved"
    assert out["decision"]["by"] == "acme/bob" and out["decision"]["payload"] == {"tone": "warm"}
    again = await people["bob"].post(url(wf, "reject"))
    assert again.status_code == 409, again.text

    await wait_wf(people["ann"], wf, ("completed",))
    publish = await step_of(store, wf, "publish")
    assert publish["result"]["parents"]["review"] == out["decision"]
    assert publish["started_at"] >= (await step_of(store, wf, "review"))["completed_at"]

    audit = (await people["ada"].get("/api/v1/audit")).json()
    (entry,) = [e for e in audit["entries"] if e["action"].startswith("approval.")]
    assert entry["action"] == "approval.approved" and entry["actor"] == "acme/bob"
    assert entry["target"] == f"workflow/{wf['id']}/steps/review" and entry["details"]["comment"] == "ship it"
    assert not [e for e in (await people["gus"].get("/api/v1/audit")).json()["entries"] if "approval" in e["action"]]


async def test_default_approvers_are_the_tenants_operators(api, store, worker, people):
    wf = await submit(people["ann"], [job("draft", op="ok"), review()])
    await wait_step(store, wf, "review", "awaiting")
    assert (await step_of(store, wf, "review"))["flow"]["approvers"] == ["role:operator"]
    for member in ("ann", "bob"):
        assert (await people[member].post(url(wf, "approve"))).status_code == 404
    r = await people["olga"].post(url(wf, "approve"))  # no body at all
    assert r.status_code == 200, r.text
    assert r.json()["decision"] == {**r.json()["decision"], "by": "acme/olga", "comment": None, "payload": None}
    await wait_wf(people["ann"], wf, ("completed",))


async def test_a_role_approver_takes_that_role_or_a_higher_one(api, store, worker, people):
    wf = await submit(people["ann"], [job("draft", op="ok"), review(approvers=["role:admin"])])
    await wait_step(store, wf, "review", "awaiting")
    assert (await people["olga"].post(url(wf, "approve"))).status_code == 404  # an operator: below admin
    assert (await people["ada"].post(url(wf, "approve"))).status_code == 200


async def test_the_bootstrap_admin_decides_in_its_own_tenant(api, store, worker):
    wf = await submit(api, [job("draft", op="ok"), review()])
    await wait_step(store, wf, "review", "awaiting")
    assert (await api.post(url(wf, "approve"), json={"comment": "ok"})).status_code == 200
    await wait_wf(api, wf, ("completed",))


async def test_a_rejection_fails_the_step_and_fail_fast_cancels_the_rest(api, store, worker, people):
    wf = await submit(
        people["ann"],
        [job("draft", op="ok"), review(approvers=["acme/bob"]), job("publish", ["review"]),
         job("slow", op="wait_cancel", parameters={"max": 60})],
    )  # fmt: skip
    await wait_step(store, wf, "review", "awaiting")
    await wait_step(store, wf, "slow", "running")
    r = await people["bob"].post(url(wf, "reject"), json={"comment": "off-brand"})
    assert r.status_code == 200 and r.json()["status"] == "failed", r.text
    body = await wait_wf(people["ann"], wf, ("failed",))
    rejected = await step_of(store, wf, "review")
    assert rejected["last_error"]["code"] == flowsteps.REJECTED
    assert rejected["last_error"]["message"] == "rejected by acme/bob: off-brand"
    assert rejected["decision"]["decision"] == "rejected"
    assert (await step_of(store, wf, "publish"))["cancel_reason"] == "dependency_failed"
    assert (await step_of(store, wf, "slow"))["status"] == "cancelled"  # fail_fast: the independent branch too
    assert body["counts"]["failed"] == 1
    audit = (await people["ada"].get("/api/v1/audit")).json()
    assert [e["action"] for e in audit["entries"] if e["action"].startswith("approval.")] == ["approval.rejected"]

    # A workflow retry asks again; this time it is approved.
    assert (await people["ann"].post(f"/api/v1/jobs/workflows/{wf['id']}/retry")).status_code == 200
    again = await wait_step(store, wf, "review", "awaiting")
    assert "decision" not in again
    assert (await people["bob"].post(url(wf, "approve"))).status_code == 200
    await wait_step(store, wf, "publish", "completed")


async def test_with_continue_a_rejection_leaves_independent_branches_running(api, store, worker, people):
    wf = await submit(
        people["ann"],
        [job("draft", op="ok"), review(approvers=["acme/bob"]), job("publish", ["review"]), job("other", op="ok")],
        failure_policy="continue",
    )
    await wait_step(store, wf, "review", "awaiting")
    assert (await people["bob"].post(url(wf, "reject"))).status_code == 200
    await wait_wf(people["ann"], wf, ("failed",))
    assert (await step_of(store, wf, "other"))["status"] == "completed"
    assert (await step_of(store, wf, "publish"))["status"] == "cancelled"


async def test_deciding_before_the_step_waits_is_a_conflict(api, store, worker, people):
    wf = await submit(
        people["ann"], [job("draft", op="wait_cancel", parameters={"max": 60}), review(approvers=["acme/bob"])]
    )
    await wait_step(store, wf, "draft", "running")
    r = await people["bob"].post(url(wf, "approve"))
    assert r.status_code == 409 and "does not await a decision yet" in r.json()["error"]["message"]
    assert (await people["bob"].post(url(wf, "approve", key="draft"))).status_code == 404  # not an approval
    assert (await people["bob"].post(url(wf, "approve", key="nope"))).status_code == 404


@pytest.mark.parametrize(
    "on_timeout,status,code",
    [("reject", "failed", flowsteps.TIMEOUT_REJECTED), ("approve", "completed", None), ("fail", "failed", "timeout")],
)
async def test_a_timeout_applies_on_timeout(api, store, worker, people, on_timeout, status, code):
    wf = await submit(
        people["ann"],
        [job("draft", op="ok"), review(timeout_seconds=0.5, on_timeout=on_timeout), job("publish", ["review"])],
    )
    waiting = await wait_step(store, wf, "review", "awaiting")
    assert waiting["wait_until"] > waiting["awaiting_since"]
    done = await wait_step(store, wf, "review", ("completed", "failed"))
    assert done["status"] == status and "wait_until" not in done
    assert done["completed_at"] >= waiting["wait_until"]
    if code:
        assert done["last_error"]["code"] == code
        await wait_wf(people["ann"], wf, ("failed",))
    else:
        assert done["result"]["decision"] == "approved" and done["result"]["by"] == flowsteps.BY_TIMEOUT
        await wait_wf(people["ann"], wf, ("completed",))
        assert (await step_of(store, wf, "publish"))["result"]["parents"]["review"]["by"] == "system:timeout"
    if on_timeout == "reject":
        assert done["decision"] == {**done["decision"], "decision": "rejected", "by": "system:timeout"}
    late = await people["olga"].post(url(wf, "approve"))  # the timeout decided it
    assert late.status_code == 409


async def test_cancelling_the_workflow_cancels_an_awaiting_approval(api, store, worker, people):
    wf = await submit(people["ann"], [job("draft", op="ok"), review(timeout_seconds=60)])
    await wait_step(store, wf, "review", "awaiting")
    assert (await people["ann"].post(f"/api/v1/jobs/workflows/{wf['id']}/cancel")).status_code == 200
    await wait_wf(people["ann"], wf, ("cancelled",))
    assert (await step_of(store, wf, "review"))["status"] == "cancelled"
    assert (await people["olga"].post(url(wf, "approve"))).status_code == 409


async def test_the_inbox_lists_what_the_caller_may_decide_with_previews(api, store, worker, people):
    big = "x" * 50_000
    wf = await submit(
        people["ann"],
        [job("draft", op="ok", parameters={"text": big, "image": "data:image/png;base64,iVBORw0KGgo="}),
         review(approvers=["acme/bob"])],
    )  # fmt: skip
    other = await submit(people["ann"], [review(deps=(), approvers=["role:admin"])])
    await wait_step(store, wf, "review", "awaiting")
    await wait_step(store, other, "review", "awaiting")
    theirs = await submit(people["gus"], [review(deps=())])  # globex's: never in acme's inbox
    await wait_step(store, theirs, "review", "awaiting")

    r = await people["bob"].get("/api/v1/approvals")
    assert r.status_code == 200, r.text
    (item,) = r.json()["approvals"]
    assert (item["workflow_id"], item["workflow_name"], item["step_key"]) == (wf["id"], "article", "review")
    assert item["approvers"] == ["acme/bob"] and item["waiting_since"] and item["truncated"]
    params = item["parents"]["draft"]["params"]
    assert params["image"] == "data:image/png;base64,iVBORw0KGgo="  # an image is kept to be shown
    assert params["text"].startswith("xxx") and len(params["text"]) < 3000 and "more characters" in params["text"]
    assert [a["workflow_id"] for a in (await people["ada"].get("/api/v1/approvals")).json()["approvals"]] == [
        other["id"]  # ada is an admin, not bob
    ]
    assert (await people["ann"].get("/api/v1/approvals")).json()["approvals"] == []
    assert [a["workflow_id"] for a in (await people["gus"].get("/api/v1/approvals")).json()["approvals"]] == [
        theirs["id"]
    ]
    assert (await people["bob"].post(url(wf, "approve"))).status_code == 200
    assert (await people["bob"].get("/api/v1/approvals")).json()["approvals"] == []


@pytest.mark.parametrize(
    "step,field",
    [
        ({"key": "r", "type": "approval", "engine": "testing"}, "jobs[0].engine"),
        ({"key": "r", "type": "approval", "operation": "ok"}, "jobs[0].operation"),
        ({"key": "r", "type": "approval", "parameters": {"a": 1}}, "jobs[0].parameters"),
        ({"key": "r", "type": "approval", "approvers": ["globex/gus"]}, "jobs[0].approvers[0]"),
        ({"key": "r", "type": "approval", "approvers": ["acme/ann", "nobody"]}, "jobs.0.approvers.1"),
        ({"key": "r", "type": "approval", "approvers": ["role:root"]}, "jobs.0.approvers.0"),
        ({"key": "r", "type": "approval", "on_timeout": "approve"}, "jobs[0].on_timeout"),
        ({"key": "r", "type": "approval", "timeout_seconds": 5, "on_timeout": "maybe"}, "jobs.0.on_timeout"),
        ({"key": "r", "type": "approval", "seconds": 5}, "jobs[0].seconds"),
        ({"key": "r", "type": "vote"}, "jobs.0.type"),
        ({"key": "r", "engine": "testing", "operation": "ok", "approvers": ["acme/ann"]}, "jobs[0].approvers"),
        ({"key": "r", "operation": "ok"}, "jobs[0].engine"),
        ({"key": "r", "type": "signal"}, "jobs[0].name"),
        ({"key": "r", "type": "signal", "name": "no.dots"}, "jobs[0].name"),
        ({"key": "r", "type": "sleep"}, "jobs[0].seconds"),
        ({"key": "r", "type": "sleep", "seconds": 1, "until": "2030-01-01T00:00:00Z"}, "jobs[0].seconds"),
        ({"key": "r", "type": "sleep", "seconds": 1, "timeout_seconds": 3}, "jobs[0].timeout_seconds"),
        ({"key": "r", "type": "sleep", "seconds": 0}, "jobs.0.seconds"),
    ],
)
async def test_steps_that_make_no_sense_are_refused_naming_the_field(people, step, field):
    r = await people["ann"].post("/api/v1/jobs/workflows", json={"name": "bad", "jobs": [step]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.json()


async def test_decision_bodies_are_checked(api, store, worker, people):
    wf = await submit(people["ann"], [review(deps=(), approvers=["acme/bob"])])
    await wait_step(store, wf, "review", "awaiting")
    for body, field in (
        ({"payload": {"$where": 1}}, "payload"),
        ({"comment": "x" * 2001}, "comment"),
        ({"decision": "approved"}, "decision"),
    ):
        r = await people["bob"].post(url(wf, "approve"), json=body)
        assert r.status_code == 422 and r.json()["error"]["field"].startswith(field), r.text
    bad_key = await people["bob"].post(f"/api/v1/jobs/workflows/{wf['id']}/steps/a.b/approve")
    assert bad_key.status_code == 422
    assert (await step_of(store, wf, "review"))["status"] == "awaiting"


def test_the_domain_knows_the_roles_as_auth_does():
    assert flowsteps.ROLES == auth.ROLES
