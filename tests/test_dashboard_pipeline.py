"""Seed 001's content pipeline (docs/pipelines.md, tests/test_pipeline.py) seen by its editor
in a real Chromium against the whole app (relay, notifier, hub, maintenance, in-process
workers) on a real port, with the CMS and the tenant's webhook endpoint as real HTTP
receivers on 127.0.0.1.

The tenant's writer submits the pipeline while the tenant's work on the `content` engine is
paused, so the editor's workflow page first shows the DAG without the map's children. On
resume the outline completes and the DAG grows, without a reload, by one node per section;
the editor, in a second tab, approves the draft from "Needs action" (its preview shows the
assembled article), and the first tab shows the rest complete live: the approval, the short
sleep, the publish. The CMS gets the article once and the webhook hears of it, signed.
Like every dashboard test it fails on an uncaught page error or a CSP violation (in both tabs).
"""

from __future__ import annotations

import json
import re

import pytest
from playwright.async_api import Page, expect

from tests.helpers import eventually
from tests.test_dashboard import api, base, browser, page, sign_in  # noqa: F401 (fixtures)
from tests.test_pipeline import pipeline
from tests.test_webhooks import SECRET, Receiver, allow_loopback, documented_verify  # noqa: F401 (fixture)

SECTIONS = [f"sections[{i}]" for i in range(3)]  # SOURCE has three `##` sections
BEFORE_THE_MAP = ["outline", "sections", "draft", "review", "publish_time", "publish"]


async def key(api, tenant: str, user: str, role: str) -> str:  # noqa: F811
    r = await api.post("/api/v1/auth/keys", json={"name": user, "tenant": tenant, "user": user, "role": role})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def as_user(token: str) -> dict:
    """Request arguments for one user (the `api` client's own header is the admin's)."""
    return {"headers": {"Authorization": f"Bearer {token}"}}


async def editor_signs_in(page: Page, base: str, token: str) -> None:  # noqa: F811
    await sign_in(page, base, token=token)
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    await expect(page.locator("#who")).to_have_text("editor · member")
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")


def watch_for_problems(pg: Page) -> list[str]:
    """What the `page` fixture watches for, on another tab."""
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    pg.on(
        "console",
        lambda m: (
            problems.append(f"console: {m.text}") if m.type == "error" and "Content Security Policy" in m.text else None
        ),
    )
    return problems


@pytest.mark.usefixtures("allow_loopback")
async def test_the_editor_watches_the_map_expand_and_approves_from_the_inbox(page, base, api):  # noqa: F811
    cms, hooks = Receiver(), Receiver()
    try:
        writer = as_user(await key(api, "acme", "writer", "operator"))
        editor_token = await key(api, "acme", "editor", "member")
        r = await api.post(
            "/api/v1/webhooks",
            json={"url": hooks.url(), "events": ["job.completed", "workflow.completed"], "secret": SECRET},
            **writer,
        )
        assert r.status_code == 201, r.text
        # The writer holds the tenant's work on `content`: the outline cannot run yet.
        r = await api.post("/api/v1/jobs/queue/content/pause", **writer)
        assert r.status_code == 200 and r.json()["tenant_paused"] is True, r.text
        r = await api.post("/api/v1/jobs/workflows", json=pipeline(cms.url("/articles")), **writer)
        assert r.status_code == 201, r.text
        wf_id, steps = r.json()["id"], r.json()["jobs"]

        # The editor opens the workflow: the DAG as submitted, the map not expanded yet.
        await editor_signs_in(page, base, editor_token)
        await page.goto(f"{base}/#/workflows/{wf_id}")
        await expect(page.get_by_role("heading", name="article: tea in the city", level=1)).to_be_visible()
        nodes = page.locator("svg.dag a.node")
        await expect(nodes).to_have_count(len(BEFORE_THE_MAP))
        for k in BEFORE_THE_MAP:
            await expect(page.locator(f"a.node[data-key='{k}']")).to_be_visible()
        outline = page.locator("a.node[data-key='outline']")
        await expect(outline).to_have_attribute("data-status", "queued")
        await expect(outline.locator(".n-status")).to_contain_text("engine paused")
        await expect(page.locator("a.node[data-key='sections'] .n-status")).to_contain_text("waits for outline")
        assert await page.locator("a.node[data-key^='sections[']").count() == 0

        # From here on the tab is never reloaded (the marker stays), and it records the node
        # counts it draws and the order in which nodes turn completed.
        await page.evaluate("""() => {
            window.__marker = 'same page';
            window.__counts = [document.querySelectorAll('svg.dag a.node').length];
            window.__completed = [];
            const seen = new Set();
            new MutationObserver(() => {
                const n = document.querySelectorAll('svg.dag a.node').length;
                if (n && n !== window.__counts[window.__counts.length - 1]) window.__counts.push(n);
                for (const a of document.querySelectorAll('svg.dag a.node[data-status="completed"]')) {
                    if (!seen.has(a.dataset.key)) { seen.add(a.dataset.key); window.__completed.push(a.dataset.key); }
                }
            }).observe(document.querySelector('.dag-wrap'),
                       {subtree: true, childList: true, attributes: true, attributeFilter: ['data-status']});
        }""")
        r = await api.post("/api/v1/jobs/queue/content/resume", **writer)
        assert r.status_code == 200 and r.json()["tenant_paused"] is False, r.text

        # The outline completes and the map adds one node per section, with edges into the map step.
        await expect(nodes).to_have_count(len(BEFORE_THE_MAP) + len(SECTIONS))
        for child in SECTIONS:
            node = page.locator(f"a.node[data-key='{child}']")
            await expect(node).to_be_visible()
            summarize = re.escape(f"Step {child} (text_intelligence.summarize): ")
            await expect(node).to_have_attribute("aria-label", re.compile(f"^{summarize}"))
            edge = page.locator(f"svg.dag path.edge[data-from='{child}'][data-to='sections']")
            await expect(edge).to_have_count(1)
        review = page.locator("a.node[data-key='review']")
        await expect(review).to_have_attribute("data-status", "awaiting", timeout=60_000)
        await expect(review.locator(".n-status")).to_contain_text("awaiting approval")
        counts = await page.evaluate("window.__counts")
        assert counts[0] == len(BEFORE_THE_MAP) and counts[-1] == len(BEFORE_THE_MAP) + len(SECTIONS), counts
        assert counts == sorted(counts), counts  # it only grew

        # In a second tab the editor opens "Needs action": the review, with the draft to read.
        inbox = await page.context.new_page()
        inbox_problems = watch_for_problems(inbox)
        await editor_signs_in(inbox, base, editor_token)
        await inbox.get_by_role("link", name="Needs action").click()
        await expect(inbox.get_by_role("heading", name="Needs action", level=1)).to_be_visible()
        card = inbox.locator(f"li.approval[data-workflow='{wf_id}'][data-step='review']")
        await expect(card.get_by_role("heading", level=2)).to_have_text("review of article: tea in the city")
        await expect(card).to_contain_text("approvers: acme/editor")
        about = card.get_by_role("region", name="What review is about")
        await expect(about.get_by_role("heading", level=3)).to_have_text("draft")
        preview = about.locator("pre")
        await expect(preview).to_be_visible()
        await expect(preview).to_contain_text('"text": "# Tea in the city\\n\\n## Markets')  # the article's heading
        for heading in ("## Weather", "## People"):
            await expect(preview).to_contain_text(heading)
        await expect(preview).to_contain_text('"title": "Tea in the city"')

        await card.get_by_label("Comment (optional)").fill("Ship it")
        await card.get_by_role("button", name="Approve").click()
        status = inbox.get_by_role("status").filter(has_text="Approved review of article: tea in the city.")
        await expect(status).to_be_visible()
        await expect(inbox.get_by_text("Nothing needs your action.")).to_be_visible()

        # The first tab, untouched since: the approval, the sleep and the publish complete live.
        everything = len(BEFORE_THE_MAP) + len(SECTIONS)
        await expect(page.locator("svg.dag a.node[data-status='completed']")).to_have_count(everything)
        await expect(page.locator(".page-head .badge")).to_have_text("completed")
        assert await page.evaluate("window.__marker") == "same page"
        completed = await page.evaluate("window.__completed")
        assert completed[0] == "outline" and completed[-3:] == ["review", "publish_time", "publish"], completed
        assert sorted(completed) == sorted(BEFORE_THE_MAP + SECTIONS), completed

        # What the API says about it: the editor's decision, the sleep, the article at the CMS.
        decision = (await api.get(f"/api/v1/jobs/{steps['review']}/status", **writer)).json()["result"]
        assert decision["decision"] == "approved" and decision["by"] == "acme/editor", decision
        assert decision["comment"] == "Ship it", decision
        slept = (await api.get(f"/api/v1/jobs/{steps['publish_time']}/status", **writer)).json()["result"]
        assert "slept_until" in slept, slept
        draft = (await api.get(f"/api/v1/jobs/{steps['draft']}/status", **writer)).json()["result"]["text"]
        assert draft.startswith("# Tea in the city\n\n## Markets\n"), draft
        [post] = [h for h in cms.hits if h.path == "/articles"]
        assert post.body.decode() == draft

        verify = documented_verify()

        async def heard():
            kinds = {(json.loads(h.body).get("type"), json.loads(h.body).get("step_key")) for h in hooks.ok()}
            return kinds if {("job.completed", "publish"), ("workflow.completed", None)} <= kinds else None

        await eventually(heard, timeout=30)
        for h in hooks.ok():
            assert verify(SECRET, h.headers, h.body), h.headers
        assert not inbox_problems, inbox_problems
    finally:
        cms.close()
        hooks.close()
