"""Issue 18, property-based: generated hostile JSON (integers past 64 bits, NaN and
Infinity, lone surrogates, deep nesting, `$` and dotted keys, wrong types, unknown fields
and query parameters, odd path ids) sent to every REST write endpoint. Properties: never a
5xx; and a refused (4xx) request changes nothing: no job, workflow, schedule, key or audit
entry, no preference or queue setting, no rate-limit token.

Synchronous (hypothesis drives it): the app runs on uvicorn in a thread of its own, and
the database is read with a synchronous client.
"""

from __future__ import annotations

import copy
import json
import uuid
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pymongo import MongoClient

from tests.conftest import TOKEN
from tests.test_openapi import threaded_app

EXAMPLES = 40  # per endpoint
JOB = {"engine": "testing", "operation": "ok"}

# --- hostile values ----------------------------------------------------------------------
SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"])
huge_ints = st.one_of(
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**40]),
    st.integers(min_value=2**63),
    st.integers(max_value=-(2**63) - 1),
)
bad_text = st.one_of(
    st.tuples(st.text(max_size=5), SURROGATES).map("".join),
    st.sampled_from(["$gt", "a.b", "", "\x00", "x" * 300, "0 0 30 2 *", "Mars/Base", "../etc"]),
)
texts = st.one_of(st.text(max_size=12), bad_text)
keys = st.one_of(
    st.sampled_from(["$gt", "$where", "a.b", ".", "$", "k\x00", "ok", "engine"]),
    st.text(max_size=8),
    st.tuples(st.text(max_size=3), SURROGATES).map("".join),
)
bad_leaves = st.one_of(huge_ints, st.sampled_from([float("nan"), float("inf"), float("-inf")]), bad_text)
# Mostly hostile; ordinary values of the wrong type as well.
leaves = st.one_of(
    bad_leaves, bad_leaves, st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(), texts
)
trees = st.recursive(
    leaves, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(keys, c, max_size=4)), max_leaves=12
)


def nest(n: int) -> dict:
    v: dict = {"leaf": 1}
    for _ in range(n):
        v = {"d": v}
    return v


hostile = st.one_of(trees, trees, st.integers(30, 300).map(nest), huge_ints, bad_text)


@st.composite
def bodies(draw, base, fields):
    """`base` with one to three of `fields` (paths, `/` between parts; the first ones are
    tried most) or unknown keys set to hostile values; now and then a body that is hostile
    through and through."""
    if base is None or draw(st.integers(0, 9)) == 9:  # hypothesis starts from 0: mostly spoiled fields
        return draw(hostile)
    body = copy.deepcopy(base)
    for path in draw(st.lists(st.sampled_from([*fields, "surprise", "$where", "a.b"]), min_size=1, max_size=3)):
        *parents, last = path.split("/")
        node = body
        for p in parents:  # an earlier spoil may have replaced a parent: then there is nowhere to put this one
            node = (
                node[int(p)]
                if isinstance(node, list) and len(node) > int(p)
                else node.setdefault(p, {})
                if isinstance(node, dict)
                else None
            )
        if isinstance(node, dict):
            node[last] = draw(hostile)
        elif isinstance(node, list) and len(node) > int(last):
            node[int(last)] = draw(hostile)
    return body


# --- the endpoints -----------------------------------------------------------------------
WF = {"name": "w", "jobs": [{"key": "a", **JOB}]}
ENDPOINTS = [  # (method, path, who, base body, fields to spoil)
    (
        "POST",
        "/api/v1/jobs/submit",
        "member",
        JOB,
        [
            "parameters/x",
            "parameters/x/y",
            "name",
            "parameters",
            "engine",
            "operation",
            "priority",
            "run_at",
            "delay_seconds",
            "timeout_seconds",
            "dedupe_key",
            "retry_config",
            "retry_config/max_retries",
        ],
    ),
    (
        "POST",
        "/api/v1/jobs/workflows",
        "member",
        WF,
        [
            "metadata/m",
            "jobs/0/parameters/p",
            "name",
            "metadata/m/n",
            "jobs/0/name",
            "jobs/0/depends_on/0",
            "metadata",
            "jobs",
            "jobs/0",
            "jobs/0/parameters",
            "jobs/0/key",
            "failure_policy",
        ],
    ),
    (
        "POST",
        "/api/v1/jobs/workflows/{wf}/jobs",
        "member",
        {"jobs": [{"key": "b", **JOB, "depends_on": ["a"]}]},
        [
            "jobs/0/parameters/p",
            "jobs/0/depends_on/0",
            "jobs/0/name",
            "jobs/0/parameters/p/q",
            "jobs",
            "jobs/0",
            "jobs/0/parameters",
            "jobs/0/key",
        ],
    ),
    ("POST", "/api/v1/jobs/workflows/{wf}/cancel", "member", None, []),
    ("POST", "/api/v1/jobs/workflows/{wf}/retry", "member", None, []),
    ("POST", "/api/v1/jobs/{job}/cancel", "member", None, []),
    ("POST", "/api/v1/jobs/{job}/retry", "member", None, []),
    (
        "POST",
        "/api/v1/jobs/schedules",
        "member",
        {"name": "s", "cron": "0 0 1 1 *", "job": JOB},
        [
            "job/parameters/p",
            "name",
            "cron",
            "timezone",
            "job/name",
            "job/parameters/p/q",
            "misfire_policy",
            "job",
            "job/parameters",
            "workflow",
            "workflow/metadata",
            "workflow/jobs",
        ],
    ),
    ("POST", "/api/v1/jobs/schedules/{sched}/pause", "member", None, []),
    ("POST", "/api/v1/jobs/schedules/{sched}/resume", "member", None, []),
    ("DELETE", "/api/v1/jobs/schedules/{sched}", "member", None, []),
    (
        "PUT",
        "/api/v1/jobs/notifications/preferences",
        "member",
        {"email": "a@example.com", "channels": {"job.failed": ["db"]}},
        ["channels/job.failed", "email", "channels", "channels/job.failed/0"],
    ),
    ("POST", "/api/v1/jobs/notifications/read-all", "member", None, []),
    ("POST", "/api/v1/jobs/notifications/{note}/read", "member", None, []),
    (
        "POST",
        "/api/v1/auth/keys",
        "admin",
        {"name": "k", "user": "u", "role": "member", "tenant": "victims"},
        ["name", "user", "role", "tenant"],
    ),
    ("DELETE", "/api/v1/auth/keys/{key}", "admin", None, []),
    ("POST", "/api/v1/jobs/queue/{queue}/pause", "admin", None, []),
    ("POST", "/api/v1/jobs/queue/{queue}/resume", "admin", None, []),
    ("PUT", "/api/v1/jobs/queue/{queue}/limits", "admin", {"max_concurrent_jobs": 5}, ["max_concurrent_jobs"]),
    (
        "POST",
        "/api/v1/jobs/retry",
        "admin",
        {"engine": "testing"},
        ["engine", "operation", "error_code", "failed_after", "failed_before", "limit"],
    ),
    ("POST", "/api/v1/admin/jobs/reset-stuck", "admin", {"dry_run": True}, ["engine", "dry_run"]),
    ("POST", "/api/v1/admin/engines/reconcile", "admin", None, []),
]


@pytest.fixture(scope="module")
def world(db_url):
    """The app, a member of a fresh tenant, and one resource of each kind to aim at."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    # Refills at 0.01 token/s: a token drawn by a refused request would show.
    with (
        threaded_app(db_url, mongodb_db=name, rate_limit_per_second=0.01, rate_limit_burst=10_000) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as admin,
    ):
        tenant = f"t{uuid.uuid4().hex[:8]}"
        member_key = admin.post("/api/v1/auth/keys", json={"name": "m", "tenant": tenant, "user": "m"}).json()
        victim = admin.post("/api/v1/auth/keys", json={"name": "v", "tenant": "victims", "user": "v"}).json()
        auth = {"Authorization": f"Bearer {member_key['token']}"}
        with httpx.Client(base_url=url, headers=auth, timeout=30) as member:
            ids = {
                "job": member.post("/api/v1/jobs/submit", json=JOB).json()["id"],
                "wf": member.post("/api/v1/jobs/workflows", json=WF).json()["id"],
                "sched": member.post("/api/v1/jobs/schedules", json=ENDPOINTS[7][3]).json()["id"],
                "note": "1:none",
                "key": victim["id"],
                "queue": "testing",
            }
            with MongoClient(db_url) as mongo:
                yield {"member": member, "admin": admin, "tenant": tenant, "ids": ids, "db": mongo[name]}
                mongo.drop_database(name)


def snapshot(db, tenant: str) -> dict:
    bucket = db["rate_limits"].find_one({"_id": f"jobs:{tenant}"})
    return {
        "counts": {c: db[c].count_documents({}) for c in ("jobs", "workflows", "schedules", "api_keys", "audit")},
        "prefs": list(db["preferences"].find({}, {"updated_at": 0})),
        "queues": sorted((e["_id"], e.get("limit"), e.get("paused")) for e in db["engines"].find()),
        "schedules": sorted((s["_id"], s.get("paused")) for s in db["schedules"].find()),
        "revoked": sorted(k["_id"] for k in db["api_keys"].find({"revoked_at": {"$ne": None}})),
        "tokens": bucket["tokens"] if bucket else None,
    }


def path_ids(ids: dict):
    """The real id of each kind, or a hostile one (URL-quoted; surrogates as their bytes)."""
    odd = st.one_of(
        st.sampled_from(["0123456789abcdef01234567", "$gt", "a.b", "9223372036854775808:x", "x" * 300]),
        st.text(min_size=1, max_size=10),
        st.tuples(st.text(max_size=3), SURROGATES).map("".join),
    )
    return st.fixed_dictionaries({k: st.one_of(st.just(v), st.just(v), odd) for k, v in ids.items()})


def q(text: str) -> str:
    return quote(text, safe="", errors="surrogatepass")


queries = st.one_of(st.just({}), st.just({}), st.dictionaries(keys, texts, max_size=2))


@pytest.mark.parametrize("method,path,who,base,fields", ENDPOINTS, ids=[f"{m} {p}" for m, p, *_ in ENDPOINTS])
def test_hostile_json_never_500s_and_a_refusal_changes_nothing(world, method, path, who, base, fields):
    client = world[who]

    @given(body=bodies(base, fields), ids=path_ids(world["ids"]), query=queries)
    @hsettings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    def attempt(body, ids, query):
        url = path.format(**{k: q(v) for k, v in ids.items()})
        if query:
            url += "?" + "&".join(f"{q(k)}={q(v)}" for k, v in query.items())
        before = snapshot(world["db"], world["tenant"])
        r = client.request(method, url, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
        assert r.status_code < 500, (r.status_code, r.text[:500])
        if r.status_code >= 400:
            assert r.json()["error"]["message"], r.text
            after = snapshot(world["db"], world["tenant"])
            tokens_before, tokens_after = before.pop("tokens"), after.pop("tokens")
            assert after == before, (r.status_code, r.text[:300])
            assert tokens_after == tokens_before if tokens_before is None else tokens_after >= tokens_before, (
                "a refused request drew a rate-limit token"
            )  # the bucket only refills

    attempt()
