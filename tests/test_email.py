"""Email against a real SMTP server (aiosmtpd): one alert per failure, late but once when
the server was down, safe headers, and the state `/health` reports."""

from __future__ import annotations

import asyncio
import email

import pytest
from aiosmtpd.controller import Controller

from app.notifications.email import Smtp, build
from app.notifications.runtime import Live
from tests.conftest import make_settings
from tests.helpers import eventually, wait_status
from tests.servers import free_port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[email.message.Message] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_port():
    return free_port()


@pytest.fixture
def settings(smtp_port):
    return make_settings(smtp_url=f"smtp://127.0.0.1:{smtp_port}", alert_email="oncall@example.com",
                         email_from="switchyard@example.com", mail_retry_base_seconds=0.2,
                         mail_retry_max_seconds=0.5, smtp_timeout_seconds=2)


@pytest.fixture
def inbox(smtp_port):
    box = Inbox()
    ctl = Controller(box, hostname="127.0.0.1", port=smtp_port)
    ctl.start()
    yield box
    ctl.stop()


async def quiet_for(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_a_permanent_failure_sends_one_alert(store, settings, inbox, live, worker, jobs):
    job = await jobs.queued(operation="permanent", name="monthly invoices")
    await wait_status(store, job["_id"], "failed")
    await eventually(lambda: _arrived(inbox, 1), timeout=30)
    await quiet_for(1.5)  # nothing more comes
    [msg] = inbox.messages
    assert msg["To"] == "oncall@example.com" and msg["From"] == "switchyard@example.com"
    assert "monthly invoices" in msg["Subject"] and job["_id"] in msg["Subject"]
    body = msg.get_payload()
    assert "bad_input: this can never work" in body
    assert "Attempts:  1" in body
    assert f"{settings.public_url}/#/jobs/{job['_id']}" in body
    status = await live.email_status()
    assert status["status"] == "ok" and status["pending"] == 0


async def test_smtp_down_then_up_delivers_late_and_once(store, settings, smtp_port, live, jobs):
    job = await jobs.failed(name="ingest")
    mail = await eventually(lambda: _attempted(store), timeout=30)
    assert mail["status"] in ("pending", "sending") and mail["last_error"]
    assert (await live.email_status())["status"] == "failing"
    box = Inbox()
    ctl = Controller(box, hostname="127.0.0.1", port=smtp_port)
    ctl.start()
    try:
        await eventually(lambda: _arrived(box, 1), timeout=30)
        await quiet_for(1.5)
        assert len(box.messages) == 1 and job["_id"] in box.messages[0]["Subject"]
        sent = await store.mail.col.find_one({})
        assert sent["status"] == "sent" and sent["attempts"] >= 2
    finally:
        ctl.stop()


async def test_a_workflow_failure_sends_one_workflow_alert_not_one_per_step(store, settings, inbox, live, worker, api):
    await store.engines.set_limit("testing", 10)
    r = await api.post("/api/v1/jobs/workflows", json={"name": "etl", "jobs": [
        {"key": "extract", "engine": "testing", "operation": "ok"},
        {"key": "load", "engine": "testing", "operation": "permanent", "depends_on": ["extract"]},
        {"key": "report", "engine": "testing", "operation": "ok", "depends_on": ["load"]}]})
    wf = r.json()
    await eventually(lambda: _arrived(inbox, 1), timeout=30)
    await quiet_for(1.5)
    [msg] = inbox.messages
    assert msg["Subject"].startswith("[Switchyard] Workflow failed: etl") and wf["id"] in msg["Subject"]
    assert "step load failed after 1 attempt(s): bad_input" in msg.get_payload()


def test_a_name_cannot_inject_a_header():
    mail = {"_id": "123:admin", "to": "ops@example.com", "body": "hi\n", "event_type": "job.failed",
            "subject": "[Switchyard] Job failed: x\r\nBcc: victim@example.com\r\nX-Evil: 1 (abc)"}
    raw = build(mail, "switchyard@example.com").as_bytes()
    parsed = email.message_from_bytes(raw)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert "Bcc: victim@example.com" in parsed["Subject"]  # kept as text, on the one Subject line
    assert parsed["Message-ID"] == "<123.admin@switchyard>"


def test_smtp_urls():
    s = Smtp.parse("smtp://user%40x:p%3Ass@mail.example.com:2525")
    assert (s.host, s.port, s.username, s.password, s.use_tls) == ("mail.example.com", 2525, "user@x", "p:ss", False)
    assert Smtp.parse("smtps://h").port == 465 and Smtp.parse("smtps://h").use_tls
    assert Smtp.parse("smtp+starttls://h").start_tls is True
    with pytest.raises(ValueError):
        Smtp.parse("http://h")


async def test_without_smtp_the_reason_is_reported(store):
    lv = Live(store, make_settings(), background=False)
    status = await lv.email_status()
    assert status == {"configured": False, "status": "disabled", "reason": "SMTP_URL is not set: no email is sent"}


async def _arrived(box: Inbox, n: int) -> bool:
    return len(box.messages) >= n


async def _attempted(store):
    doc = await store.mail.col.find_one({})
    return doc if doc and doc["attempts"] >= 1 and doc.get("last_error") else None




async def test_an_alert_never_carries_a_secret_parameter(store, settings, inbox, live, worker, jobs):
    secret = "s3cr3t-VALUE"
    job = await jobs.queued(operation="uses_secret", name="with secrets",
                            parameters={"password": secret, "secrets": {"x": secret}, "fail": True})
    await wait_status(store, job["_id"], "failed")
    await eventually(lambda: _arrived(inbox, 1), timeout=30)
    raw = inbox.messages[0].as_string()
    assert secret not in raw and job["_id"] in inbox.messages[0]["Subject"]
