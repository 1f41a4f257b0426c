"""Approvers are asked, on the whole app (relay, notifier, hub, in-process workers on a real
uvicorn port): a stored notification for each approver and nobody else, a WebSocket push to
the approver (not the workflow's owner), an email in the outbox with the link to the
approval in the dashboard, and the step's `job.awaiting` and `job.completed` events."""

from __future__ import annotations

import json

import httpx
import pytest
import websockets

from tests.conftest import TOKEN, make_settings
from tests.helpers import eventually, recv, until

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC = "https://switchyard.example.com"


@pytest.fixture
def settings():
    return make_settings(public_url=PUBLIC)


async def listening(host: str, token: str):
    ws = await websockets.connect(f"ws://{host}/api/v1/ws", additional_headers={"Authorization": f"Bearer {token}"})
    assert (await recv(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "subscribe", "notifications": True}))
    [*_, ack] = await until(ws, lambda m: m.get("type") == "subscribed")
    assert "approval.requested" in ack["notifications"]
    return ws


async def test_approvers_and_only_they_are_asked(server, store):
    async with httpx.AsyncClient(base_url=f"http://{server}", headers=AUTH, timeout=20) as admin:
        tokens = {}
        for tenant, user, role in (
            ("acme", "ann", "member"),
            ("acme", "bob", "member"),
            ("acme", "olga", "operator"),
            ("acme", "ada", "admin"),
            ("globex", "gus", "admin"),
        ):
            r = await admin.post("/api/v1/auth/keys", json={"name": user, "tenant": tenant, "user": user, "role": role})
            assert r.status_code == 201, r.text
            tokens[user] = r.json()["token"]
        as_ = {u: {"Authorization": f"Bearer {t}"} for u, t in tokens.items()}
        r = await admin.put(
            "/api/v1/jobs/notifications/preferences", json={"email": "bob@example.com"}, headers=as_["bob"]
        )
        assert r.status_code == 200, r.text

        bob_ws, ann_ws = await listening(server, tokens["bob"]), await listening(server, tokens["ann"])
        try:
            r = await admin.post(
                "/api/v1/jobs/workflows",
                headers=as_["ann"],
                json={
                    "name": "launch post",
                    "jobs": [
                        {"key": "draft", "engine": "testing", "operation": "ok"},
                        {"key": "review", "type": "approval", "depends_on": ["draft"],
                         "approvers": ["acme/bob", "role:admin"], "timeout_seconds": 3600},
                    ],
                },
            )  # fmt: skip
            assert r.status_code == 201, r.text
            wf_id, step_id = r.json()["id"], r.json()["jobs"]["review"]

            pushed = (await until(bob_ws, lambda m: m.get("type") == "notification", timeout=60))[-1]
            assert pushed["event_type"] == "approval.requested" and pushed["status"] == "awaiting"
            assert (pushed["workflow_id"], pushed["job_id"], pushed["step_key"]) == (wf_id, step_id, "review")
            assert pushed["title"] == f"Approval needed: step review of workflow launch post ({wf_id})"

            async def asked():
                docs = await store.notifications.col.find({"type": "approval.requested"}).to_list(None)
                return docs if len(docs) >= 2 else None

            docs = await eventually(asked, timeout=30)
            assert sorted(d["user"] for d in docs) == ["acme/ada", "acme/bob"]  # the named user and the role
            for user in ("ann", "olga", "gus"):
                page = (await admin.get("/api/v1/jobs/notifications", headers=as_[user])).json()
                assert not [n for n in page["notifications"] if n["type"] == "approval.requested"], user
            bob_page = (await admin.get("/api/v1/jobs/notifications", headers=as_["bob"])).json()
            (note,) = bob_page["notifications"]
            assert note["id"] == pushed["id"] and note["step_key"] == "review"
            r = await admin.post(f"/api/v1/jobs/notifications/{note['id']}/read", headers=as_["bob"])
            assert r.status_code == 200, r.text

            mails = await store.mail.col.find({"event_type": "approval.requested"}).to_list(None)
            assert [m["to"] for m in mails] == ["bob@example.com"]  # ada set no address, and no alert address is set
            assert mails[0]["_id"] == pushed["id"]
            assert f"{PUBLIC}/#/approvals/{wf_id}/review" in mails[0]["body"]
            assert mails[0]["subject"] == f"[Switchyard] {pushed['title']}"

            # The owner is pushed nothing for it (job.awaiting is not a notified type).
            await ann_ws.send(json.dumps({"action": "ping"}))
            assert [m["type"] for m in await until(ann_ws, lambda m: m.get("type") == "pong")] == ["pong"]

            r = await admin.post(f"/api/v1/jobs/workflows/{wf_id}/steps/review/approve", headers=as_["bob"])
            assert r.status_code == 200, r.text

            async def logged():
                events = await store.events.since(0, job_id=step_id)
                return events if "job.completed" in [e["type"] for e in events] else None

            events = await eventually(logged, timeout=30)
            assert [e["type"] for e in events][-2:] == ["job.awaiting", "job.completed"]
            assert len(await store.notifications.col.find({"type": "approval.requested"}).to_list(None)) == 2
        finally:
            await bob_ws.close()
            await ann_ws.close()
