"""Debounce on submit (docs/limits.md, "Debounce"): submits with one key inside the window
keep one waiting job with the latest parameters and a later start, capped by `max_wait`;
once the job has started a submit is refused, or with `follower` opens one more window;
keys are per tenant; replacements take no seq and count against the rate limit only."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest

from tests.conftest import TOKEN, make_settings
from tests.test_store_counters import truth

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BURST = 50.0


@pytest.fixture
def settings():
    # A slow bucket, so the tokens a test draws are still missing when it reads them; a quota
    # of one waiting job, so a replacement that were counted as a new job would be refused.
    return make_settings(rate_limit_per_second=0.001, rate_limit_burst=BURST, tenant_max_queued=1)


@pytest.fixture
async def app(store, settings):
    from app.main import create_app

    app = create_app(settings, store=store, workers=0, maintenance=False, live=False)
    async with app.router.lifespan_context(app):
        yield app


def client(app, token: str = TOKEN) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": f"Bearer {token}"}
    )


async def tenant_token(app, tenant: str) -> str:
    async with client(app) as c:
        r = await c.post("/api/v1/auth/keys", json={"name": "k", "tenant": tenant, "user": "u", "role": "member"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def body(n: int, **debounce) -> dict:
    debounce = {"key": "acct-7", "seconds": 30, **debounce}
    return {"engine": "testing", "operation": "ok", "parameters": {"n": n}, "debounce": debounce}


async def post(c: httpx.AsyncClient, b: dict) -> httpx.Response:
    return await c.post("/api/v1/jobs/submit", json=b)


async def start(store, job_id: str) -> dict:
    """Promote the job now and claim it: it has started."""
    await store.lifecycle.promote_due(store.clock.now() + timedelta(days=2))
    engine = await store.engines.get("testing")
    claimed = await store.claimer.claim(engine, "w1", 10)
    assert [j["_id"] for j in claimed] == [job_id]
    return claimed[0]


async def test_three_submits_keep_one_job_with_the_latest_parameters_and_a_later_start(app, store):
    async with client(app) as c:
        first = await post(c, body(1))
        assert first.status_code == 201 and first.json()["debounced"] is False
        assert first.json()["status"] == "scheduled"
        job_id, run_ats = first.json()["id"], [first.json()["run_at"]]
        for n in (2, 3):
            r = await post(c, body(n))
            assert r.status_code == 200, r.text
            out = r.json()
            assert (out["id"], out["debounced"], out["deduplicated"]) == (job_id, True, False)
            assert out["parameters"] == {"n": n} and out["status"] == "scheduled"
            run_ats.append(out["run_at"])
        status = (await c.get(f"/api/v1/jobs/{job_id}/status")).json()
    assert run_ats == sorted(run_ats) and run_ats[0] < run_ats[-1]
    assert status["parameters"] == {"n": 3} and status["run_at"] == run_ats[-1]
    assert len((await store.jobs.list(limit=10))[0]) == 1


async def test_max_wait_caps_the_push_back(app, store):
    async with client(app) as c:
        first = (await post(c, body(1, seconds=30, max_wait=30))).json()
        later = await post(c, body(2, seconds=30, max_wait=30))
    assert later.status_code == 200 and later.json()["parameters"] == {"n": 2}
    job = await store.jobs.get(first["id"])
    # The deadline is the first submit plus max_wait: the second submit could not push past it.
    assert job["run_at"] == job["created_at"] + timedelta(seconds=30)
    assert later.json()["run_at"] == first["run_at"]


async def test_once_started_a_submit_is_refused_and_after_it_ran_a_new_window_opens(app, store):
    async with client(app) as c:
        job_id = (await post(c, body(1))).json()["id"]
        running = await start(store, job_id)
        refused = await post(c, body(2))
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["field"] == "debounce.key"
        assert (await store.jobs.get(job_id))["parameters"] == {"n": 1}
        await store.lifecycle.complete(running, running["lease_token"], {"ok": True}, 5)
        again = await post(c, body(3))
    assert again.status_code == 201 and again.json()["id"] != job_id
    assert again.json()["status"] == "scheduled" and again.json()["parameters"] == {"n": 3}


async def test_a_follower_waits_behind_a_started_job_and_takes_later_submits(app, store):
    async with client(app) as c:
        job_id = (await post(c, body(1, follower=True))).json()["id"]
        await start(store, job_id)
        follower = await post(c, body(2, follower=True))
        assert follower.status_code == 201 and follower.json()["id"] != job_id
        second = await post(c, body(3, follower=True))
    assert second.status_code == 200 and second.json()["id"] == follower.json()["id"]
    assert (await store.jobs.get(follower.json()["id"]))["parameters"] == {"n": 3}
    assert (await store.jobs.get(job_id))["parameters"] == {"n": 1}


async def test_the_same_key_of_another_tenant_is_another_job(app, store):
    a, b = await tenant_token(app, "ta"), await tenant_token(app, "tb")
    async with client(app, a) as ca, client(app, b) as cb:
        ja = await post(ca, body(1))
        jb = await post(cb, body(2))
        ja2 = await post(ca, body(3))
    assert (ja.status_code, jb.status_code, ja2.status_code) == (201, 201, 200)
    assert ja.json()["id"] != jb.json()["id"] and ja2.json()["id"] == ja.json()["id"]
    assert (await store.jobs.get(jb.json()["id"]))["parameters"] == {"n": 2}


async def test_a_replacement_draws_a_rate_token_but_does_not_count_as_waiting(app, store):
    token = await tenant_token(app, "tq")
    async with client(app, token) as c:
        assert (await post(c, body(1))).status_code == 201
        for n in (2, 3):  # the quota is one waiting job: a replacement adds none
            assert (await post(c, body(n))).status_code == 200
        extra = await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})
        assert extra.status_code == 429 and extra.json()["error"]["field"] == "tenant"
    bucket = await store.db["rate_limits"].find_one({"_id": "jobs:tq"}, {"tokens": 1})
    assert bucket["tokens"] < BURST - 2.9  # three submits, three tokens


async def test_a_replacement_takes_no_seq_and_the_queued_counter_stays_exact(app, store):
    async with client(app) as c:
        job_id = (await post(c, body(1))).json()["id"]
        for n in (2, 3):
            await post(c, body(n))
    assert await truth(store, "testing") == (0, 0)
    assert "seq" not in await store.jobs.get(job_id)
    assert await store.lifecycle.promote_due(store.clock.now() + timedelta(days=2)) == 1
    assert await truth(store, "testing") == (1, 1)


async def test_a_key_bound_to_another_operation_is_a_conflict(app):
    async with client(app) as c:
        assert (await post(c, body(1))).status_code == 201
        other = {**body(2), "operation": "flaky"}
        r = await post(c, other)
    assert r.status_code == 409 and r.json()["error"]["field"] == "debounce.key"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"debounce": {"key": "k", "seconds": 0}}, "debounce.seconds"),
        ({"debounce": {"key": "k", "seconds": -1}}, "debounce.seconds"),
        ({"debounce": {"key": "k", "seconds": 86_401}}, "debounce.seconds"),
        ({"debounce": {"key": "k", "seconds": 10, "max_wait": 5}}, "debounce.max_wait"),
        ({"debounce": {"key": "", "seconds": 10}}, "debounce.key"),
        ({"debounce": {"seconds": 10}}, "debounce.key"),
        ({"debounce": {"key": "k", "seconds": 10, "extra": 1}}, "debounce.extra"),
        ({"debounce": {"key": "k", "seconds": 10}, "dedupe_key": "d"}, "debounce"),
        ({"debounce": {"key": "k", "seconds": 10}, "delay_seconds": 5}, "debounce"),
    ],
)
async def test_a_bad_debounce_is_a_422_naming_the_field(app, store, change, field):
    async with client(app) as c:
        r = await post(c, {"engine": "testing", "operation": "ok", **change})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    if field == "debounce":  # not the unknown-field refusal of a spec without debounce
        assert "without dedupe_key, run_at or delay_seconds" in r.json()["error"]["message"]
    assert (await store.jobs.list(limit=10))[0] == []


def test_a_workflow_step_cannot_be_debounced():
    from pydantic import ValidationError

    from app.domain.workflow import StepSpec

    with pytest.raises(ValidationError, match="only a job submitted on its own"):
        StepSpec(key="a", engine="testing", operation="ok", debounce={"key": "k", "seconds": 1})


async def test_racing_first_submits_open_one_window(store):
    import asyncio

    from app.domain.models import JobSpec

    def spec(n: int) -> JobSpec:
        return JobSpec(**body(n))

    out = await asyncio.gather(*(store.lifecycle.submit(spec(n), owner="admin") for n in range(6)))
    assert len({job["_id"] for job, _ in out}) == 1
    assert sum(created for _, created in out) == 1
    assert len((await store.jobs.list(limit=10))[0]) == 1
