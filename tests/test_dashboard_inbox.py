"""The "Needs action" inbox and a workflow page's decisions, in a real Chromium against the
whole app (relay, notifier, hub, in-process workers): an approval waiting for the signed-in
user is listed with what it is about (its parent's text and image), approved from the inbox
with a comment, and the workflow goes on; a deep link focuses one approval; a rejection from
the workflow page fails the step."""

from __future__ import annotations

from playwright.async_api import expect

from tests.helpers import eventually
from tests.test_dashboard import TIMEOUT_MS, api, base, browser, page, signed_in  # noqa: F401 (fixtures)

PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


async def submit(api, name: str) -> dict:  # noqa: F811
    r = await api.post(
        "/api/v1/jobs/workflows",
        json={
            "name": name,
            "jobs": [
                {"key": "draft", "engine": "testing", "operation": "ok",
                 "parameters": {"headline": "Autumn sale starts Monday", "image": PNG}},
                {"key": "review", "type": "approval", "depends_on": ["draft"]},
                {"key": "publish", "engine": "testing", "operation": "collect", "depends_on": ["review"]},
            ],
        },
    )  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


async def step(api, wf, key) -> dict:  # noqa: F811
    return (await api.get(f"/api/v1/jobs/{wf['jobs'][key]}/status")).json()


async def awaiting(api, wf) -> bool:  # noqa: F811
    return (await step(api, wf, "review"))["status"] == "awaiting"


async def test_approve_from_the_inbox_and_the_workflow_goes_on(page, base, api):  # noqa: F811
    wf = await submit(api, "launch post")
    await eventually(lambda: awaiting(api, wf), timeout=30)
    await signed_in(page, base)
    await page.get_by_role("link", name="Needs action").click()
    await expect(page.get_by_role("heading", name="Needs action", level=1)).to_be_visible()
    card = page.locator(f"li.approval[data-workflow='{wf['id']}'][data-step='review']")
    await expect(card.get_by_role("heading", level=2)).to_have_text("review of launch post")
    await expect(card.get_by_role("img", name="draft params.image (image result)")).to_be_visible()
    await expect(card.locator("pre")).to_contain_text("Autumn sale starts Monday")

    await card.get_by_label("Comment (optional)").fill("Looks good")
    await card.get_by_role("button", name="Approve").click()
    await expect(page.get_by_role("status").filter(has_text="Approved review of launch post.")).to_be_visible()

    async def published():
        body = (await api.get(f"/api/v1/jobs/workflows/{wf['id']}/status")).json()
        return body if body["status"] == "completed" else None

    await eventually(published, timeout=30)
    decision = (await step(api, wf, "publish"))["result"]["parents"]["review"]
    assert decision["decision"] == "approved" and decision["comment"] == "Looks good" and decision["by"] == "admin"
    await expect(page.get_by_text("Nothing needs your action.")).to_be_visible(timeout=TIMEOUT_MS)


async def test_a_deep_link_focuses_the_approval_and_one_decided_is_said_gone(page, base, api):  # noqa: F811
    first, second = await submit(api, "first post"), await submit(api, "second post")
    for wf in (first, second):
        await eventually(lambda wf=wf: awaiting(api, wf), timeout=30)
    await signed_in(page, base)
    await page.goto(f"{base}/#/approvals/{second['id']}/review")
    heading = page.locator(f"li.approval[data-workflow='{second['id']}'] h2")
    await expect(heading).to_be_focused()
    await expect(page.locator("li.approval").first).to_have_attribute("data-workflow", second["id"])  # put first

    assert (await api.post(f"/api/v1/jobs/workflows/{first['id']}/steps/review/approve")).status_code == 200
    await expect(page.locator(f"li.approval[data-workflow='{first['id']}']")).to_have_count(0)  # live: gone
    await page.goto(f"{base}/#/approvals/{first['id']}/review")
    await expect(page.get_by_text("That approval no longer waits for you")).to_be_visible()


async def test_reject_from_the_workflow_page(page, base, api):  # noqa: F811
    wf = await submit(api, "risky post")
    await eventually(lambda: awaiting(api, wf), timeout=30)
    await signed_in(page, base)
    await page.goto(f"{base}/#/workflows/{wf['id']}")
    node = page.locator("a.node[data-key='review']")
    await expect(node).to_have_attribute("data-status", "awaiting")
    await expect(node.locator(".n-status")).to_contain_text("awaiting approval")
    await expect(node.locator(".n-op")).to_have_text("approval")
    section = page.get_by_role("region", name="Waiting for your decision")
    await section.get_by_label("Comment (optional)").fill("Not on brand")
    await section.get_by_role("button", name="Reject").click()
    await expect(node).to_have_attribute("data-status", "failed")
    await expect(section).to_be_hidden()
    await expect(page.locator("a.node[data-key='publish']")).to_have_attribute("data-status", "cancelled")
    review = await step(api, wf, "review")
    assert review["last_error"]["code"] == "rejected" and review["last_error"]["message"].endswith("Not on brand")
