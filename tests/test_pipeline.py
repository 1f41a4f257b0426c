"""Seed 001's content pipeline end to end (docs/pipelines.md), with built-in handlers only,
against the real app: the relay, the notifier, the webhook sender, a worker and maintenance
on the test's database, and two real HTTP receivers on 127.0.0.1 (a "CMS" that the publish
step posts the article to, and the tenant's webhook endpoint).

1. `content.outline` splits the source document into sections;
2. `text_intelligence.summarize` maps over them, one child per section;
3. `content.assemble` puts the draft together, in section order;
4. an editor of the tenant approves the draft (anyone else gets a 404);
5. a durable sleep holds it until the publish time;
6. `general.http_request` posts the article to the CMS, and the tenant's webhook hears of it,
   signed.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import TOKEN
from tests.helpers import eventually
from tests.test_webhooks import SECRET, Receiver, allow_loopback, client, documented_verify  # noqa: F401

SOURCE = """# Tea in the city

## Markets
Tea sales rose in March. The new store opened downtown. Sales of green tea rose most.

## Weather
Rain closed the market twice. Tea sales rose again in April, despite the rain.

## People
Shoppers asked for more oolong. Two tea rooms opened near the station. Their owners met at the market.
"""


def pipeline(cms_url: str, sleep_seconds: float = 1.0) -> dict:
    """The workflow of docs/pipelines.md, with the test's CMS and a short sleep."""
    return {
        "name": "article: tea in the city",
        "jobs": [
            {"key": "outline", "engine": "content", "operation": "outline", "parameters": {"text": SOURCE}},
            {
                "key": "sections",
                "engine": "text_intelligence",
                "operation": "summarize",
                "depends_on": ["outline"],
                "map_over": "outline.sections",
                "parameters": {"sentences": 1},
            },
            {
                "key": "draft",
                "engine": "content",
                "operation": "assemble",
                "depends_on": ["sections"],
                "parameters": {"title": "Tea in the city"},
            },
            {
                "key": "review",
                "type": "approval",
                "depends_on": ["draft"],
                "approvers": ["acme/editor"],
                "timeout_seconds": 86400,
                "on_timeout": "reject",
            },
            {"key": "publish_time", "type": "sleep", "depends_on": ["review"], "seconds": sleep_seconds},
            {
                "key": "publish",
                "engine": "general",
                "operation": "http_request",
                "depends_on": ["draft", "publish_time"],
                "parameters": {"url": cms_url, "method": "POST", "input_from": "draft"},
            },
        ],
    }


@pytest.fixture
async def app(store, settings):
    from app.main import create_app

    app = create_app(settings, store=store, workers=8, maintenance=True, live=True)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def keys(app) -> dict[str, str]:
    out = {}
    async with client(app, TOKEN) as c:
        for user, role, tenant in (
            ("writer", "operator", "acme"),
            ("editor", "member", "acme"),
            ("eve", "admin", "globex"),
        ):
            r = await c.post("/api/v1/auth/keys", json={"name": user, "tenant": tenant, "user": user, "role": role})
            assert r.status_code == 201, r.text
            out[user] = r.json()["token"]
    return out


@pytest.mark.usefixtures("allow_loopback")
async def test_the_content_pipeline_runs_end_to_end(app, keys, store):
    cms, hooks = Receiver(), Receiver()
    try:
        async with client(app, keys["writer"]) as writer, client(app, keys["editor"]) as editor:
            r = await writer.post(
                "/api/v1/webhooks",
                json={"url": hooks.url(), "events": ["job.completed", "workflow.completed"], "secret": SECRET},
            )
            assert r.status_code == 201, r.text
            r = await writer.post("/api/v1/jobs/workflows", json=pipeline(cms.url("/articles")))
            assert r.status_code == 201, r.text
            wf_id, steps = r.json()["id"], r.json()["jobs"]

            async def awaiting():
                job = (await writer.get(f"/api/v1/jobs/{steps['review']}/status")).json()
                return job if job["status"] == "awaiting" else None

            await eventually(awaiting, timeout=60)
            # the map grew the workflow: one child per section, and the draft in section order
            status = (await writer.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
            step_keys = [s["key"] for s in status["steps"]]
            assert sorted(k for k in step_keys if k.startswith("sections[")) == [f"sections[{i}]" for i in range(3)]
            draft = (await writer.get(f"/api/v1/jobs/{steps['draft']}/status")).json()["result"]["text"]
            assert draft.index("## Markets") < draft.index("## Weather") < draft.index("## People")
            assert draft.startswith("# Tea in the city\n")

            # only the listed approver of the same tenant decides
            async with client(app, keys["eve"]) as eve:
                r = await eve.post(f"/api/v1/jobs/workflows/{wf_id}/steps/review/approve", json={})
                assert r.status_code == 404, r.text
            r = await writer.post(f"/api/v1/jobs/workflows/{wf_id}/steps/review/approve", json={})
            assert r.status_code == 404, r.text  # the writer is not the listed approver
            r = await editor.post(f"/api/v1/jobs/workflows/{wf_id}/steps/review/approve", json={"comment": "Ship it"})
            assert r.status_code == 200, r.text

            async def finished():
                wf = (await writer.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
                return wf if wf["status"] in ("completed", "failed", "cancelled") else None

            wf = await eventually(finished, timeout=60)
            assert wf["status"] == "completed", wf
        # the CMS got the article, once
        [post] = [h for h in cms.hits if h.path == "/articles"]
        assert post.body.decode() == draft
        # and the webhook heard of the publish and of the workflow, signed
        verify = documented_verify()

        async def heard():
            kinds = {(json.loads(h.body).get("type"), json.loads(h.body).get("step_key")) for h in hooks.ok()}
            return kinds if {("job.completed", "publish"), ("workflow.completed", None)} <= kinds else None

        await eventually(heard, timeout=30)
        for h in hooks.ok():
            assert verify(SECRET, h.headers, h.body), h.headers
    finally:
        cms.close()
        hooks.close()
