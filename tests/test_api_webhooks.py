"""`/api/v1/webhooks` on the real app and database: registration rules (422 naming the field,
the SSRF guard, nothing written when refused), the secret never answered, logged or
audited, roles and tenants, the cap, delete, redelivery's rules, paging, and which events
become deliveries."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from app import logs
from app.notifications.webhooks import WebhookChannel
from app.store.webhook_deliveries import delivery_id
from tests import test_webhooks as hooks
from tests.conftest import TOKEN, make_settings
from tests.helpers import eventually
from tests.test_webhooks import SECRET, Receiver, client, deliveries, expected_for, register, submit

# The fixtures of tests/test_webhooks.py: the app, tenants' API keys, loopback allow-listed.
app, keys, allow_loopback = hooks.app, hooks.keys, hooks.allow_loopback

HOOK = {"url": "https://hooks.example.com/switchyard", "events": ["job.failed"], "secret": SECRET}


@pytest.fixture
def settings():
    return make_settings(
        webhook_max_per_tenant=3,
        webhook_max_attempts=2,
        webhook_retry_base_seconds=0.05,
        webhook_retry_max_seconds=0.1,
        webhook_timeout_seconds=1.0,
    )


@pytest.fixture
def captured():
    """Every log line at the default level (info) as JSON into a buffer; the previous set-up
    restored after. (At debug, pymongo's own command log shows whole documents: any stored
    secret, a job's parameters included.)"""
    saved_structlog, root = structlog.get_config(), logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    buf = io.StringIO()
    logs.configure("INFO", stream=buf)
    yield buf
    structlog.configure(**saved_structlog)
    root.handlers, root.level = saved_root[0], saved_root[1]


async def nothing_written(store) -> None:
    assert await store.webhooks.col.count_documents({}) == 0
    assert await store.audit.col.count_documents({"action": {"$regex": "^webhook"}}) == 0


@pytest.mark.parametrize(
    "change, field",
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "hooks.example.com/x"}, "url"),
        ({"url": "http://hooks.example.com/a b"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
        ({"url": "http://10.0.0.1/hook"}, "url"),
        ({"url": "http://localhost:8080/hook"}, "url"),
        ({"url": "http://127.0.0.1:8080/hook"}, "url"),
        ({"url": "http://[::1]:8080/hook"}, "url"),
        ({"url": "http://[::ffff:10.0.0.1]/hook"}, "url"),
        ({"url": "https://user:pw@hooks.example.com/"}, "url"),
        ({"url": "x" * 3000}, "url"),
        ({"events": ["job.exploded"]}, "events"),
        ({"events": ["job.failed", "job.*"]}, "events"),
        ({"events": []}, "events"),
        ({"events": "job.failed"}, "events"),
        ({"secret": "too-short"}, "secret"),
        ({"secret": "has spaces, and long enough"}, "secret"),
        ({"secret": "x" * 257}, "secret"),
        ({"colour": "red"}, "colour"),
        ({"secret": None}, "secret"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(app, keys, store, change, field):
    body = {k: v for k, v in {**HOOK, **change}.items() if v is not None}
    async with client(app, keys["acme", "operator"]) as c:
        r = await c.post("/api/v1/webhooks", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field, error
    if field == "url":  # the rule, never the value
        assert body["url"] not in r.text and "hooks.example.com" not in r.text
    await nothing_written(store)


async def test_loopback_is_refused_unless_allow_listed(app, keys, store, allow_loopback, monkeypatch):
    async with client(app, keys["acme", "operator"]) as c:
        r = await c.post("/api/v1/webhooks", json={**HOOK, "url": "http://127.0.0.1:9/hook"})
        assert r.status_code == 201, r.text
        monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST")
        from app import get_settings

        get_settings.cache_clear()
        r = await c.post("/api/v1/webhooks", json={**HOOK, "url": "http://127.0.0.1:9/hook"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "url"
    assert await store.webhooks.col.count_documents({}) == 1


async def test_registered_then_listed_and_the_secret_is_never_shown(app, keys, store, captured):
    async with client(app, keys["acme", "operator"]) as c:
        r = await c.post(
            "/api/v1/webhooks", json={**HOOK, "events": ["workflow.completed", "job.failed", "job.failed"]}
        )
        assert r.status_code == 201, r.text
        hook = r.json()
        answers = [r.text]
        assert hook["secret"] == "***" and hook["paused"] is False
        assert hook["events"] == ["job.failed", "workflow.completed"]  # sorted, once each
        assert hook["tenant"] == "acme" and hook["owner"] == "acme/operator-acme"
        for method, path in (
            ("GET", "/api/v1/webhooks"),
            ("GET", f"/api/v1/webhooks/{hook['id']}"),
            ("POST", f"/api/v1/webhooks/{hook['id']}/pause"),
            ("POST", f"/api/v1/webhooks/{hook['id']}/resume"),
            ("GET", f"/api/v1/webhooks/{hook['id']}/deliveries"),
        ):
            r = await c.request(method, path)
            assert r.status_code == 200, (path, r.text)
            answers.append(r.text)
        everything = await c.post("/api/v1/webhooks", json={**HOOK, "events": ["job.queued", "*"]})
        assert everything.json()["events"] == ["*"]
        listed = (await c.get("/api/v1/webhooks")).json()
    assert [w["id"] for w in listed["webhooks"]] == [everything.json()["id"], hook["id"]]  # newest first
    assert {"*", "job.failed", "job.progress", "workflow.cancelled"} <= set(listed["event_types"])
    assert all(SECRET not in text for text in answers)
    assert (await store.webhooks.by_id(hook["id"]))["secret"] == SECRET  # kept for signing
    audit = await store.audit.col.find({"action": {"$regex": "^webhook"}}).to_list(None)
    assert [a["action"] for a in audit] == ["webhook.create", "webhook.pause", "webhook.resume", "webhook.create"]
    assert audit[0]["details"] == {"host": "hooks.example.com", "events": ["job.failed", "workflow.completed"]}
    assert SECRET not in json.dumps(audit, default=str)
    assert SECRET not in captured.getvalue()


async def test_the_secret_is_in_no_log_line_while_deliveries_succeed_and_fail(
    captured, app, keys, store, live, worker, allow_loopback
):
    receiver = Receiver(lambda i, hit: 500 if i == 0 else 200)
    try:
        hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
        jobs = await submit(app, keys["acme", "member"], 2)
        expected = await expected_for(store, hook, jobs)
        await eventually(lambda: _delivered(receiver, expected), timeout=30)
    finally:
        receiver.close()
    lines = [json.loads(line) for line in captured.getvalue().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "webhook.delivered" in events and "webhook.failed" in events
    failed = next(line for line in lines if line["event"] == "webhook.failed")
    assert failed["status_code"] == 500 and failed["next"] == "pending" and failed["webhook_id"] == hook["id"]
    assert failed["tenant"] == "acme" and failed["delivery_id"] in expected
    assert SECRET not in captured.getvalue()
    assert receiver.url() not in captured.getvalue()  # nor the URL


async def _delivered(receiver, expected) -> bool:
    return {h.delivery for h in receiver.ok()} >= set(expected)


async def test_members_look_operators_change(app, keys, store):
    async with client(app, keys["acme", "operator"]) as c:
        hook = (await c.post("/api/v1/webhooks", json=HOOK)).json()
    async with client(app, keys["acme", "member"]) as c:
        assert [w["id"] for w in (await c.get("/api/v1/webhooks")).json()["webhooks"]] == [hook["id"]]
        assert (await c.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).status_code == 200
        for method, path in (
            ("POST", "/api/v1/webhooks"),
            ("POST", f"/api/v1/webhooks/{hook['id']}/pause"),
            ("POST", f"/api/v1/webhooks/{hook['id']}/resume"),
            ("DELETE", f"/api/v1/webhooks/{hook['id']}"),
        ):
            r = await c.request(method, path, json=HOOK if path.endswith("webhooks") else None)
            assert r.status_code == 403, (path, r.text)
    assert await store.webhooks.col.count_documents({}) == 1
    assert (await store.webhooks.get(hook["id"]))["paused"] is False
    async with client(app, TOKEN) as c:  # the bootstrap admin sees every tenant's
        assert [w["id"] for w in (await c.get("/api/v1/webhooks")).json()["webhooks"]] == [hook["id"]]


async def test_a_tenant_has_at_most_the_cap(app, keys, store):
    async with client(app, keys["acme", "operator"]) as c:
        for _ in range(3):
            assert (await c.post("/api/v1/webhooks", json=HOOK)).status_code == 201
        r = await c.post("/api/v1/webhooks", json=HOOK)
        assert r.status_code == 409 and r.json()["error"]["field"] == "tenant"
    async with client(app, keys["globex", "operator"]) as c:
        assert (await c.post("/api/v1/webhooks", json=HOOK)).status_code == 201
    assert await store.webhooks.count("acme") == 3


async def test_only_later_events_of_the_tenant_and_of_the_chosen_types_become_deliveries(app, keys, store):
    async with client(app, keys["acme", "operator"]) as c:
        hook = (await c.post("/api/v1/webhooks", json={**HOOK, "events": ["job.failed", "workflow.failed"]})).json()
    since = (await store.webhooks.by_id(hook["id"]))["since_seq"]
    assert since == await store.events.last_seq()

    def event(seq: int, etype: str, owner: str | None = "acme/alice") -> dict:
        kind = etype.split(".")[0]
        return {
            "_id": seq,
            "type": etype,
            "kind": kind,
            "status": etype.split(".")[1],
            "owner": owner,
            "tenant": owner.split("/")[0] if owner else "default",
            "job_id": f"{seq:024x}" if kind == "job" else None,
            "workflow_id": f"{seq:024x}" if kind == "workflow" else None,
            "at": store.clock.now(),
        }

    channel = WebhookChannel(store)
    await channel.deliver_events(
        [
            event(since, "job.failed"),  # before the webhook existed
            event(since + 1, "job.failed"),
            event(since + 2, "job.completed"),  # a type it did not ask for
            event(since + 3, "job.failed", "globex/bob"),  # another tenant's
            event(since + 4, "job.failed", None),  # no one's
            event(since + 5, "workflow.failed"),
        ]
    )
    await channel.deliver_events([event(since + 1, "job.failed")])  # a replay
    docs = await store.webhook_deliveries.col.find({}).sort("seq", 1).to_list(None)
    assert [d["_id"] for d in docs] == [delivery_id(since + 1, hook["id"]), delivery_id(since + 5, hook["id"])]
    assert json.loads(docs[0]["body"])["seq"] == since + 1 and docs[0]["event_type"] == "job.failed"

    # Paging the deliveries, newest first.
    async with client(app, keys["acme", "member"]) as c:
        page = (await c.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"limit": 1})).json()
        assert [d["seq"] for d in page["deliveries"]] == [since + 5] and page["next_cursor"] == since + 5
        page = (
            await c.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"limit": 1, "cursor": page["next_cursor"]})
        ).json()
        assert [d["seq"] for d in page["deliveries"]] == [since + 1] and page["next_cursor"] is None
        assert page["deliveries"][0]["state"] == "pending" and page["deliveries"][0]["event"]["tenant"] == "acme"
        r = await c.get(f"/api/v1/webhooks/{hook['id']}/deliveries", params={"state": "dead"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "state"


async def test_redelivery_rules_and_delete(app, keys, store):
    async with client(app, keys["acme", "operator"]) as c:
        hook = (await c.post("/api/v1/webhooks", json=HOOK)).json()
        other = (await c.post("/api/v1/webhooks", json=HOOK)).json()
        did = delivery_id(7, hook["id"])
        await store.webhook_deliveries.enqueue(
            [
                {
                    "_id": did,
                    "webhook_id": hook["id"],
                    "tenant": "acme",
                    "seq": 7,
                    "event_type": "job.failed",
                    "body": "{}",
                }
            ]
        )
        base = f"/api/v1/webhooks/{hook['id']}/deliveries"
        r = await c.post(f"{base}/{did}/redeliver")
        assert r.status_code == 409 and "pending" in r.json()["error"]["message"]  # not dead nor delivered
        assert (await c.post(f"{base}/{delivery_id(8, hook['id'])}/redeliver")).status_code == 404
        assert (await c.post(f"/api/v1/webhooks/{other['id']}/deliveries/{did}/redeliver")).status_code == 404
        r = await c.post(f"{base}/$where/redeliver")
        assert r.status_code == 422 and r.json()["error"]["field"] == "path.delivery_id"
        r = await c.post("/api/v1/webhooks/not-an-id/pause")
        assert r.status_code == 422 and r.json()["error"]["field"] == "path.webhook_id"

        assert (await c.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 204
        assert (await c.get(f"{base}")).status_code == 404
        assert (await c.delete(f"/api/v1/webhooks/{hook['id']}")).status_code == 404
        assert [w["id"] for w in (await c.get("/api/v1/webhooks")).json()["webhooks"]] == [other["id"]]
    assert await store.webhook_deliveries.col.count_documents({"webhook_id": hook["id"]}) == 0


async def test_a_dead_delivery_shows_in_the_api_with_its_attempts(app, keys, store, live, worker, allow_loopback):
    receiver = Receiver(lambda i, hit: 500)
    try:
        hook = await register(app, keys["acme", "operator"], receiver.url(), events=["job.completed"])
        [job] = await submit(app, keys["acme", "member"], 1)
        [did] = await expected_for(store, hook, [job])

        async def dead():
            ds = await deliveries(app, keys["acme", "member"], hook["id"])
            return ds[0] if ds and ds[0]["state"] == "dead" else None

        d = await eventually(dead, timeout=30)
    finally:
        receiver.close()
    assert d["id"] == did and d["tries"] == 2 and len(d["attempts"]) == 2
    assert all(a["status_code"] == 500 and a["error"] == "HTTP 500" for a in d["attempts"])
    assert d["attempts"][0]["at"] < d["attempts"][1]["at"]
    assert d["event"]["job_id"] == job and d["event"]["type"] == "job.completed"
