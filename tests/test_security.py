"""Security and multi-tenancy against a real uvicorn server: API keys and roles, a
cross-tenant matrix over the REST endpoints, the WebSocket and SSE, injection payloads,
redaction, JWT, and the per-tenant rate limit across two API processes."""

from __future__ import annotations

import io
import json
import time

import httpx
import jwt
import pytest
import websockets

from app.logs import configure, get_logger
from tests.conftest import TOKEN
from tests.helpers import eventually, recv, until
from tests.procs import stop
from tests.servers import serve_processes, uvicorn_app

ADMIN = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "hunter2-SECRET"


async def make_key(host, tenant, user, role) -> str:
    async with httpx.AsyncClient(base_url=f"http://{host}", headers=ADMIN) as c:
        r = await c.post(
            "/api/v1/auth/keys", json={"name": f"{user} key", "tenant": tenant, "user": user, "role": role}
        )
        assert r.status_code == 201, r.text
        return r.json()["token"]


def client(host, token) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{host}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
async def tenants(server):
    """Keys for tenants acme and globex, one per role."""
    return {
        (t, r): await make_key(server, t, f"{r}-{t}", r)
        for t in ("acme", "globex")
        for r in ("member", "operator", "admin")
    }


async def acme_resources(host, token) -> dict:
    async with client(host, token) as c:
        job = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
        failed = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "permanent"})).json()
        wf = (
            await c.post(
                "/api/v1/jobs/workflows",
                json={"name": "w", "jobs": [{"key": "a", "engine": "testing", "operation": "ok"}]},
            )
        ).json()
        sched = (
            await c.post(
                "/api/v1/jobs/schedules",
                json={"name": "s", "cron": "0 0 1 1 *", "job": {"engine": "testing", "operation": "ok"}},
            )
        ).json()

        async def notified():
            body = (await c.get("/api/v1/jobs/notifications")).json()
            return body["notifications"] or None

        notes = await eventually(notified, timeout=30)
    return {"job": job["id"], "failed": failed["id"], "wf": wf["id"], "sched": sched["id"], "note": notes[0]["id"]}


async def test_keys_are_shown_once_scoped_and_revoked_at_once(server, tenants):
    token = tenants[("acme", "member")]
    async with client(server, token) as c:
        assert (await c.get("/api/v1/auth/me")).json() == {
            "user": "member-acme",
            "tenant": "acme",
            "role": "member",
            "global_admin": False,
        }
        assert (await c.post("/api/v1/auth/keys", json={"name": "x", "user": "x"})).status_code == 403
    async with client(server, tenants[("acme", "admin")]) as c:
        keys = (await c.get("/api/v1/auth/keys")).json()
        assert {k["tenant"] for k in keys} == {"acme"} and all("token" not in k and "hash" not in k for k in keys)
        r = await c.post("/api/v1/auth/keys", json={"name": "x", "user": "x", "tenant": "globex"})
        assert r.status_code == 403 and r.json()["error"]["field"] == "tenant"
        key_id = next(k["id"] for k in keys if k["user"] == "member-acme")
        assert (await c.delete(f"/api/v1/auth/keys/{key_id}")).status_code == 200
    async with client(server, token) as c:
        assert (await c.get("/api/v1/jobs/")).status_code == 401  # at once
    async with client(server, tenants[("acme", "operator")]) as c:
        r = await c.post("/api/v1/auth/keys", json={"name": "x", "user": "x", "role": "admin"})
        assert r.status_code == 403
    async with client(server, tenants[("globex", "admin")]) as c:
        assert (await c.delete(f"/api/v1/auth/keys/{key_id}")).status_code == 404  # another tenant's key


async def test_no_tenant_sees_another_tenants_resources(server, tenants):
    acme = await acme_resources(server, tenants[("acme", "member")])
    j, w, s = acme["job"], acme["wf"], acme["sched"]
    by_id = [
        ("GET", f"/api/v1/jobs/{j}/status"),
        ("POST", f"/api/v1/jobs/{j}/cancel"),
        ("POST", f"/api/v1/jobs/{acme['failed']}/retry"),
        ("GET", f"/api/v1/jobs/{j}/events"),
        ("GET", f"/api/v1/jobs/workflows/{w}/status"),
        ("GET", f"/api/v1/jobs/workflows/{w}/events"),
        ("POST", f"/api/v1/jobs/workflows/{w}/cancel"),
        ("POST", f"/api/v1/jobs/workflows/{w}/retry"),
        ("POST", f"/api/v1/jobs/workflows/{w}/jobs"),
        ("GET", f"/api/v1/jobs/schedules/{s}"),
        ("POST", f"/api/v1/jobs/schedules/{s}/pause"),
        ("POST", f"/api/v1/jobs/schedules/{s}/resume"),
        ("DELETE", f"/api/v1/jobs/schedules/{s}"),
        ("POST", f"/api/v1/jobs/notifications/{acme['note']}/read"),
    ]
    lists = [
        "/api/v1/jobs/",
        "/api/v1/jobs/workflows",
        "/api/v1/jobs/schedules",
        "/api/v1/jobs/dead-letter",
        "/api/v1/jobs/notifications",
        "/api/v1/audit",
    ]
    for role in ("member", "operator", "admin"):
        async with client(server, tenants[("globex", role)]) as c:
            for method, path in by_id:
                body = (
                    {"jobs": [{"key": "z", "engine": "testing", "operation": "ok"}]} if path.endswith("/jobs") else None
                )
                r = await c.request(method, path, json=body)
                assert r.status_code == 404, (role, method, path, r.status_code, r.text)
            for path in lists:
                r = await c.get(path)
                assert r.status_code in (200, 403), (role, path, r.text)
                assert not set(acme.values()) & set(_ids(r.json())), (role, path)
            hist = (await c.get("/api/v1/jobs/history")).json()
            assert hist["total"] == 0, (role, hist)
    # The positive control: acme's operator (another user, same tenant) sees them.
    async with client(server, tenants[("acme", "operator")]) as c:
        assert (await c.get(f"/api/v1/jobs/{j}/status")).status_code == 200
        assert j in _ids((await c.get("/api/v1/jobs/")).json())


def _ids(body) -> list[str]:
    if isinstance(body, list):
        return [x.get("id") for x in body if isinstance(x, dict)]
    out = []
    for value in body.values():
        if isinstance(value, list):
            out += [x.get("id") for x in value if isinstance(x, dict)]
    return out


async def test_websocket_and_sse_are_scoped(server, tenants):
    async with websockets.connect(f"ws://{server}/api/v1/ws?token={tenants[('globex', 'admin')]}") as ws:
        assert (await recv(ws))["tenant"] == "globex"
        await ws.send(json.dumps({"action": "subscribe", "all": True}))
        await until(ws, lambda m: m.get("type") == "subscribed")
        acme = await acme_resources(server, tenants[("acme", "member")])
        for sub in ({"job_id": acme["job"]}, {"workflow_id": acme["wf"]}):
            await ws.send(json.dumps({"action": "subscribe", "since": 0, **sub}))
            assert (await until(ws, lambda m: m.get("type") in ("error", "subscribed")))[-1]["code"] == "not_found"
        async with client(server, tenants[("globex", "member")]) as c:
            own = (await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
        seen = await until(ws, lambda m: m.get("type") == "job.completed" and m.get("job_id") == own["id"])
    assert {m.get("tenant") for m in seen if "seq" in m} == {"globex"}
    assert not set(acme.values()) & ({m.get("job_id") for m in seen} | {m.get("workflow_id") for m in seen})


async def test_roles_decide_who_steers_queues(server, tenants):
    for role, expected in (("member", 403), ("operator", 200), ("admin", 200)):
        async with client(server, tenants[("acme", role)]) as c:
            r = await c.post("/api/v1/jobs/queue/testing/pause")
            assert r.status_code == expected, (role, r.text)
            await c.post("/api/v1/jobs/queue/testing/resume")
    async with client(server, tenants[("acme", "admin")]) as c:
        entries = (await c.get("/api/v1/audit")).json()["entries"]
    actions = [(e["action"], e["actor"]) for e in entries]
    assert ("queue.pause", "acme/operator-acme") in actions and ("queue.pause", "acme/member-acme") not in actions
    async with client(server, tenants[("globex", "admin")]) as c:
        # its own entries, and deployment-wide ones ("*"), never acme's
        assert all(e["tenant"] in ("globex", "*") for e in (await c.get("/api/v1/audit")).json()["entries"])


async def test_injection_payloads_are_refused(server):
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=ADMIN, timeout=30) as c:
        assert (await c.get('/api/v1/jobs/{"$gt": ""}/status')).status_code in (404, 422)
        r = await c.get("/api/v1/jobs/", params={"status[$ne]": "x"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "status[$ne]"
        for params in ({"$where": "sleep(1000)"}, {"a.b": 1}, {"x": {"$gt": ""}}):
            r = await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok", "parameters": params})
            assert r.status_code == 422, params
        r = await c.post(
            "/api/v1/jobs/submit",
            content=b'{"engine": "' + b"x" * (10 * 1024 * 1024) + b'"}',
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code == 413
        r = await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok", "colour": "red"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "colour"
    async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=ADMIN, max_size=None) as ws:
        await recv(ws)
        await ws.send("x" * (10 * 1024 * 1024))
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await recv(ws)
        assert info.value.rcvd.code == 1009
    async with websockets.connect(f"ws://{server}/api/v1/ws", additional_headers=ADMIN) as ws:
        await recv(ws)
        with pytest.raises(websockets.ConnectionClosed) as info:
            for _ in range(500):
                await ws.send(json.dumps({"action": "ping"}))
            while True:
                await recv(ws)
        assert info.value.rcvd.code == 4429
    with pytest.raises(websockets.InvalidStatus) as refused:  # a page on another origin: refused at the handshake
        async with websockets.connect(
            f"ws://{server}/api/v1/ws", additional_headers={**ADMIN, "Origin": "https://evil.example"}
        ):
            pass
    assert refused.value.response.status_code == 403
    async with websockets.connect(
        f"ws://{server}/api/v1/ws", additional_headers={**ADMIN, "Origin": f"http://{server}"}
    ) as ws:
        assert (await recv(ws))["type"] == "welcome"  # the dashboard's own origin


async def test_secrets_are_redacted_outside_the_handler(server, tenants):
    stream = io.StringIO()
    configure("INFO", stream=stream)
    try:
        params = {"password": SECRET, "secrets": {"k": SECRET}, "nested": {"api_key": SECRET}, "plain": "visible"}
        async with client(server, tenants[("acme", "member")]) as c:
            job = (
                await c.post(
                    "/api/v1/jobs/submit", json={"engine": "testing", "operation": "uses_secret", "parameters": params}
                )
            ).json()
            assert SECRET not in json.dumps(job) and job["parameters"]["plain"] == "visible"
            frames = await _sse_text(c, f"/api/v1/jobs/{job['id']}/events")
            status = (await c.get(f"/api/v1/jobs/{job['id']}/status")).json()
        assert status["status"] == "completed" and status["result"] == {"length": len(SECRET), "first": "h"}
        assert status["parameters"]["password"] == "***" and status["parameters"]["secrets"] == "***"
        assert status["parameters"]["nested"]["api_key"] == "***"
        assert SECRET not in frames and "job.completed" in frames, [ln for ln in frames.splitlines() if SECRET in ln]
        get_logger("test").warning("a line with secrets", password=SECRET, token=SECRET)
        assert SECRET not in stream.getvalue() and '"password": "***"' in stream.getvalue()
    finally:
        configure("WARNING")


async def _sse_text(c, path) -> str:
    out = []
    async with c.stream("GET", path) as r:
        async for line in r.aiter_lines():
            out.append(line)
    return "\n".join(out)


async def test_jwt_bearer_tokens(store, settings):
    from app.main import create_app

    secret = "x" * 32
    app = create_app(settings.model_copy(update={"jwt_secret": secret}), store=store, workers=0, live=False)
    async with uvicorn_app(app) as host:
        good = jwt.encode(
            {"sub": "carol", "tenant": "acme", "role": "operator", "exp": time.time() + 60}, secret, "HS256"
        )
        expired = jwt.encode({"sub": "carol", "tenant": "acme", "exp": time.time() - 60}, secret, "HS256")
        forged = jwt.encode({"sub": "carol", "tenant": "acme", "exp": time.time() + 60}, "y" * 32, "HS256")
        async with httpx.AsyncClient(base_url=f"http://{host}") as c:
            me = await c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {good}"})
            assert me.json() == {"user": "carol", "tenant": "acme", "role": "operator", "global_admin": False}
            for bad in (expired, forged):
                assert (await c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {bad}"})).status_code == 401


async def test_the_rate_limit_holds_across_two_api_processes(db_url, store):
    ports, procs = await serve_processes(
        db_url,
        store.db.name,
        [0, 0],
        SWITCHYARD_ADMIN_TOKEN=TOKEN,
        SWITCHYARD_RATE_LIMIT_PER_SECOND="2",
        SWITCHYARD_RATE_LIMIT_BURST="5",
    )
    try:
        token = await make_key(f"127.0.0.1:{ports[0]}", "acme", "bursty", "member")
        accepted, refused, t0 = 0, [], time.monotonic()
        for i in range(20):
            async with client(f"127.0.0.1:{ports[i % 2]}", token) as c:
                r = await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})
            if r.status_code == 201:
                accepted += 1
            else:
                assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
                refused.append(r)
        elapsed = time.monotonic() - t0
        assert 5 <= accepted <= 5 + 2 * elapsed + 1, (accepted, elapsed)
        assert refused and refused[0].json()["error"]["code"] == "rate_limited"
    finally:
        for p in procs:
            stop(p)


async def test_bulk_actions_are_audited_and_for_the_deployment_admin_only(server, tenants):
    async with client(server, tenants[("acme", "admin")]) as c:  # a tenant's admin acts on its tenant only
        assert (await c.post("/api/v1/jobs/retry", json={})).status_code == 403
        assert (await c.post("/api/v1/admin/jobs/reset-stuck", json={})).status_code == 403
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=ADMIN) as c:
        assert (await c.post("/api/v1/jobs/retry", json={"engine": "testing"})).status_code == 200
        assert (await c.post("/api/v1/admin/jobs/reset-stuck", json={})).status_code == 200
        actions = [e["action"] for e in (await c.get("/api/v1/audit")).json()["entries"]]
    assert "jobs.bulk_retry" in actions and "jobs.reset_stuck" in actions


async def test_keys_are_never_in_the_bootstrap_admins_tenant(api, store):
    """Tenant `default` is the bootstrap admin's: its keys name their tenant, never that one."""
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "user": "mia"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "tenant", r.text
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "user": "mia", "tenant": "default"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "tenant", r.text
    assert await store.keys.list(None) == []
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "user": "boss", "tenant": "acme", "role": "admin"})
    acme_admin = {"Authorization": f"Bearer {r.json()['token']}"}
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "user": "mia", "tenant": "default"}, headers=acme_admin)
    assert r.status_code == 422 and r.json()["error"]["field"] == "tenant", r.text
    assert [k["tenant"] for k in await store.keys.list(None)] == ["acme"]


async def test_no_key_sees_or_cancels_the_bootstrap_admins_jobs(api, store):
    job = (await api.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
    tokens = []
    for tenant, role in (("acme", "member"), ("acme", "admin")):
        r = await api.post("/api/v1/auth/keys", json={"name": "k", "user": f"{role}-u", "tenant": tenant, "role": role})
        tokens.append(r.json()["token"])
    # a key the bootstrap admin made without a tenant before the fix: it landed in `default`
    _, legacy = await store.keys.create(
        tenant="default", user="old", role="admin", name="legacy", created_by="admin", now=store.clock.now()
    )
    missing = "0" * 24
    # it no longer authenticates at all: it could otherwise list the bootstrap admin's jobs
    legacy_auth = {"Authorization": f"Bearer {legacy}"}
    assert (await api.get("/api/v1/jobs/", headers=legacy_auth)).status_code == 401
    for token in tokens:
        auth = {"Authorization": f"Bearer {token}"}
        for method, path in (("GET", "/api/v1/jobs/{}/status"), ("POST", "/api/v1/jobs/{}/cancel")):
            r = await api.request(method, path.format(job["id"]), headers=auth)
            gone = await api.request(method, path.format(missing), headers=auth)
            assert r.status_code == gone.status_code == 404, (token, path, r.text)
            assert r.json()["error"] == {
                **gone.json()["error"],
                "message": gone.json()["error"]["message"].replace(missing, job["id"]),
            }
    assert (await store.jobs.get(job["id"]))["status"] == "queued"


async def test_a_jwt_cannot_claim_the_bootstrap_admins_tenant(store, settings):
    from app.main import create_app

    secret = "x" * 32
    app = create_app(
        settings.model_copy(update={"jwt_secret": secret}), store=store, workers=0, maintenance=False, live=False
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            for tenant, expected in (("default", 401), ("acme", 200)):
                token = jwt.encode(
                    {"sub": "eve", "tenant": tenant, "role": "admin", "exp": time.time() + 60}, secret, "HS256"
                )
                r = await c.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
                assert r.status_code == expected, (tenant, r.text)
