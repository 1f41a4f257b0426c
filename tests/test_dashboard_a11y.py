"""Accessibility of every dashboard page, checked by axe-core in Debian's Chromium.

axe-core comes from npm (tests/js/package.json, pinned; `scripts/_setup test` runs `npm ci`) and is
injected into the page by Playwright. Each page is checked holding realistic data (jobs in every
state, a workflow part done and part waiting on a paused engine, a failure and its notification,
an approval awaiting the signed-in user, shown in "Needs action" and on its workflow's page),
so status badges, DAG nodes and notices are all on screen, in the light and the dark colour
scheme. The rule: no violation of impact serious or critical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.helpers import eventually
from tests.test_dashboard import TIMEOUT_MS, api, base, browser, sign_in  # noqa: F401 (fixtures)

AXE = Path(__file__).parent / "js" / "node_modules" / "axe-core" / "axe.min.js"
AXE_URL = "/static/__test__/axe.min.js"
BLOCKING = ("serious", "critical")


def axe_report(violations: list[dict]) -> str:
    lines = []
    for v in violations:
        targets = ", ".join(" ".join(t) if isinstance(t, list) else t for n in v["nodes"] for t in n["target"])
        lines.append(f"  {v['id']} ({v['impact']}, {len(v['nodes'])} nodes): {targets}")
    return "\n".join(lines)


async def axe(page: Page) -> list[dict]:
    """Serious and critical violations on the page as it is now."""
    if not await page.evaluate("typeof window.axe !== 'undefined'"):
        # From a same-origin URL the test answers itself (not inline), so the page's Content
        # Security Policy (script-src 'self') stays in force while axe runs.
        await page.add_script_tag(url=AXE_URL)
    found = await page.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                                          nodes: v.nodes.map((n) => ({target: n.target, summary: n.failureSummary}))}));
    }""")
    return [v for v in found if v["impact"] in BLOCKING]


async def own_contrast(page: Page, selector: str) -> float:
    """The contrast ratio (WCAG) of an element's text colour on its own, opaque, background."""
    return await page.locator(selector).evaluate("""(el) => {
        const rgb = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
        const lum = (c) => {
            const [r, g, b] = rgb(c).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
            return 0.2126 * r + 0.7152 * g + 0.0722 * b;
        };
        const st = getComputedStyle(el);
        const [a, b] = [lum(st.color), lum(st.backgroundColor)].sort((x, y) => y - x);
        return (a + 0.05) / (b + 0.05);
    }""")


async def status_of(api, job_id: str) -> str:  # noqa: F811
    return (await api.get(f"/api/v1/jobs/{job_id}/status")).json()["status"]


async def realistic_data(api) -> dict:  # noqa: F811
    """Jobs in every state, a failure (and so a notification), and a workflow mid-flight."""

    async def submit(**body) -> str:
        r = await api.post("/api/v1/jobs/submit", json=body)
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    r = await api.post("/api/v1/jobs/queue/ledger/pause")
    assert r.status_code == 200, r.text
    ids = {
        "completed": await submit(engine="testing", operation="ok", name="thumbnail batch"),
        "failed": await submit(engine="testing", operation="permanent", name="nightly report"),
        "running": await submit(engine="testing", operation="wait_cancel", name="long export", parameters={"max": 120}),
        "scheduled": await submit(engine="testing", operation="ok", name="tomorrow's digest", delay_seconds=3600),
        "queued": await submit(engine="ledger", operation="work", name="ledger close"),
        "cancelled": await submit(engine="testing", operation="ok", name="abandoned", delay_seconds=3600),
    }
    assert (await api.post(f"/api/v1/jobs/{ids['cancelled']}/cancel")).status_code == 200
    wf = await api.post(
        "/api/v1/jobs/workflows",
        json={
            "name": "month end",
            "jobs": [
                {"key": "extract", "engine": "testing", "operation": "ok"},
                {"key": "post_ledger", "engine": "ledger", "operation": "work", "depends_on": ["extract"]},
                {"key": "report", "engine": "testing", "operation": "ok", "depends_on": ["post_ledger"]},
            ],
        },
    )
    assert wf.status_code in (200, 201), wf.text
    wf_id = wf.json()["id"]
    # An approval waiting for the signed-in admin: the "Needs action" inbox and its DAG node.
    signoff = await api.post(
        "/api/v1/jobs/workflows",
        json={
            "name": "sign-off",
            "jobs": [
                {"key": "draft", "engine": "testing", "operation": "ok", "parameters": {"text": "Quarterly letter"}},
                {"key": "review", "type": "approval", "depends_on": ["draft"], "timeout_seconds": 3600},
            ],
        },
    )
    assert signoff.status_code == 201, signoff.text
    ids["awaiting"] = signoff.json()["jobs"]["review"]
    for state in ("completed", "failed", "running", "scheduled", "queued", "cancelled", "awaiting"):
        await eventually(lambda state=state: _is(api, ids[state], state))
    return {**ids, "workflow": wf_id, "approval": signoff.json()["id"]}


async def _is(api, job_id: str, status: str) -> bool:  # noqa: F811
    return await status_of(api, job_id) == status


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_every_page_has_no_serious_axe_violation(browser, base, api, scheme):  # noqa: F811
    assert AXE.exists(), f"{AXE} is missing: run ./scripts/_setup test (npm ci in tests/js)"
    # A webhook whose host never resolves: its deliveries fail, with their attempts on screen.
    hook = await api.post(
        "/api/v1/webhooks",
        json={"url": "https://hooks.example.invalid/switchyard", "events": ["*"], "secret": "a11y-secret-0123456789"},
    )
    assert hook.status_code == 201, hook.text
    data = await realistic_data(api)
    # Reduced motion: the CSS then drops its colour transitions, so axe reads the final colours.
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, color_scheme=scheme, reduced_motion="reduce"
    )
    context.set_default_timeout(TIMEOUT_MS)
    await context.route("**" + AXE_URL, lambda route: route.fulfill(path=AXE, content_type="text/javascript"))
    page = await context.new_page()
    errors: list[str] = []  # as in test_dashboard.py: uncaught errors and CSP violations fail too
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda m: (
            errors.append(f"console: {m.text}") if m.type == "error" and "Content Security Policy" in m.text else None
        ),
    )
    problems: dict[str, list[dict]] = {}

    async def check(name: str) -> None:
        found = await axe(page)
        if found:
            problems[name] = found

    try:
        await page.goto(base + "/")
        assert await page.evaluate("matchMedia('(prefers-color-scheme: dark)').matches") == (scheme == "dark")
        await expect(page.get_by_label("API token")).to_be_visible()
        await check("sign-in")
        await sign_in(page, base, token="not-the-token")  # the refusal notice too
        await expect(page.get_by_role("alert")).to_contain_text("401")
        await check("sign-in, token refused")

        await sign_in(page, base)
        await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
        await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
        await expect(page.locator("tr[data-engine='ledger'] .badge")).to_have_text("paused")
        await expect(page.locator(".failures")).to_contain_text("nightly report")
        await check("overview")
        # axe leaves the bell's unread count "to review" (it overlaps the button's border), so its
        # contrast is measured here: small bold text, 4.5:1.
        await expect(page.locator("#bell .count")).to_be_visible()
        count_contrast = await own_contrast(page, "#bell .count")
        assert count_contrast >= 4.5, f"{scheme}: the bell's count has contrast {count_contrast:.2f}:1"

        await page.locator("#bell").click()
        await expect(page.locator("#bell-panel li.notification")).not_to_have_count(0)
        await check("the bell's panel")
        await page.locator("#bell").click()

        pages = [
            ("jobs", "#/jobs", "Jobs", ".badge.st-cancelled"),
            ("a failed job", f"#/jobs/{data['failed']}", None, ".errors li"),
            ("a running job", f"#/jobs/{data['running']}", None, ".badge.st-running"),
            ("a queued job", f"#/jobs/{data['queued']}", None, ".why-list li"),
            ("workflows", "#/workflows", "Workflows", "text=month end"),
            ("a workflow", f"#/workflows/{data['workflow']}", "month end", "svg.dag a.node.st-completed"),
            ("submit", "#/submit", "Submit a workflow", "textarea"),
            ("queues", "#/queues", "Queues", "tr[data-engine='ledger'] .badge.st-paused"),
            ("notifications", "#/notifications", "Notifications", "li.notification"),
            ("webhooks", "#/webhooks", "Webhooks", "table.webhooks tr[data-webhook]"),
            ("a webhook's deliveries", f"#/webhooks/{hook.json()['id']}", "Webhook deliveries", ".attempts li"),
            ("needs action", "#/approvals", "Needs action", "li.approval textarea"),
            (
                "a workflow awaiting approval",
                f"#/workflows/{data['approval']}",
                "sign-off",
                "svg.dag a.node.st-awaiting",
            ),
            # The dashboard has no schedules page: its route answers "Not found" (checked too).
            ("an unknown route", "#/schedules", "Not found", "text=No page here"),
        ]
        for name, route, heading, ready in pages:
            await page.goto(f"{base}/{route}")
            if heading:
                await expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
            await expect(page.locator(ready).locator("visible=true").first).to_be_visible()
            await check(name)
        # The editor with the API's 422 marked on its line (a message on the danger colour).
        await page.goto(f"{base}/#/submit")
        await page.get_by_label("Workflow or job (JSON)").fill(
            json.dumps(
                {
                    "name": "broken",
                    "jobs": [{"key": "a", "engine": "testing", "operation": "ok", "depends_on": ["nope"]}],
                }
            )
        )
        await page.get_by_role("button", name="Submit", exact=True).click()
        await expect(page.locator(".marks .mark-msg")).to_contain_text("unknown step 'nope'")
        await check("submit, a 422 marked")
    finally:
        await context.close()
    assert not errors, errors
    assert not problems, f"axe-core, {scheme} scheme: serious or critical violations\n" + "\n".join(
        f"{name}:\n{axe_report(found)}" for name, found in problems.items()
    )
