"""Email against a real SMTP server (aiosmtpd): one alert per failure, late but once when
the server was down, safe headers, RFC 5322 headers and parts as they arrive, alerts with
no recipient reported in `/health` and the log, and the state `/health` reports."""

from __future__ import annotations

import asyncio
import email
import io
import json
import logging
import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import pytest
import structlog
from aiosmtpd.controller import Controller

from app import logs
from app.notifications import recipients
from app.notifications.email import Mailer, Smtp, build, id_domain
from app.notifications.recipients import NO_RECIPIENT, NoRecipient
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
    return make_settings(
        smtp_url=f"smtp://127.0.0.1:{smtp_port}",
        alert_email="oncall@example.com",
        email_from="switchyard@example.com",
        mail_retry_base_seconds=0.2,
        mail_retry_max_seconds=0.5,
        smtp_timeout_seconds=2,
    )


@pytest.fixture
def inbox(smtp_port):
    box = Inbox()
    ctl = Controller(box, hostname="127.0.0.1", port=smtp_port)
    ctl.start()
    yield box
    ctl.stop()


@pytest.fixture(autouse=True)
def fresh_no_recipient():
    NO_RECIPIENT.clear()  # this process's count: one test's suppressions are not the next one's
    yield
    NO_RECIPIENT.clear()


@pytest.fixture
def captured():
    """Warnings as JSON lines into a buffer; the previous logging set-up restored after."""
    saved_structlog, root = structlog.get_config(), logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    buf = io.StringIO()
    logs.configure("WARNING", stream=buf)
    yield buf
    structlog.configure(**saved_structlog)
    root.handlers, root.level = saved_root[0], saved_root[1]


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
    assert msg.get_content_type() == "text/plain"
    sent_at = parsedate_to_datetime(msg["Date"])  # RFC 5322: present, parseable, with a zone
    assert sent_at.tzinfo is not None and abs(datetime.now(UTC) - sent_at) < timedelta(minutes=5)
    assert re.fullmatch(r"<[A-Za-z0-9.-]+@example\.com>", msg["Message-ID"])  # the sender's domain
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
    r = await api.post(
        "/api/v1/jobs/workflows",
        json={
            "name": "etl",
            "jobs": [
                {"key": "extract", "engine": "testing", "operation": "ok"},
                {"key": "load", "engine": "testing", "operation": "permanent", "depends_on": ["extract"]},
                {"key": "report", "engine": "testing", "operation": "ok", "depends_on": ["load"]},
            ],
        },
    )
    wf = r.json()
    await eventually(lambda: _arrived(inbox, 1), timeout=30)
    await quiet_for(1.5)
    [msg] = inbox.messages
    assert msg["Subject"].startswith("[Switchyard] Workflow failed: etl") and wf["id"] in msg["Subject"]
    assert "step load failed after 1 attempt(s): bad_input" in msg.get_payload()


def test_a_name_cannot_inject_a_header():
    mail = {
        "_id": "123:admin",
        "to": "ops@example.com",
        "body": "hi\n",
        "event_type": "job.failed",
        "subject": "[Switchyard] Job failed: x\r\nBcc: victim@example.com\r\nX-Evil: 1 (abc)",
    }
    raw = build(mail, "switchyard@example.com").as_bytes()
    parsed = email.message_from_bytes(raw)
    assert parsed["Bcc"] is None and parsed["X-Evil"] is None
    assert "Bcc: victim@example.com" in parsed["Subject"]  # kept as text, on the one Subject line
    assert parsed["Message-ID"] == "<123.admin.switchyard@example.com>"  # the same on every retry


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
    job = await jobs.queued(
        operation="uses_secret",
        name="with secrets",
        parameters={"password": secret, "secrets": {"x": secret}, "fail": True},
    )
    await wait_status(store, job["_id"], "failed")
    await eventually(lambda: _arrived(inbox, 1), timeout=30)
    raw = inbox.messages[0].as_string()
    assert secret not in raw and job["_id"] in inbox.messages[0]["Subject"]


async def test_what_arrives_has_date_message_id_and_a_text_part_beside_html(store, settings, inbox):
    """The Mailer's real send, parsed at the SMTP server: an HTML alert is a
    multipart/alternative whose first part is the text; a sender at `localhost` takes the
    Message-ID's domain from the SMTP host, unless that is an IP address."""
    local = settings.model_copy(update={"email_from": "switchyard@localhost"})
    await store.mail.enqueue(
        [
            {
                "_id": "42:admin",
                "to": "ops@example.com",
                "subject": "[Switchyard] Job failed: x",
                "body": "plain words\n",
                "html": "<p>rich <b>words</b></p>",
            }
        ]
    )
    assert await Mailer(store, local).drain() == 1
    [msg] = inbox.messages
    assert parsedate_to_datetime(msg["Date"]).tzinfo is not None
    assert msg["Message-ID"] == "<42.admin.switchyard@switchyard.invalid>"  # neither is a qualified name
    assert id_domain("switchyard@localhost", "mail.example.com") == "mail.example.com"
    assert msg.get_content_type() == "multipart/alternative"
    text, html = msg.get_payload()
    assert text.get_content_type() == "text/plain" and text.get_payload().strip() == "plain words"
    assert html.get_content_type() == "text/html" and "<b>words</b>" in html.get_payload()


async def test_with_no_recipient_health_and_the_log_say_so_once_per_kind(store, smtp_port, captured, jobs):
    """SMTP is set, SWITCHYARD_ALERT_EMAIL is not, and the owner has no address: failures
    send nothing, `/health` says `no_recipient` with the reason, and the log has one warning
    for the kind however many alerts were suppressed."""
    from app.main import create_app

    s = make_settings(smtp_url=f"smtp://127.0.0.1:{smtp_port}", email_from="switchyard@example.com")
    app = create_app(s, store=store, workers=10, maintenance=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            before = (await client.get("/health")).json()["email"]
            assert before["status"] == "ok" and "only" in before["recipient"]
            failed = [await jobs.queued(operation="permanent", name=f"n{i}") for i in range(3)]
            for job in failed:
                await wait_status(store, job["_id"], "failed")

            async def reported():
                body = (await client.get("/health")).json()
                return (
                    body
                    if body["email"]["status"] == "no_recipient" and body["email"]["suppressed"].get("job.failed") == 3
                    else None
                )

            body = await eventually(reported, timeout=30)
    assert body["status"] == "degraded"  # SMTP works, but alerts reach no one
    assert "SWITCHYARD_ALERT_EMAIL is unset" in body["email"]["reason"]
    assert await store.mail.col.count_documents({}) == 0
    lines = [json.loads(t) for t in captured.getvalue().splitlines()]
    warned = [line for line in lines if line.get("event") == "email.no_recipient"]
    assert len(warned) == 1 and warned[0]["alert"] == "job.failed" and warned[0]["owner"] == "admin"
    assert warned[0]["level"] == "warning" and "SWITCHYARD_ALERT_EMAIL" in warned[0]["fix"]


def test_no_recipient_warnings_are_rate_limited_per_kind(captured):
    now = [1000.0]
    tracker = NoRecipient(clock=lambda: now[0])
    s = make_settings(smtp_url="smtp://mail.example.com")
    for _ in range(5):
        tracker.suppressed("job.failed", "alice", s)
    tracker.suppressed("workflow.failed", "alice", s)
    now[0] += recipients.LOG_EVERY
    tracker.suppressed("job.failed", "bob", s)
    warned = [json.loads(t) for t in captured.getvalue().splitlines()]
    assert [(w["alert"], w["suppressed"], w["suppressed_total"]) for w in warned] == [
        ("job.failed", 1, 1),
        ("workflow.failed", 1, 1),
        ("job.failed", 5, 6),
    ]  # 4 held back, then counted
    assert tracker.status(s)["suppressed"] == {"job.failed": 6, "workflow.failed": 1}
    now[0] += recipients.RECENT - recipients.LOG_EVERY
    assert tracker.status(s)["suppressed"] == {"job.failed": 6}  # workflow.failed is no longer recent
    now[0] += recipients.LOG_EVERY
    assert tracker.status(s) is None
