"""Issue 18, REST: hostile input gets a 4xx naming the field and the rule, never a 500, never
an echo of the value, and a refused request changes nothing."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from pydantic import ValidationError

from app.domain.models import JobSpec
from app.domain.userjson import BadUserJSON, check_json
from app.domain.workflow import WorkflowSpec
from tests.conftest import make_settings

JOB = {"engine": "testing", "operation": "ok"}
SUBMIT, WORKFLOWS, SCHEDULES = "/api/v1/jobs/submit", "/api/v1/jobs/workflows", "/api/v1/jobs/schedules"
HUGE = (2**63, -(2**63) - 1, 2**64)


@pytest.fixture
def settings():
    """A bucket that barely refills, so a token taken by a refused request would show."""
    return make_settings(rate_limit_per_second=0.01)


def raw(body) -> dict:
    """Request kwargs for a JSON body as a client may write it: `"\\udfff"` escapes and all."""
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


@pytest.fixture
async def member(api):
    """A client on the same app with a member key of a fresh tenant."""
    tenant = f"t{uuid.uuid4().hex[:10]}"
    r = await api.post("/api/v1/auth/keys", json={"name": "hostile", "tenant": tenant, "user": "m", "role": "member"})
    assert r.status_code == 201, r.text
    async with httpx.AsyncClient(
        transport=api._transport, base_url="http://test", headers={"Authorization": f"Bearer {r.json()['token']}"}
    ) as c:
        c.tenant = tenant
        yield c


async def counts(store, tenant: str) -> dict:
    db = store.db
    bucket = await db["rate_limits"].find_one({"_id": f"jobs:{tenant}"}, {"tokens": 1})
    return {
        **{c: await db[c].count_documents({}) for c in ("jobs", "workflows", "schedules", "api_keys")},
        "tokens": round(bucket["tokens"], 3) if bucket else None,
    }


def refused(r, field: str, *, hidden: str | None = None) -> dict:
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field, err
    assert len(err["message"]) > 10  # the rule, in words
    if hidden is not None:
        assert hidden not in r.text
    return err


# --- 1. integers outside int64, at any depth, everywhere user JSON is stored ----------------
@pytest.mark.parametrize("n", HUGE)
async def test_integers_outside_int64_are_refused_at_any_depth(member, store, n):
    before = await counts(store, member.tenant)
    cases = [
        (SUBMIT, {**JOB, "parameters": {"n": n}}, "parameters", "parameters.n"),
        (SUBMIT, {**JOB, "parameters": {"a": {"b": [1, {"c": n}]}}}, "parameters", "parameters.a.b.1.c"),
        (WORKFLOWS, {"name": "w", "jobs": [{"key": "a", **JOB}], "metadata": {"m": [n]}}, "metadata", "metadata.m.0"),
        (
            WORKFLOWS,
            {"name": "w", "jobs": [{"key": "a", **JOB, "parameters": {"x": n}}]},
            "jobs.0.parameters",
            "jobs.0.parameters.x",
        ),
        (
            SCHEDULES,
            {"name": "s", "cron": "0 0 1 1 *", "job": {**JOB, "parameters": {"x": {"y": n}}}},
            "job.parameters",
            "job.parameters.x.y",
        ),
        (
            SCHEDULES,
            {
                "name": "s",
                "cron": "0 0 1 1 *",
                "workflow": {"name": "w", "jobs": [{"key": "a", **JOB}], "metadata": {"k": n}},
            },
            "workflow.metadata",
            "workflow.metadata.k",
        ),
    ]
    for url, body, field, path in cases:
        err = refused(await member.post(url, json=body), field, hidden=str(n))
        assert err["errors"][0]["path"] == path and "64-bit" in err["message"]
    assert await counts(store, member.tenant) == before
    # the bounds themselves store and read back
    r = await member.post(SUBMIT, json={**JOB, "parameters": {"max": 2**63 - 1, "min": -(2**63)}})
    assert r.status_code == 201, r.text
    assert r.json()["parameters"] == {"max": 2**63 - 1, "min": -(2**63)}


def test_the_domain_models_share_one_validator():
    for bad in ({"n": 2**63}, {"$where": 1}, {"a.b": 1}, {"s": "\udfff"}, {"\udfff": 1}, {"f": float("nan")}):
        with pytest.raises(ValidationError):
            JobSpec(**JOB, parameters=bad)
        with pytest.raises(ValidationError):
            WorkflowSpec(name="w", jobs=[{"key": "a", **JOB}], metadata=bad)
    deep: dict = {}
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(BadUserJSON, match="nested deeper"):
        check_json(deep)
    check_json({"ok": [1, 2.5, "é", None, True, {"k": -(2**63)}]})


# --- 2. lone surrogates, in values and keys, anywhere in a body -------------------------------
@pytest.mark.parametrize(
    "url,body,field",
    [
        (SUBMIT, {**JOB, "parameters": {"s": "\udfff"}}, "parameters.s"),
        (SUBMIT, {**JOB, "parameters": {"\ud800": 1}}, "parameters.\\ud800"),
        (SUBMIT, {**JOB, "name": "a\udfffb"}, "name"),
        (WORKFLOWS, {"name": "w", "jobs": [{"key": "a", **JOB}], "metadata": {"l": ["x", "\udc00"]}}, "metadata.l.1"),
        (SCHEDULES, {"name": "\udfff", "cron": "0 0 1 1 *", "job": JOB}, "name"),
        ("/api/v1/auth/keys", {"name": "\udfff", "user": "u"}, "name"),
    ],
)
async def test_lone_surrogates_are_refused(api, member, store, url, body, field):
    before = await counts(store, member.tenant)
    client = api if url.startswith("/api/v1/auth") else member
    err = refused(await client.post(url, **raw(body)), field)
    assert "surrogate" in err["message"]
    assert await counts(store, member.tenant) == before


async def test_preferences_with_a_surrogate_change_nothing(member):
    for body, field in (
        ({"email": "a\udfff@example.com"}, "email"),
        ({"channels": {"\udfff": ["db"]}}, "channels.\\udfff"),
    ):
        refused(await member.put("/api/v1/jobs/notifications/preferences", **raw(body)), field)
    assert (await member.get("/api/v1/jobs/notifications/preferences")).json() == {"email": None, "channels": {}}


async def test_a_body_that_is_not_utf8_is_refused(member):
    r = await member.post(
        SUBMIT,
        content=b'{"engine": "testing", "operation": "ok", "name": "\xed\xbf\xbf"}',
        headers={"content-type": "application/json"},
    )
    refused(r, "body")
    # an escaped surrogate *pair* is one ordinary character
    r = await member.post(SUBMIT, **raw({**JOB, "parameters": {"emoji": "\U0001f600"}}))
    assert r.status_code == 201 and r.json()["parameters"] == {"emoji": "\U0001f600"}


# --- 3. the notifications cursor --------------------------------------------------------------
async def test_a_cursor_past_int64_is_refused(member):
    r = await member.get("/api/v1/jobs/notifications", params={"cursor": "9223372036854775808"})
    refused(r, "query.cursor", hidden="9223372036854775808")
    assert (await member.get("/api/v1/jobs/notifications", params={"cursor": str(2**63 - 1)})).status_code == 200


# --- 4. a chunked body over the cap ----------------------------------------------------------
async def test_a_chunked_body_over_the_cap_is_413(member, store, settings):
    before = await counts(store, member.tenant)

    async def chunks():
        yield b'{"engine": "testing", "operation": "ok", "parameters": {"blob": "'
        for _ in range(settings.max_body_bytes // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    r = await member.post(SUBMIT, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"] == {
        "code": "payload_too_large",
        "field": "body",
        "message": f"request body is over {settings.max_body_bytes} bytes",
    }
    assert await counts(store, member.tenant) == before

    async def small():
        yield b'{"engine": "testing", '
        yield b'"operation": "ok", "parameters": {"k": "v"}}'

    r = await member.post(SUBMIT, content=small(), headers={"content-type": "application/json"})
    assert r.status_code == 201 and r.json()["parameters"] == {"k": "v"}


# --- 5. unknown query parameters -----------------------------------------------------------
async def test_unknown_query_parameters_are_refused_on_status_and_writes(member):
    job = (await member.post(SUBMIT, json=JOB)).json()
    refused(await member.get(f"/api/v1/jobs/{job['id']}/status", params={"verbose": "1"}), "verbose")
    refused(await member.get(f"/api/v1/jobs/{job['id']}/status", params={"status[$ne]": "x"}), "status[$ne]")
    refused(await member.post(SUBMIT, json=JOB, params={"dry": "1"}), "dry")
    assert (await member.get(f"/api/v1/jobs/{job['id']}/status")).status_code == 200


# --- 6. workflow metadata keys ---------------------------------------------------------------
@pytest.mark.parametrize(
    "meta,path",
    [({"$where": "1"}, "metadata.$where"), ({"a.b": 1}, "metadata.a.b"), ({"ok": {"$gt": ""}}, "metadata.ok.$gt")],
)
async def test_workflow_metadata_refuses_operator_and_dotted_keys(member, store, meta, path):
    before = await counts(store, member.tenant)
    err = refused(
        await member.post(WORKFLOWS, json={"name": "w", "jobs": [{"key": "a", **JOB}], "metadata": meta}), "metadata"
    )
    assert err["errors"][0]["path"] == path
    assert await counts(store, member.tenant) == before


# --- 7. no echo of the submitted value -------------------------------------------------------
@pytest.mark.parametrize(
    "body,field,secret",
    [
        ({"cron": "61 * * * * SeCrEt"}, "cron", "SeCrEt"),
        ({"cron": "99 99 * * *"}, "cron", "99 99"),
        ({"cron": "0 0 30 2 *"}, "cron", "30 2"),
        ({"timezone": "Mars/SeCrEt_Base"}, "timezone", "SeCrEt"),
        ({"timezone": "../../etc/SeCrEt"}, "timezone", "SeCrEt"),
    ],
)
async def test_schedule_errors_do_not_echo_the_value(member, body, field, secret):
    r = await member.post(SCHEDULES, json={"name": "s", "cron": "0 0 1 1 *", "job": JOB, **body})
    refused(r, field, hidden=secret)


async def test_preference_errors_do_not_echo_the_value(member):
    r = await member.put("/api/v1/jobs/notifications/preferences", json={"channels": {"job.SeCrEt": ["db"]}})
    refused(r, "channels", hidden="SeCrEt")
    r = await member.put("/api/v1/jobs/notifications/preferences", json={"channels": {"job.failed": ["SeCrEt"]}})
    refused(r, "channels", hidden="SeCrEt")


async def test_a_huge_key_is_cut_short_in_the_field_path(member):
    key = "$" + "k" * 5000
    err = refused(await member.post(SUBMIT, json={**JOB, "parameters": {key: 1}}), "parameters")
    assert len(r_path := err["errors"][0]["path"]) < 100 and r_path.startswith("parameters.$kkk")


async def test_a_refused_workflow_costs_no_rate_limit_token(member, store):
    cycle = [{"key": "a", **JOB, "depends_on": ["b"]}, {"key": "b", **JOB, "depends_on": ["a"]}]
    before = await counts(store, member.tenant)
    refused(await member.post(WORKFLOWS, json={"name": "w", "jobs": cycle}), "jobs")
    assert await counts(store, member.tenant) == before  # not even a bucket
    wf = (await member.post(WORKFLOWS, json={"name": "w", "jobs": [{"key": "z", **JOB}]})).json()
    before = await counts(store, member.tenant)
    refused(await member.post(f"{WORKFLOWS}/{wf['id']}/jobs", json={"jobs": cycle}), "jobs")
    after = await counts(store, member.tenant)
    assert after.pop("tokens") >= before.pop("tokens") and after == before  # refills only (0.01/s here)
