"""Webhook deliveries end to end against real peers: the app, the relay, the notifier and the
sender on the test's database, jobs run by a real worker, and a real HTTP receiver on
127.0.0.1 (allow-listed, as tests/test_handlers_general.py allows it). Every delivery is
checked with the verification code of docs/webhooks.md, taken from the page itself.

What must hold: every event reaches its tenant's webhook, none is lost, none is delivered
twice once delivered, through failing receivers, time-outs, redirects, a dead sender and
two senders at once; a delivery that never gets through is dead after N tries and can be
redelivered; a paused webhook's deliveries wait for the resume; another tenant never
receives or sees a thing; the address check is made again at every attempt."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app import get_settings
from app.domain.events import public
from app.notifications.runtime import Live
from app.notifications.webhooks import WebhookChannel
from app.store.webhook_deliveries import delivery_id
from tests.conftest import TOKEN, make_settings
from tests.helpers import eventually, wait_status
from tests.servers import free_port

DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"
SECRET = "s3cr3t-Secret-of-acme-0123456789"
OTHER_SECRET = "globex-secret-abcdefghijklmnop"


def documented_verify():
    """The `verify` function exactly as docs/webhooks.md shows it."""
    found = re.search(r"<!-- snippet: verify -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    assert found, "docs/webhooks.md lost its verification snippet"
    namespace: dict = {}
    exec(compile(found[1], f"{DOC}:verify", "exec"), namespace)
    return namespace["verify"]


@dataclass
class Hit:
    path: str
    delivery: str | None
    event: str | None
    headers: object  # http.client.HTTPMessage: `get` is case-insensitive
    body: bytes
    status: int
    started: float
    ended: float = 0.0


class Receiver:
    """A real HTTP server on 127.0.0.1 recording every request. `plan(n, hit)` picks the
    answer to the n-th request (0-based): a status, or (status, seconds to wait first)."""

    def __init__(self, plan=None) -> None:
        self.plan = plan or (lambda n, hit: 200)
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                hit = Hit(
                    self.path,
                    self.headers.get("Switchyard-Delivery"),
                    self.headers.get("Switchyard-Event"),
                    self.headers,
                    self.rfile.read(length) if length else b"",
                    0,
                    time.monotonic(),
                )
                with receiver.lock:
                    answer = receiver.plan(len(receiver.hits), hit)
                    receiver.hits.append(hit)
                status, wait = answer if isinstance(answer, tuple) else (answer, 0)
                time.sleep(wait)
                hit.status = status
                try:
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", f"http://127.0.0.1:{receiver.port}/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up waiting
                hit.ended = time.monotonic()

            do_POST = do_GET = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ok(self) -> list[Hit]:
        return [h for h in self.hits if 200 <= h.status < 300]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fail_first(n: int, status: int = 500):
    return lambda i, hit: status if i < n else 200


@pytest.fixture
def settings():
    return make_settings(
        webhook_max_attempts=5,
        webhook_retry_base_seconds=0.05,
        webhook_retry_max_seconds=0.2,
        webhook_timeout_seconds=1.0,
    )


@pytest.fixture
def allow_loopback(monkeypatch):
    """SWITCHYARD_HTTP_ALLOWLIST=127.0.0.1 for one test: the http_request handler's allow-list."""
    monkeypatch.setenv("SWITCHYARD_HTTP_ALLOWLIST", "127.0.0.1")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST", raising=False)
    get_settings.cache_clear()


@pytest.fixture
def receiver(allow_loopback):
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
async def app(store, settings):
    """The API on the test's store (no live loops of its own: the `live` fixture runs them)."""
    from app.main import create_app

    app = create_app(settings, store=store, workers=0, maintenance=False, live=False)
    async with app.router.lifespan_context(app):
        yield app


def client(app, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers={"Authorization": f"Bearer {token}"}
    )


@pytest.fixture
async def keys(app) -> dict[tuple[str, str], str]:
    """API keys of two tenants, `acme` and `globex`, as member and operator."""
    out = {}
    async with client(app, TOKEN) as c:
        for tenant in ("acme", "globex"):
            for role in ("member", "operator"):
                r = await c.post(
                    "/api/v1/auth/keys", json={"name": "k", "tenant": tenant, "user": f"{role}-{tenant}", "role": role}
                )
                assert r.status_code == 201, r.text
                out[tenant, role] = r.json()["token"]
    return out


async def register(app, token: str, url: str, events=("*",), secret: str = SECRET) -> dict:
    async with client(app, token) as c:
        r = await c.post("/api/v1/webhooks", json={"url": url, "events": list(events), "secret": secret})
    assert r.status_code == 201, r.text
    return r.json()


async def submit(app, token: str, n: int = 1, operation: str = "ok") -> list[str]:
    async with client(app, token) as c:
        out = []
        for _ in range(n):
            r = await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": operation})
            assert r.status_code == 201, r.text
            out.append(r.json()["id"])
        return out


async def deliveries(app, token: str, hook_id: str) -> list[dict]:
    async with client(app, token) as c:
        r = await c.get(f"/api/v1/webhooks/{hook_id}/deliveries", params={"limit": 200})
    assert r.status_code == 200, r.text
    return r.json()["deliveries"]


async def settled_events(store, job_ids: list[str], last: str = "job.completed") -> list[dict]:
    """The log once every job's `last` event is in it."""

    async def check():
        log = await store.events.since(0, limit=10_000)
        done = {e["job_id"] for e in log if e["type"] == last}
        return log if set(job_ids) <= done else None

    return await eventually(check, timeout=30)


async def expected_for(store, hook: dict, job_ids: list[str], last: str = "job.completed") -> dict[str, dict]:
    """What the webhook must receive: every later event of its tenant's jobs, by delivery id."""
    doc = await store.webhooks.by_id(hook["id"])
    return {
        delivery_id(e["_id"], hook["id"]): e
        for e in await settled_events(store, job_ids, last)
        if e["tenant"] == doc["tenant"]
        and e["_id"] > doc["since_seq"]
        and ("*" in doc["events"] or e["type"] in doc["events"])
    }


async def all_delivered(receiver: Receiver, expected: dict, timeout: float = 40) -> None:
    async def check():
        return {h.delivery for h in receiver.ok()} >= set(expected)

    await eventually(check, timeout=timeout, interval=0.1)


def test_the_documented_verification_accepts_a_signature_and_refuses_the_rest():
    from app.notifications.webhooks import sign

    verify = documented_verify()
    body = b'{"type":"job.failed"}'
    now = int(time.time())
    good = {"Switchyard-Timestamp": str(now), "Switchyard-Signature": sign(SECRET, now, body)}
    assert verify(SECRET, good, body)
    assert verify(SECRET, {**good, "Switchyard-Signature": "v0=abc, " + good["Switchyard-Signature"]}, body)
    assert not verify(SECRET, good, body + b" ")  # the body changed
    assert not verify(OTHER_SECRET, good, body)  # another secret
    sig = good["Switchyard-Signature"]
    flipped = sig[:-1] + ("1" if sig[-1] == "0" else "0")
    assert not verify(SECRET, {**good, "Switchyard-Signature": flipped}, body)
    old = now - 3600  # a replay of an old, correctly signed delivery
    assert not verify(SECRET, {"Switchyard-Timestamp": str(old), "Switchyard-Signature": sign(SECRET, old, body)}, body)
    assert not verify(SECRET, {"Switchyard-Signature": good["Switchyard-Signature"]}, body)
    assert not verify(SECRET, {"Switchyard-Timestamp": "1e9", "Switchyard-Signature": "v1=x"}, body)
    # the header carries what the docs say: hex HMAC-SHA256 of "<timestamp>.<body>"
    import hashlib
    import hmac

    mac = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert good["Switchyard-Signature"] == f"v1={mac}"


async def test_a_receiver_that_fails_at_first_gets_every_event_once_and_signed(
    app, keys, store, live, worker, receiver
):
    receiver.plan = fail_first(4)
    hook = await register(app, keys["acme", "operator"], receiver.url())
    jobs = await submit(app, keys["acme", "member"], 4)
    expected = await expected_for(store, hook, jobs)
    assert {e["type"] for e in expected.values()} >= {"job.queued", "job.running", "job.completed"}
    await all_delivered(receiver, expected)

    assert [h.status for h in receiver.hits[:4]] == [500] * 4
    ok = Counter(h.delivery for h in receiver.ok())
    assert set(ok) == set(expected)  # none lost, none foreign
    assert [d for d, n in ok.items() if n > 1] == []  # none delivered twice
    verify = documented_verify()
    for h in receiver.hits:
        assert h.path == "/hook"
        assert verify(SECRET, h.headers, h.body), h.delivery
        assert not verify(OTHER_SECRET, h.headers, h.body)
        event = expected[h.delivery]
        assert h.event == event["type"] == json.loads(h.body)["type"]
        assert json.loads(h.body) == json.loads(json.dumps(public(event), default=str))
        assert h.headers.get("Content-Type") == "application/json"

    shown = {d["id"]: d for d in await deliveries(app, keys["acme", "member"], hook["id"])}
    assert set(shown) == set(expected)
    assert all(d["state"] == "delivered" and d["delivered_at"] for d in shown.values())
    failed_first = {h.delivery for h in receiver.hits[:4]}
    for did in failed_first:  # each failure and the success, recorded in order
        codes = [a["status_code"] for a in shown[did]["attempts"]]
        assert codes[-1] == 200 and set(codes[:-1]) == {500} and shown[did]["tries"] == len(codes)
        assert shown[did]["attempts"][0]["error"] == "HTTP 500" and shown[did]["attempts"][0]["duration_ms"] >= 0
    seqs = [d["seq"] for d in await deliveries(app, keys["acme", "member"], hook["id"])]
    assert seqs == sorted(seqs, reverse=True)  # newest first


async def test_replaying_the_log_writes_no_second_delivery(app, keys, store, live, worker, receiver):
    hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
    jobs = await submit(app, keys["acme", "member"], 2)
    expected = await expected_for(store, hook, jobs)
    assert len(expected) == 2
    await all_delivered(receiver, expected)
    # The notifier re-reading the log after a crash: the same events, fanned out again.
    log = await store.events.since(0, limit=10_000)
    assert await store.webhook_deliveries.enqueue([]) == 0
    await WebhookChannel(store).deliver_events(log)
    await WebhookChannel(store).deliver_events(log)
    await asyncio.sleep(1.5)  # time for a copy to go out, were there one
    assert sorted(h.delivery for h in receiver.hits) == sorted(expected)
    assert len(await deliveries(app, keys["acme", "member"], hook["id"])) == 2


async def test_after_n_failures_a_delivery_is_dead_and_redelivery_sends_it(app, keys, store, live, worker, receiver):
    receiver.plan = lambda i, hit: 503
    hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.failed"])
    [job] = await submit(app, keys["acme", "member"], 1, operation="permanent")
    expected = await expected_for(store, hook, [job], last="job.failed")
    [did] = expected

    async def dead():
        ds = await deliveries(app, keys["acme", "member"], hook["id"])
        return ds[0] if ds and ds[0]["state"] == "dead" else None

    d = await eventually(dead, timeout=30)
    assert d["tries"] == 5 and [a["status_code"] for a in d["attempts"]] == [503] * 5
    assert d["last_error"] == "HTTP 503" and d["next_attempt_at"] is None
    await asyncio.sleep(1.0)
    assert len(receiver.hits) == 5  # no sixth try

    receiver.plan = lambda i, hit: 204
    async with client(app, keys["acme", "member"]) as c:  # a member may look, not redeliver
        r = await c.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{did}/redeliver")
    assert r.status_code == 403
    async with client(app, keys["acme", "operator"]) as c:
        r = await c.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{did}/redeliver")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "pending" and r.json()["tries"] == 0
        again = await c.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{did}/redeliver")
        assert again.status_code in (200, 409)  # 409 unless it was delivered in between

    async def delivered():
        [d] = await deliveries(app, keys["acme", "member"], hook["id"])
        return d if d["state"] == "delivered" else None

    d = await eventually(delivered, timeout=20)
    assert [a["status_code"] for a in d["attempts"]][-1] == 204
    assert [h.delivery for h in receiver.hits if h.status == 204] in ([did], [did, did])
    assert documented_verify()(SECRET, receiver.hits[-1].headers, receiver.hits[-1].body)
    audit = await store.audit.list(tenant="acme", after=None, limit=50)
    assert "webhook.redeliver" in [a["action"] for a in audit[0]]


async def test_a_tenant_receives_and_sees_only_its_own(app, keys, store, live, worker, allow_loopback):
    mine, theirs = Receiver(), Receiver()
    try:
        a = await register(app, keys["acme", "operator"], mine.url())
        b = await register(app, keys["globex", "operator"], theirs.url(), secret=OTHER_SECRET)
        a_jobs = await submit(app, keys["acme", "member"], 2)
        b_jobs = await submit(app, keys["globex", "member"], 2)
        async with client(app, TOKEN) as c:  # the bootstrap admin's own job: tenant `default`
            r = await c.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})
            admin_job = r.json()["id"]
        await all_delivered(mine, await expected_for(store, a, a_jobs))
        await all_delivered(theirs, await expected_for(store, b, b_jobs))
        await wait_status(store, admin_job, "completed")
        await asyncio.sleep(1.0)
        for rec, jobs, tenant, secret in ((mine, a_jobs, "acme", SECRET), (theirs, b_jobs, "globex", OTHER_SECRET)):
            bodies = [json.loads(h.body) for h in rec.hits]
            assert {b["job_id"] for b in bodies} == set(jobs)
            assert {b["tenant"] for b in bodies} == {tenant}
            assert all(documented_verify()(secret, h.headers, h.body) for h in rec.hits)

        async with client(app, keys["globex", "operator"]) as c:
            listed = (await c.get("/api/v1/webhooks")).json()["webhooks"]
            assert [w["id"] for w in listed] == [b["id"]]
            some = next(iter(await expected_for(store, a, a_jobs)))
            for method, path in (
                ("GET", f"/api/v1/webhooks/{a['id']}"),
                ("GET", f"/api/v1/webhooks/{a['id']}/deliveries"),
                ("POST", f"/api/v1/webhooks/{a['id']}/pause"),
                ("POST", f"/api/v1/webhooks/{a['id']}/resume"),
                ("POST", f"/api/v1/webhooks/{a['id']}/deliveries/{some}/redeliver"),
                ("POST", f"/api/v1/webhooks/{b['id']}/deliveries/{some}/redeliver"),  # theirs, through mine
                ("DELETE", f"/api/v1/webhooks/{a['id']}"),
            ):
                r = await c.request(method, path)
                assert r.status_code == 404, (method, path, r.text)
                assert r.json()["error"]["code"] == "not_found"
        assert (await store.webhooks.get(a["id"]))["paused"] is False
        assert len(await deliveries(app, keys["acme", "member"], a["id"])) == len(mine.ok())
    finally:
        mine.close()
        theirs.close()


async def test_a_paused_webhook_holds_its_deliveries_until_the_resume(app, keys, store, live, worker, receiver):
    hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
    async with client(app, keys["acme", "operator"]) as c:
        r = await c.post(f"/api/v1/webhooks/{hook['id']}/pause")
        assert r.status_code == 200 and r.json()["paused"] is True
    jobs = await submit(app, keys["acme", "member"], 3)
    expected = await expected_for(store, hook, jobs)

    async def held():
        ds = await deliveries(app, keys["acme", "member"], hook["id"])
        return len(ds) == 3 and all(d["state"] == "held" for d in ds)

    await eventually(held, timeout=20)
    await asyncio.sleep(1.5)
    assert receiver.hits == []  # nothing went out while paused
    assert all(d["tries"] == 0 for d in await deliveries(app, keys["acme", "member"], hook["id"]))

    async with client(app, keys["acme", "operator"]) as c:
        r = await c.post(f"/api/v1/webhooks/{hook['id']}/resume")
        assert r.status_code == 200 and r.json()["paused"] is False
    await all_delivered(receiver, expected, timeout=20)
    assert sorted(h.delivery for h in receiver.hits) == sorted(expected)


async def test_redirects_time_outs_and_refused_connections_are_failures(app, keys, store, live, worker, receiver):
    receiver.plan = lambda i, hit: 302 if i == 0 else (503, 2.0) if i == 1 else 200
    hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
    closed = await register(
        app, keys["acme", "operator"], f"http://127.0.0.1:{free_port()}/nobody", events=["job.completed"]
    )
    [job] = await submit(app, keys["acme", "member"], 1)
    await all_delivered(receiver, await expected_for(store, hook, [job]))
    [d] = await deliveries(app, keys["acme", "member"], hook["id"])
    attempts = d["attempts"]
    assert d["state"] == "delivered" and [a["status_code"] for a in attempts] == [302, None, 200]
    assert attempts[0]["error"] == "HTTP 302 (redirects are not followed)"
    assert attempts[1]["error"] == "timed out after 1 s" and attempts[1]["duration_ms"] >= 900
    assert [h.path for h in receiver.hits] == ["/hook"] * 3  # never to the redirect's target

    async def refused():
        ds = await deliveries(app, keys["acme", "member"], closed["id"])
        return ds[0] if ds and len(ds[0]["attempts"]) >= 2 else None

    d = await eventually(refused, timeout=20)
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in d["attempts"])


async def test_the_address_is_checked_again_at_every_attempt(app, keys, store, live, worker, receiver, monkeypatch):
    hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
    monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST")  # as if the name now resolved somewhere private
    get_settings.cache_clear()
    [job] = await submit(app, keys["acme", "member"], 1)
    await expected_for(store, hook, [job])

    async def tried():
        ds = await deliveries(app, keys["acme", "member"], hook["id"])
        return ds[0] if ds and len(ds[0]["attempts"]) >= 2 else None

    d = await eventually(tried, timeout=20)
    assert receiver.hits == []
    assert all(a["error"].startswith("refused: 127.0.0.1 resolves to 127.0.0.1") for a in d["attempts"])


async def test_deliveries_hold_across_a_dead_sender_and_two_senders_at_once(
    app, keys, store, settings, live, worker, receiver
):
    # Two senders (as two `serve` processes would run), a slow receiver that fails at first:
    # no delivery is ever in flight twice, and none is answered 2xx twice.
    receiver.plan = lambda i, hit: (500, 0.05) if i < 6 else (200, 0.1)
    other = Live(store, settings, lease_seconds=2.0)
    await other.start()
    try:
        hook = await register(app, keys["acme", "operator"], receiver.url())
        jobs = await submit(app, keys["acme", "member"], 6)
        expected = await expected_for(store, hook, jobs)
        await all_delivered(receiver, expected, timeout=60)
    finally:
        await other.stop()
    ok = Counter(h.delivery for h in receiver.ok())
    assert set(ok) == set(expected) and max(ok.values()) == 1
    by_delivery: dict[str, list[Hit]] = {}
    for h in receiver.hits:
        by_delivery.setdefault(h.delivery, []).append(h)
    for did, hits in by_delivery.items():  # one sender at a time per delivery
        hits.sort(key=lambda h: h.started)
        assert all(a.ended <= b.started for a, b in zip(hits, hits[1:], strict=False)), did


async def test_a_delivery_whose_sender_died_is_taken_back_after_its_lease(app, keys, store, worker, receiver, settings):
    hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
    lv = Live(store, settings, lease_seconds=2.0)
    lv.webhooks.run = lambda: asyncio.sleep(0)  # this process writes deliveries but sends none
    await lv.start()
    try:
        [job] = await submit(app, keys["acme", "member"], 1)
        [did] = await expected_for(store, hook, [job])
        await eventually(lambda: store.webhook_deliveries.col.find_one({"_id": did}), timeout=20)
    finally:
        await lv.stop()
    # A sender claims it and dies before answering: its lease is short here.
    [claimed] = await store.webhook_deliveries.claim_due(10, lease_seconds=0.5)
    assert claimed["_id"] == did and claimed["tries"] == 1
    lv = Live(store, settings, lease_seconds=2.0)
    await lv.start()
    try:
        await all_delivered(receiver, {did: None}, timeout=20)
    finally:
        await lv.stop()
    doc = await store.webhook_deliveries.get(did)
    assert doc["state"] == "delivered" and doc["tries"] == 2  # the lost try counted
    assert [h.delivery for h in receiver.hits] == [did]
