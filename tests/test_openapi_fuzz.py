"""Schemathesis over `/openapi.json` as a *member* of a fresh tenant (tests/test_openapi.py
runs as the bootstrap admin): every operation, generated requests, no server error and no
status the document does not list. A member meets the answers an admin never sees (403 on
operator and admin routes, 404 for other tenants' resources, 429 from the tenant's limits),
so each of them must be documented as well."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TOKEN
from tests.test_openapi import base_url  # noqa: F401  (the fixture: the app on uvicorn in a thread)

EXAMPLES = 20  # per operation, each mode: well under a minute in all on two slow cores


def member_token(base_url: str) -> str:  # noqa: F811
    r = httpx.post(
        f"{base_url}/api/v1/auth/keys",
        headers={"Authorization": f"Bearer {TOKEN}"},
        json={"name": "fuzz", "tenant": "fuzzers", "user": "member", "role": "member"},
    )
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_a_member_gets_no_5xx_and_only_documented_statuses(base_url):  # noqa: F811
    headers = {"Authorization": f"Bearer {member_token(base_url)}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance]
    failures: list[str] = []
    tried = 0
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path.endswith("/events"):
            continue  # streams: covered by tests/test_live.py
        # Valid requests, and requests that break the schema on purpose (wrong types, out of
        # range, missing fields): both must get a documented answer.
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @hsettings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case):
                case.call_and_validate(base_url=base_url, headers=headers, checks=checks)

            try:
                run()
            except Unsatisfiable:
                assert mode == GenerationMode.NEGATIVE  # no parameter, no body: nothing to break
            except (Exception, BaseExceptionGroup) as exc:  # report every operation's failure, not just the first
                failures.append(f"{mode.value} {op.method.upper()} {op.path}: {type(exc).__name__}: {str(exc)[:1500]}")
        tried += 1
    assert not failures, "\n\n".join(failures)
    assert tried >= 30  # every operation was exercised
