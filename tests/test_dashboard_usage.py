"""The dashboard's execution controls in a real Chromium (the browser, server and page set-up
of tests/test_dashboard.py): usage per day on the overview, and a workflow's usage per step.

Usage comes from a handler reporting it through `ctx.usage`, run by the app's own workers;
only the days before today are written straight into the `usage` collection, since the worker
stamps an attempt with the day it ends."""

from __future__ import annotations

from datetime import timedelta

from playwright.async_api import expect

from app import JobContext, handler
from tests.helpers import eventually
from tests.test_dashboard import TIMEOUT_MS, api, base, browser, page, signed_in  # noqa: F401 (fixtures)
from tests.test_dashboard_a11y import AXE, AXE_URL, axe, axe_report


@handler(engine="metered", operation="call")
async def call(ctx: JobContext) -> dict:
    """Reports the usage in its parameters, as a paid call would."""
    await ctx.usage(**ctx.params["usage"])
    return {}


async def accessible(pg, name: str) -> None:
    """No serious or critical axe-core violation on the page as it is, light and dark (the
    rule of tests/test_dashboard_a11y.py, for what only these tests put on screen)."""
    await pg.context.route("**" + AXE_URL, lambda route: route.fulfill(path=AXE, content_type="text/javascript"))
    for scheme in ("light", "dark"):
        await pg.emulate_media(color_scheme=scheme, reduced_motion="reduce")
        found = await axe(pg)
        assert not found, f"{name}, {scheme} scheme:\n{axe_report(found)}"
    await pg.emulate_media(color_scheme="light")


async def _submit(client, **usage) -> str:
    r = await client.post(
        "/api/v1/jobs/submit", json={"engine": "metered", "operation": "call", "parameters": {"usage": usage}}
    )
    assert r.status_code in (200, 201), r.text
    return r.json()["id"]


async def _done(client, job_id: str) -> None:
    async def check():
        return (await client.get(f"/api/v1/jobs/{job_id}/status")).json()["status"] == "completed"

    await eventually(check)


async def test_1_the_overview_charts_cost_and_tokens_per_day_and_follows_new_usage(page, base, api, store):  # noqa: F811
    today = store.clock.now().date()
    old = {"tenant": "default", "engine": "metered", "attempt": 1, "workflow_id": None, "owner": "admin"}
    await store.usage.col.insert_many(
        [
            {**old, "_id": "a:1", "job_id": "a", "day": (today - timedelta(days=3)).isoformat(), "cost": 2.5,
             "tokens_in": 4000, "tokens_out": 1000},
            {**old, "_id": "b:1", "job_id": "b", "day": (today - timedelta(days=20)).isoformat(), "cost": 100.0,
             "tokens_in": 1, "tokens_out": 1},  # outside the 14 days
        ]
    )  # fmt: skip
    await _done(api, await _submit(api, cost=0.75, tokens_in=1200, tokens_out=300))

    await signed_in(page, base)
    usage = page.locator("section[aria-labelledby='usage-h']")
    await expect(usage.get_by_role("heading", name="Usage, last 14 days")).to_be_visible()
    await expect(usage.locator(".key.cost")).to_have_text("Cost: 3.25")
    await expect(usage.locator(".key.tokens-in")).to_have_text("Tokens in: 5,200")
    await expect(usage.locator(".key.tokens-out")).to_have_text("Tokens out: 1,300")
    assert await usage.get_by_role("img").count() == 2  # the two charts, named by their titles
    cost = usage.locator("table:has(caption:text-is('Cost per day')) tbody tr")
    await expect(cost).to_have_count(14)
    await expect(cost.last).to_have_text(f"{today.isoformat()} (today, UTC)0.75")
    await expect(cost.nth(10)).to_have_text(f"{(today - timedelta(days=3)).isoformat()}2.5")
    await expect(cost.first).to_have_text(f"{(today - timedelta(days=13)).isoformat()}0")
    tokens = usage.locator("table:has(caption:text-is('Tokens per day')) tbody tr")
    await expect(tokens.last.locator("td")).to_have_text([f"{today.isoformat()} (today, UTC)", "1,200", "300"])
    await expect(usage.locator("svg rect.bar.cost")).to_have_count(14)

    # A job finishing later is charted without a reload (its job.completed event re-reads).
    await page.evaluate("window.__marker = 'same page'")
    await _done(api, await _submit(api, cost=1, tokens_in=10))
    await expect(usage.locator(".key.cost")).to_have_text("Cost: 4.25", timeout=TIMEOUT_MS)
    await expect(cost.last).to_have_text(f"{today.isoformat()} (today, UTC)1.75")
    assert await page.evaluate("window.__marker") == "same page"
    await accessible(page, "the overview with usage")


async def test_2_a_workflows_page_shows_usage_per_step_and_its_total(page, base, api):  # noqa: F811
    assert (await api.post("/api/v1/jobs/queue/metered/pause")).status_code == 200
    doc = {
        "name": "paid chain",
        "jobs": [
            {"key": "draft", "engine": "metered", "operation": "call",
             "parameters": {"usage": {"cost": 0.5, "tokens_in": 100, "tokens_out": 20}}},
            {"key": "review", "engine": "metered", "operation": "call", "depends_on": ["draft"],
             "parameters": {"usage": {"cost": 0.25, "tokens_in": 10, "tokens_out": 5, "images": 2}}},
            {"key": "notify", "engine": "testing", "operation": "ok", "depends_on": ["review"]},
        ],
    }  # fmt: skip
    r = await api.post("/api/v1/jobs/workflows", json=doc)
    assert r.status_code in (200, 201), r.text
    wf = r.json()
    elsewhere = await _submit(api, cost=9, tokens_in=9)  # not a step: not in the workflow's usage

    await signed_in(page, base)
    await page.goto(f"{base}/#/workflows/{wf['id']}")
    await expect(page.get_by_role("heading", name="paid chain", level=1)).to_be_visible()
    card = page.locator("section[aria-labelledby='usage-h']")
    await expect(card).to_be_hidden()  # nothing reported yet

    # The steps run while the page is open: the usage arrives with their events.
    await page.evaluate("window.__marker = 'same page'")
    assert (await api.post("/api/v1/jobs/queue/metered/resume")).status_code == 200
    await expect(page.locator("svg.dag a.node[data-status='completed']")).to_have_count(3)
    await expect(card).to_be_visible()
    rows = card.locator("tbody tr")
    await expect(rows).to_have_count(2)  # `notify` reported nothing
    await expect(card.locator("tr[data-key='draft'] td")).to_have_text(["1", "100", "20", "0.5", "—"])
    await expect(card.locator("tr[data-key='review'] td")).to_have_text(["1", "10", "5", "0.25", "images 2"])
    await expect(card.locator("tr[data-key='total'] td")).to_have_text(["2", "110", "25", "0.75", "images 2"])
    assert await page.evaluate("window.__marker") == "same page"
    await accessible(page, "a workflow with usage")
    await card.get_by_role("link", name="review").click()
    await page.wait_for_url(f"**/#/jobs/{wf['jobs']['review']}")
    await expect(page.locator("table.usage")).to_contain_text("images")
    await _done(api, elsewhere)
