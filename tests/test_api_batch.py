"""`POST /api/v1/jobs/submit/batch` against the real server: ids in order with dedupe hits
marked, all or nothing before any write (a 422 naming each problem by index and field), the
cap, the tenant's rate limit charged per job, and the Python client's `submit_many`."""

from __future__ import annotations

import pytest

from app.client import AsyncSwitchyardClient
from tests.conftest import make_settings
from tests.helpers import wait_status
from tests.test_hostile_input import counts, member  # noqa: F401 (a fixture: a fresh tenant's member)

BATCH = "/api/v1/jobs/submit/batch"
OK = {"engine": "testing", "operation": "ok"}


@pytest.fixture
def settings():
    # a bucket of 5 that barely refills: a charge per job shows, and so would a stray one
    return make_settings(batch_max_jobs=20, rate_limit_per_second=0.01, rate_limit_burst=5)


async def test_a_batch_is_written_in_order_and_runs(api, store, worker):
    jobs = [{**OK, "name": f"j{i}", "priority": 1 + i % 3} for i in range(12)]
    r = await api.post(BATCH, json={"jobs": jobs})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["created"], body["deduplicated"], len(body["jobs"])) == (12, 0, 12)
    docs = {d["_id"]: d for d in await store.jobs.col.find({}).to_list(None)}
    assert [docs[j["id"]]["name"] for j in body["jobs"]] == [f"j{i}" for i in range(12)]
    for j in body["jobs"]:
        await wait_status(store, j["id"], "completed")


async def test_dedupe_hits_are_marked_within_the_batch_and_against_live_jobs(api, store):
    live = (await api.post("/api/v1/jobs/submit", json={**OK, "dedupe_key": "k1"})).json()
    jobs = [{**OK, "dedupe_key": "k1"}, {**OK, "dedupe_key": "k2"}, {**OK, "dedupe_key": "k2"}, OK]
    body = (await api.post(BATCH, json={"jobs": jobs})).json()
    marks = [(j["id"], j["deduplicated"]) for j in body["jobs"]]
    assert marks[0] == (live["id"], True)
    assert marks[2] == (marks[1][0], True) and not marks[1][1] and not marks[3][1]
    assert (body["created"], body["deduplicated"]) == (2, 2)
    assert await store.jobs.col.count_documents({}) == 3


async def test_a_refused_batch_names_every_problem_and_changes_nothing(member, store):  # noqa: F811
    await member.post(BATCH, json={"jobs": [OK]})  # the tenant's bucket exists: a stray charge would show
    before = await counts(store, member.tenant)
    r = await member.post(BATCH, json={"jobs": [OK, {**OK, "priority": 99}, {"engine": "testing"}, OK]})
    assert r.status_code == 422, r.text
    fields = [e["field"] for e in r.json()["error"]["errors"]]
    assert fields == ["jobs.1.priority", "jobs.2.operation"], fields
    r = await member.post(
        BATCH,
        json={"jobs": [OK, {"engine": "testing", "operation": "nope"}, {**OK, "debounce": {"key": "d", "seconds": 1}}]},
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == "jobs.1.operation" and [e["field"] for e in err["errors"]] == [
        "jobs.1.operation",
        "jobs.2.debounce",
    ]
    r = await member.post(BATCH, json={"jobs": [OK] * 21})
    assert r.status_code == 422 and r.json()["error"]["field"] == "jobs", r.text
    r = await member.post(BATCH, json={"jobs": []})
    assert r.status_code == 422, r.text
    after = await counts(store, member.tenant)
    assert after.pop("tokens") >= before.pop("tokens") and after == before  # refills only


async def test_the_rate_limit_is_charged_per_job(member, store):  # noqa: F811
    r = await member.post(BATCH, json={"jobs": [OK] * 4})
    assert r.status_code == 201, r.text
    before = await counts(store, member.tenant)
    r = await member.post(BATCH, json={"jobs": [OK] * 2})  # 1 token left of the burst of 5
    assert r.status_code == 429 and "Retry-After" in r.headers, r.text
    after = await counts(store, member.tenant)
    assert before.pop("tokens") <= after.pop("tokens") < 2 and after == before  # refills only; nothing written

    assert (await member.post(BATCH, json={"jobs": [OK]})).status_code == 201


async def test_the_python_client_submits_many(api, store):
    token = api.headers["Authorization"].removeprefix("Bearer ")
    async with AsyncSwitchyardClient("http://test", token=token, transport=api._transport) as sy:
        body = await sy.submit_many([{**OK, "name": "a"}, {**OK, "name": "b"}])
    assert [j["status"] for j in body["jobs"]] == ["queued", "queued"] and body["created"] == 2
