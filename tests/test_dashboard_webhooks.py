"""The dashboard's Webhooks page in a real Chromium (the browser set-up of
tests/test_dashboard.py): registering with a 422 shown at its field, a delivery that dies
at a failing receiver shown with its attempts, redelivered with a click, pause and resume,
and delete. The whole app runs on a real port; the receiver is a real HTTP server on
127.0.0.1, allow-listed as the http_request handler's tests do."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests import test_dashboard as dash
from tests.conftest import make_settings
from tests.test_webhooks import Receiver, documented_verify

# The fixtures of tests/test_dashboard.py (browser, app on a port, API client, page) and the
# loopback allow-list of tests/test_webhooks.py.
browser, base, api, page = dash.browser, dash.base, dash.api, dash.page
SECRET = "dashboard-secret-0123456789"


@pytest.fixture
def settings():
    return make_settings(
        webhook_max_attempts=2,
        webhook_retry_base_seconds=0.05,
        webhook_retry_max_seconds=0.1,
        webhook_timeout_seconds=2.0,
    )


@pytest.fixture
def receiver(monkeypatch):
    from app import get_settings

    monkeypatch.setenv("SWITCHYARD_HTTP_ALLOWLIST", "127.0.0.1")
    get_settings.cache_clear()
    r = Receiver(lambda i, hit: 500)
    yield r
    r.close()
    monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST", raising=False)
    get_settings.cache_clear()


async def test_register_watch_a_delivery_die_redeliver_pause_and_delete(page, base, api, receiver):
    await dash.signed_in(page, base)
    await page.get_by_role("link", name="Webhooks", exact=True).click()
    await expect(page.get_by_role("heading", name="Webhooks", level=1)).to_be_visible()
    await expect(page.locator("table.webhooks")).to_contain_text("No webhooks yet.")

    # A short secret: the API's 422 is shown at the secret, and nothing is registered.
    await page.get_by_label("URL").fill(receiver.url())
    await page.get_by_label("Secret").fill("too-short")
    await page.get_by_role("button", name="Register").click()
    await expect(page.locator("#wh-secret-error")).to_contain_text("at least 16 characters")
    await expect(page.get_by_label("Secret")).to_have_attribute("aria-invalid", "true")
    # A private address: refused at the URL.
    await page.get_by_label("URL").fill("http://10.0.0.1/hook")
    await page.get_by_label("Secret").fill(SECRET)
    await page.get_by_role("button", name="Register").click()
    await expect(page.locator("#wh-url-error")).to_contain_text("not a public address")
    await expect(page.get_by_label("URL")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_label("Secret")).not_to_have_attribute("aria-invalid", "true")
    assert (await api.get("/api/v1/webhooks")).json()["webhooks"] == []

    # Registered for job.failed (checked by default) with the receiver's URL.
    await expect(page.get_by_label("job.failed")).to_be_checked()
    await page.get_by_label("URL").fill(receiver.url())
    await page.get_by_role("button", name="Register").click()
    row = page.locator("table.webhooks tbody tr[data-webhook]")
    await expect(row).to_have_count(1)
    await expect(row).to_contain_text(receiver.url())
    await expect(row.locator(".badge")).to_have_text("active")
    [hook] = (await api.get("/api/v1/webhooks")).json()["webhooks"]
    assert hook["events"] == ["job.failed", "workflow.failed"] and hook["secret"] == "***"
    assert SECRET not in await page.content()  # the form forgot it, and no answer had it

    # A failed job: its delivery fails twice (500) and is dead, attempts listed.
    r = await api.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "permanent"})
    assert r.status_code == 201, r.text
    await row.get_by_role("link", name="Deliveries").click()
    await page.wait_for_url(f"**/#/webhooks/{hook['id']}")
    await expect(page.get_by_role("heading", name="Webhook deliveries", level=1)).to_be_visible()
    dead = page.locator("table.deliveries tr[data-state='dead']")
    await expect(dead).to_have_count(1, timeout=30_000)
    await expect(dead.locator(".attempts li")).to_have_count(2)
    await expect(dead.locator(".attempts li").first).to_contain_text("500")
    await expect(dead).to_contain_text("job.failed")

    # Redeliver, with the receiver fixed: delivered, a third attempt answered 200.
    receiver.plan = lambda i, hit: 200
    await dead.get_by_role("button", name="Redeliver job.failed", exact=False).click()
    delivered = page.locator("table.deliveries tr[data-state='delivered']")
    await expect(delivered).to_have_count(1, timeout=20_000)
    await expect(delivered.locator(".attempts li")).to_have_count(3)
    await expect(delivered.locator(".attempts li").last).to_contain_text("200")
    assert [h.status for h in receiver.hits] == [500, 500, 200]
    assert all(documented_verify()(SECRET, h.headers, h.body) for h in receiver.hits)

    # Back through the crumbs; pause and resume from the list, then delete (a second click confirms).
    await page.locator(".crumbs").get_by_role("link", name="Webhooks").click()
    row = page.locator(f"tr[data-webhook='{hook['id']}']")
    await row.get_by_role("button", name=f"Pause {receiver.url()}").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    assert (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()["paused"] is True
    await row.get_by_role("button", name=f"Resume {receiver.url()}").click()
    await expect(row.locator(".badge")).to_have_text("active")
    assert (await api.get(f"/api/v1/webhooks/{hook['id']}")).json()["paused"] is False
    await row.get_by_role("button", name=f"Delete {receiver.url()}").click()
    assert (await api.get("/api/v1/webhooks")).json()["webhooks"] != []  # not on the first click
    await row.get_by_role("button", name="Confirm").click()
    await expect(page.locator("table.webhooks")).to_contain_text("No webhooks yet.")
    assert (await api.get("/api/v1/webhooks")).json()["webhooks"] == []
