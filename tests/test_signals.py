"""Signal steps against the real server, with an in-process worker and maintenance: a signal
sent before its step is ready is kept and taken once it is, one sent while it awaits
completes it at once, its payload reaches the children, and the refusals (no such signal
step, delivered twice, a finished workflow, another tenant, bad names and payloads)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.helpers import eventually
from tests.test_approvals import job, step_of, submit, wait_step, wait_wf


@pytest.fixture(autouse=True)
async def roomy_engine(store):
    await store.engines.set_limit("testing", 20)


def pay(deps=("order",), name="paid", **kw) -> dict:
    return {"key": "pay", "type": "signal", "name": name, "depends_on": list(deps), **kw}


def signal_url(wf, name="paid") -> str:
    return f"/api/v1/jobs/workflows/{wf['id']}/signals/{name}"


async def test_a_signal_sent_early_is_kept_until_its_step_is_ready(api, store, worker):
    wf = await submit(
        api,
        [job("order", op="stubborn", parameters={"seconds": 1.5}), pay(), job("ship", ["pay"])],
    )
    await wait_step(store, wf, "order", "running")
    r = await api.post(signal_url(wf), json={"payload": {"amount": 42, "currency": "EUR"}})
    assert r.status_code == 200, r.text
    assert r.json()["delivered_to"] == [] and r.json()["name"] == "paid"
    assert (await step_of(store, wf, "pay"))["status"] == "pending"  # not ready yet: kept on the workflow
    kept = await store.workflows.col.find_one({"_id": wf["id"]}, {"signals": 1})
    assert kept["signals"]["paid"]["payload"] == {"amount": 42, "currency": "EUR"}
    assert kept["signals"]["paid"]["by"] == "admin"

    await wait_wf(api, wf, ("completed",))
    paid = await step_of(store, wf, "pay")
    assert paid["result"] == {"amount": 42, "currency": "EUR"} and paid.get("attempt", 0) == 0
    assert paid["completed_at"] >= (await step_of(store, wf, "order"))["completed_at"]
    ship = await step_of(store, wf, "ship")
    assert ship["result"]["parents"]["pay"] == {"amount": 42, "currency": "EUR"}


async def test_a_signal_sent_late_completes_the_awaiting_step(api, store, worker):
    wf = await submit(api, [job("order", op="ok"), pay(), job("ship", ["pay"])])
    waiting = await wait_step(store, wf, "pay", "awaiting")
    assert "wait_until" not in waiting  # no timeout: it waits for ever
    status = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
    (shown,) = [s for s in status["steps"] if s["key"] == "pay"]
    assert shown["type"] == "signal" and shown["why"]["reasons"][0]["message"] == "awaiting signal 'paid'"
    await asyncio.sleep(0.5)
    assert (await step_of(store, wf, "pay"))["status"] == "awaiting"  # nothing but the signal moves it

    r = await api.post(signal_url(wf), json={"payload": {"amount": 7}})
    assert r.status_code == 200 and r.json()["delivered_to"] == ["pay"], r.text
    assert (await step_of(store, wf, "pay"))["status"] == "completed"  # at once, in the request
    await wait_wf(api, wf, ("completed",))
    assert (await step_of(store, wf, "ship"))["result"]["parents"]["pay"] == {"amount": 7}

    again = await api.post(signal_url(wf), json={"payload": {"amount": 8}})
    assert again.status_code == 409, again.text  # the workflow finished (and it was delivered)


async def test_one_signal_reaches_every_step_waiting_for_it(api, store, worker):
    wf = await submit(
        api,
        [
            job("order", op="ok"),
            pay(),
            {"key": "invoice", "type": "signal", "name": "paid", "depends_on": ["shipped"]},
            {"key": "shipped", "type": "signal", "name": "shipped", "depends_on": ["order"]},
        ],
    )
    await wait_step(store, wf, "pay", "awaiting")
    await wait_step(store, wf, "shipped", "awaiting")
    r = await api.post(signal_url(wf), json={})  # no payload: {}
    assert r.json()["delivered_to"] == ["pay"], r.text  # invoice is not ready yet
    # invoice becomes ready after the signal was sent, and still receives it
    assert (await api.post(signal_url(wf, "shipped"), json={})).json()["delivered_to"] == ["shipped"]
    await wait_wf(api, wf, ("completed",))
    assert (await step_of(store, wf, "invoice"))["result"] == {} == (await step_of(store, wf, "pay"))["result"]
    second = await api.post(signal_url(wf))
    assert second.status_code == 409


async def test_two_senders_at_once_deliver_once(api, store, worker):
    wf = await submit(api, [job("order", op="ok"), pay(), job("ship", ["pay"])])
    await wait_step(store, wf, "pay", "awaiting")
    answers = await asyncio.gather(*(api.post(signal_url(wf), json={"payload": {"n": i}}) for i in range(2)))
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    (won,) = [r for r in answers if r.status_code == 200]
    await wait_wf(api, wf, ("completed",))
    assert (await step_of(store, wf, "pay"))["result"] == json.loads(won.request.content)["payload"]


async def test_refusals(api, store, worker):
    wf = await submit(api, [job("order", op="wait_cancel", parameters={"max": 60}), pay()])
    await wait_step(store, wf, "order", "running")
    nope = await api.post(signal_url(wf, "refunded"), json={"payload": {}})
    assert nope.status_code == 404 and nope.json()["error"]["field"] == "name", nope.text
    assert (await api.post(signal_url(wf, "no.dots"))).status_code == 422
    assert (await api.post(signal_url(wf, "x" * 65))).status_code == 422
    bad = await api.post(signal_url(wf), json={"payload": {"a.b": 1}})
    assert bad.status_code == 422 and bad.json()["error"]["field"].startswith("payload"), bad.text
    assert (await api.post(signal_url(wf), json={"payload": [1]})).status_code == 422
    assert (await api.post(signal_url(wf), json={"payload": {}, "extra": 1})).status_code == 422
    missing = await api.post(f"/api/v1/jobs/workflows/{'0' * 24}/signals/paid", json={})
    assert missing.status_code == 404
    assert (await store.workflows.col.find_one({"_id": wf["id"]})).get("signals") is None  # nothing was kept

    # Another tenant: as if there were no such workflow.
    r = await api.post("/api/v1/auth/keys", json={"name": "g", "tenant": "globex", "user": "gus", "role": "admin"})
    async with httpx.AsyncClient(
        transport=api._transport, base_url="http://test", headers={"Authorization": f"Bearer {r.json()['token']}"}
    ) as gus:
        theirs = await gus.post(signal_url(wf), json={"payload": {}})
        assert theirs.status_code == 404 and theirs.json()["error"]["field"] == "workflow_id"

    assert (await api.post(f"/api/v1/jobs/workflows/{wf['id']}/cancel")).status_code == 200
    await wait_wf(api, wf, ("cancelled",))
    late = await api.post(signal_url(wf), json={"payload": {}})
    assert late.status_code == 409 and "any more" in late.json()["error"]["message"], late.text


@pytest.mark.parametrize("on_timeout,status", [("fail", "failed"), ("approve", "completed"), (None, "failed")])
async def test_a_signal_that_does_not_come_times_out(api, store, worker, on_timeout, status):
    extra = {"on_timeout": on_timeout} if on_timeout else {}
    wf = await submit(api, [job("order", op="ok"), pay(timeout_seconds=0.5, **extra)])
    waiting = await wait_step(store, wf, "pay", "awaiting")
    assert waiting["flow"]["on_timeout"] == (on_timeout or "fail")
    done = await wait_step(store, wf, "pay", ("completed", "failed"))
    assert done["status"] == status
    if status == "failed":
        assert (
            done["last_error"]["code"] == "timeout" and "no signal 'paid' within 0.5s" in done["last_error"]["message"]
        )
    else:
        assert done["result"]["timed_out"] is True and done["result"]["by"] == "system:timeout"
    late = await api.post(signal_url(wf), json={"payload": {}})
    assert late.status_code == 409


async def test_a_signal_step_of_added_steps_takes_a_kept_signal(api, store, worker):
    """A signal is kept on the workflow: a step added later (`POST .../jobs`) that waits for
    it takes it when it is ready."""
    wf = await submit(api, [job("order", op="wait_cancel", parameters={"max": 60}), pay()])
    await wait_step(store, wf, "order", "running")
    assert (await api.post(signal_url(wf), json={"payload": {"v": 1}})).status_code == 200
    r = await api.post(
        f"/api/v1/jobs/workflows/{wf['id']}/jobs", json={"jobs": [{"key": "also", "type": "signal", "name": "paid"}]}
    )
    assert r.status_code == 200, r.text
    also = await eventually(lambda: _completed(store, r.json()["jobs"]["also"]))
    assert also["result"] == {"v": 1}


async def _completed(store, job_id):
    doc = await store.jobs.get(job_id)
    return doc if doc["status"] == "completed" else None
