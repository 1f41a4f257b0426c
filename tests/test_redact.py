"""The redaction rule (app/domain/redact.py), form by form, and the log processor that uses it."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest

from app import JobContext, PermanentError, handler
from app.domain import redact as r
from app.domain.redact import MASK, redact
from app.logs import configure, get_logger
from app.settings import Settings
from tests.conftest import TOKEN, make_settings
from tests.helpers import eventually, wait_status

SECRET = "hunter2-SECRET"


@pytest.fixture(autouse=True)
def defaults():
    s = Settings()
    r.configure(s.secret_param_names, s.secret_allow_names)
    yield
    r.configure(s.secret_param_names, s.secret_allow_names)


@pytest.mark.parametrize(
    "name",
    [
        "db_password",
        "passphrase",
        "private-key",
        "private_key",
        "x-api-key",
        "X-Api-Key",
        "apiKey",
        "APIKey",
        "apikey",
        "aws_secret_access_key",
        "client_secret",
        "authToken",
        "refresh_token",
        "Authorization",
        "Proxy-Authorization",
        "basic_auth",
        "credentials",
        "db_creds",
        "Cookie",
        "Set-Cookie",
        "secret_string",
        "SecretString",
        "password_hash",
        "auth_header",
        "smtp_pass",
        "secrets",
        "ssh_key",
    ],
)
def test_secret_looking_names_are_masked_at_any_depth(name):
    doc = {"top": {name: SECRET}, "list": [{"deeper": {name: {"nested": SECRET}}}], "plain": "visible"}
    out = redact(doc)
    assert out["top"][name] == MASK and out["list"][0]["deeper"][name] == MASK
    assert out["plain"] == "visible" and SECRET not in json.dumps(out)
    assert doc["top"][name] == SECRET  # a copy: the stored job keeps the real value


@pytest.mark.parametrize(
    "name",
    [
        "keyword",
        "monkey",
        "key_frame",
        "keyframes",
        "token_count",
        "max_tokens",
        "password_file",
        "author",
        "bypass",
        "hotkey",
        "session_id",
        "secret_name",
        "text",
        "dedupe_key",
        "sort_key",
        "Idempotency-Key",
    ],
)
def test_names_that_only_contain_a_secret_word_are_kept(name):
    assert redact({name: "visible"}) == {name: "visible"}


def test_headers_given_as_pairs_are_masked_by_name():
    out = redact({"headers": [["Authorization", "Bearer " + SECRET], ("X-Api-Key", SECRET), ["Accept", "text/plain"]]})
    assert out["headers"] == [["Authorization", MASK], ("X-Api-Key", MASK), ["Accept", "text/plain"]]


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://user:pass@host/x", "http://***@host/x"),
        ("fetch postgres://admin:p@ss@db.local:5432/app failed", "fetch postgres://***@db.local:5432/app failed"),
        ("https://ghp_TOKEN@github.com/o/r.git", "https://***@github.com/o/r.git"),
        ("redis://:pw@cache:6379/0", "redis://***@cache:6379/0"),
        ("two: amqp://a:b@q1 and smtp://c:d@mail", "two: amqp://***@q1 and smtp://***@mail"),
    ],
)
def test_user_info_in_urls_is_masked_in_any_string(text, shown):
    assert redact({"url": text, "nested": [text]}) == {"url": shown, "nested": [shown]}
    assert r.redact_text(text) == shown


@pytest.mark.parametrize("text", ["mail a@b.com", "http://host/p?email=a@b.com", "https://host/#a@b", "no url here"])
def test_strings_without_user_info_are_kept(text):
    assert redact(text) == text


def test_the_allow_list_wins_and_exact_names_still_count():
    r.configure("license_no", "api_key, DB_PASSWORD")
    out = redact({"api_key": "k", "db_password": "p", "license_no": "L", "token": "t"})
    assert out == {"api_key": "k", "db_password": "p", "license_no": MASK, "token": MASK}


def test_log_lines_are_redacted_messages_fields_and_tracebacks():
    stream = io.StringIO()
    configure("INFO", stream=stream)
    try:
        log = get_logger("test")
        log.warning(
            "calling http://bob:" + SECRET + "@api.local/v1",
            db_password=SECRET,
            headers={"X-Api-Key": SECRET, "Accept": "json"},
            keyword="visible",
        )
        try:
            raise RuntimeError(f"cannot reach postgres://bob:{SECRET}@db/x")
        except RuntimeError:
            log.exception("failed")
            logging.getLogger("stdlib").exception("std: %s", f"ftp://bob:{SECRET}@files")
        text = stream.getvalue()
    finally:
        configure("WARNING")
    assert SECRET not in text, [line for line in text.splitlines() if SECRET in line]
    first = json.loads(text.splitlines()[0])
    assert first["event"] == "calling http://***@api.local/v1" and first["db_password"] == MASK
    assert first["headers"] == {"X-Api-Key": MASK, "Accept": "json"} and first["keyword"] == "visible"
    assert "postgres://***@db/x" in text and "ftp://***@files" in text


# --- end to end: a job with secrets, through the API, the dead letter, events, email and logs

SEEN: dict[str, dict] = {}


@handler(engine="testing", operation="leaks_secrets")
async def leaks_secrets(ctx: JobContext) -> dict:
    """Keeps what it was given (the real values), logs it, and fails naming its URL if asked."""
    SEEN[ctx.job_id] = dict(ctx.params)
    get_logger("testing.leaks").warning("calling " + ctx.params["url"], params=ctx.params)
    if ctx.params.get("fail"):
        raise PermanentError("unreachable", f"cannot reach {ctx.params['url']}")
    return {"seen": ctx.params}


@pytest.fixture
def settings():
    # a mail server that is not there: alert emails wait in the outbox, where their text can be read
    return make_settings(smtp_url="smtp://127.0.0.1:9", alert_email="oncall@example.com", mail_retry_base_seconds=30)


async def test_secret_parameters_show_masked_everywhere_but_the_handler(server, store):
    params = {
        "db_password": SECRET,
        "passphrase": SECRET,
        "private-key": SECRET,
        "url": f"http://bob:{SECRET}@api.example/v1",
        "headers": {"X-Api-Key": SECRET, "Accept": "application/json"},
        "keyword": "visible",
    }
    stream = io.StringIO()
    configure("INFO", stream=stream)
    try:
        async with httpx.AsyncClient(
            base_url=f"http://{server}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as c:
            ok = (
                await c.post(
                    "/api/v1/jobs/submit",
                    json={"engine": "testing", "operation": "leaks_secrets", "parameters": params},
                )
            ).json()
            bad = (
                await c.post(
                    "/api/v1/jobs/submit",
                    json={"engine": "testing", "operation": "leaks_secrets", "parameters": {**params, "fail": True}},
                )
            ).json()
            await wait_status(store, ok["id"], ["completed"])
            await wait_status(store, bad["id"], ["failed"])
            status = (await c.get(f"/api/v1/jobs/{ok['id']}/status")).json()
            failed = (await c.get(f"/api/v1/jobs/{bad['id']}/status")).json()
            dead = (await c.get("/api/v1/jobs/dead-letter")).json()["jobs"]
        events = await eventually(lambda: _failed_events(store, bad["id"]), timeout=30)
        mail = await eventually(lambda: store.mail.col.find_one({}), timeout=30)
    finally:
        configure("WARNING")

    # the handler got the real values (and so did its result, as stored)
    assert SEEN[ok["id"]] == params and SEEN[bad["id"]] == {**params, "fail": True}
    assert (await store.jobs.get(ok["id"]))["result"]["seen"] == params
    shown_url = "http://***@api.example/v1"
    for shown in (status["parameters"], status["result"]["seen"], failed["parameters"]):
        assert shown["db_password"] == shown["passphrase"] == shown["private-key"] == MASK
        assert shown["headers"] == {"X-Api-Key": MASK, "Accept": "application/json"}
        assert shown["url"] == shown_url and shown["keyword"] == "visible"
    assert failed["last_error"]["message"] == f"cannot reach {shown_url}"
    assert [j for j in dead if j["id"] == bad["id"]] == [failed | {"why": None}]
    assert events[0]["error"]["message"] == f"cannot reach {shown_url}"
    assert shown_url in mail["body"]
    for where, text in (
        ("status", json.dumps([status, failed])),
        ("dead letter", json.dumps(dead)),
        ("events", json.dumps(events, default=str)),
        ("email", mail["body"] + mail["subject"]),
        ("logs", stream.getvalue()),
    ):
        assert SECRET not in text, where
    logged = [json.loads(line) for line in stream.getvalue().splitlines() if "calling" in line]
    assert logged and all(
        line["event"] == f"calling {shown_url}" and line["params"]["db_password"] == MASK for line in logged
    )


async def _failed_events(store, job_id):
    return [e for e in await store.events.since(0, job_id=job_id) if e["type"] == "job.failed"] or None
