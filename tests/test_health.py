"""`/health` (seed 004's shape), `/ready`, and the degraded cases: email failing, and the
database gone (a server of the test's own, stopped under the running app)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx

from app import embedded
from app.main import create_app
from app.store import connect
from tests.conftest import TOKEN, make_settings
from tests.helpers import eventually


@asynccontextmanager
async def client_for(app, *, lifespan: bool = True):
    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            yield c

    if lifespan:
        async with app.router.lifespan_context(app):
            async for c in run():
                yield c
    else:
        async for c in run():
            yield c


async def test_health_shape_without_a_token_shows_no_queue_or_engine(api, jobs, worker, store):
    await store.engines.set_paused("testing", True)  # keep them waiting
    for _ in range(2):
        await jobs.queued()
    r = await api.get("/health", headers={"Authorization": ""})
    assert r.status_code == 200
    body = r.json()
    assert body["queues"] is None and "testing" not in r.text
    body = (await api.get("/health")).json()  # with the bootstrap admin's token
    assert body["status"] == "ok"
    assert body["uptime"] >= 0 and body["uptime_seconds"] == body["uptime"]
    assert body["database"]["reachable"] is True and body["database"]["latency_ms"] >= 0
    assert body["email"]["configured"] is False and body["email"]["reason"] == "SMTP_URL is not set: no email is sent"
    assert body["workers"] == {"alive": 1}  # the in-process worker of the `worker` fixture
    assert body["queues"]["testing"] == {
        "waiting": 2,
        "active": 0,
        "paused": True,
        "limit": 2,
        "queued": 2,
        "running": 0,
    }


async def test_email_from_settings_never_shows_credentials(store):
    app = create_app(make_settings(smtp_url="smtp://mailer:s3cret@mail.example:587"), store=store, maintenance=False)
    async with client_for(app) as c:
        anyone = await c.get("/health")
        r = await c.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert anyone.json()["email"]["configured"] is True and "mail.example" not in anyone.text
    assert r.status_code == 200 and "s3cret" not in r.text
    assert r.json()["email"]["configured"] is True and r.json()["email"]["server"] == "mail.example:587"


async def test_email_status_hook_decides_degraded(store):
    app = create_app(make_settings(smtp_url="smtp://mail.example:25"), store=store, maintenance=False)
    state = {"ok": True}

    async def email_status() -> dict:
        if state.get("raise"):
            raise ConnectionRefusedError("mail.example:25")
        return {"ok": state["ok"], "last_error": None if state["ok"] else "421 try later"}

    async with client_for(app) as c:
        app.state.email_status = email_status  # as the notification service sets it at start-up
        good = (await c.get("/health")).json()
        state["ok"] = False
        bad = await c.get("/health")
        state["raise"] = True
        broken = await c.get("/health")
    assert good["status"] == "ok" and good["email"]["ok"] is True and good["email"]["configured"] is True
    # email down: still serving (200), but degraded
    assert bad.status_code == 200 and bad.json()["status"] == "degraded"
    assert bad.json()["email"]["last_error"] == "421 try later"
    assert broken.status_code == 200 and broken.json()["status"] == "degraded"
    assert "ConnectionRefusedError" in broken.json()["email"]["reason"]


async def test_ready_only_between_start_up_and_shutdown(store):
    app = create_app(make_settings(), store=store, maintenance=False)
    async with client_for(app, lifespan=False) as c:  # start-up has not run
        r = await c.get("/ready")
        assert r.status_code == 503 and r.json() == {"ready": False, "started": False, "database": False}
    async with client_for(app) as c:
        r = await c.get("/ready")
        assert r.status_code == 200 and r.json() == {"ready": True, "started": True, "database": True}
    async with client_for(app, lifespan=False) as c:  # after shutdown
        assert (await c.get("/ready")).status_code == 503


async def test_database_gone_means_unavailable_and_not_ready():
    server = embedded.spawn(":memory:")
    port = int(server.url.split(":")[2].split("/")[0])
    settings = make_settings()
    st = connect(server.url, settings, db_name="health_probe")
    app = create_app(settings, store=st, maintenance=False)
    try:
        async with client_for(app) as c:
            assert (await c.get("/health")).json()["status"] == "ok"
            server.proc.kill()  # the database crashes under the running app
            server.proc.wait()
            r = await c.get("/health")
            assert r.status_code == 503
            body = r.json()
            assert body["status"] == "unavailable" and body["database"] == {"reachable": False, "latency_ms": None}
            assert body["workers"] is None and body["queues"] is None and body["email"]["configured"] is False
            assert (await c.get("/ready")).status_code == 503
            m = await c.get("/metrics")  # this process's counters still; no queue gauges without the database
            assert m.status_code == 200 and "switchyard_jobs_finished_total" in m.text
            assert "switchyard_queue_depth" not in m.text

            server = embedded.spawn(":memory:", port=port)  # it comes back (empty) on the same address

            async def recovered():
                return (await c.get("/ready")).status_code == 200 and (await c.get("/health")).status_code == 200

            await eventually(recovered, timeout=30, interval=0.5)
    finally:
        server.stop()
        await st.client.close()
