"""The dashboard's execution controls in a real Chromium (the browser, server and page set-up
of tests/test_dashboard.py): usage per day on the overview, a workflow's usage per step, an
engine's limits on the queues page (per-key limits and weights too), a budget notification
arriving under the bell, and the keys at their limit under their engine.

Usage comes from a handler reporting it through `ctx.usage`, run by the app's own workers;
only the days before today are written straight into the `usage` collection, since the worker
stamps an attempt with the day it ends."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playwright.async_api import expect

from app import JobContext, RateLimited, handler
from tests.helpers import eventually
from tests.test_dashboard import TIMEOUT_MS, api, base, browser, page, queue, sign_in, signed_in  # noqa: F401 (fixtures)
from tests.test_dashboard_a11y import AXE, AXE_URL, axe, axe_report


@handler(engine="metered", operation="call")
async def call(ctx: JobContext) -> dict:
    """Reports the usage in its parameters, as a paid call would."""
    await ctx.usage(**ctx.params["usage"])
    return {}


PUSHED: set[str] = set()


@handler(engine="throttled", operation="call")
async def pushed_back(ctx: JobContext) -> dict:
    """The provider pushes back on the job's limit key the first time (`RateLimited` with
    `key="key"`): the job goes back to the queue and its key is held for `push` seconds."""
    if ctx.job_id not in PUSHED:
        PUSHED.add(ctx.job_id)
        raise RateLimited(ctx.params["push"], key="key")
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


async def test_3_the_admin_edits_an_engines_limits_and_no_one_else_is_offered_them(page, base, api):  # noqa: F811
    await signed_in(page, base)
    await page.get_by_role("link", name="Queues", exact=True).click()
    row = page.locator("tr[data-engine='testing']")
    more = row.get_by_role("button", name="Edit all limits of testing")
    await more.click()
    await expect(more).to_have_attribute("aria-expanded", "true")
    editor = page.get_by_role("form", name="Limits of testing")
    await expect(editor.get_by_label("Concurrency", exact=True)).to_have_value("8")
    for field in ("key", "key_rate", "key_burst", "key_concurrency"):  # per key: test_4
        await expect(editor.locator(f"[data-field='{field}']")).to_be_visible()

    await editor.get_by_label("Concurrency", exact=True).fill("4")
    await editor.get_by_label("Rate", exact=True).fill("30/min")
    await editor.get_by_label("Burst", exact=True).fill("5")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.get_by_role("status")).to_have_text("Saved.")
    q = await queue(api, "testing")
    assert (q["max_concurrent_jobs"], q["rate"], q["burst"]) == (4, "30/min", 5)
    await expect(row.locator("td").nth(2)).to_have_text("4 · rate 30/min, burst 5")
    await expect(row.get_by_label("Limit for testing")).to_have_value("4")

    # The API's 422 is shown beside the field it names; nothing changed.
    rate = editor.get_by_label("Rate", exact=True)
    await rate.fill("fast")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.locator("[data-field='rate'] .field-error")).to_contain_text("N/s, N/min or N/h")
    await expect(rate).to_have_attribute("aria-invalid", "true")
    await expect(editor.locator("[data-field='burst'] .field-error")).to_have_text("")
    assert (await queue(api, "testing"))["rate"] == "30/min"

    # Emptied, the rate is cleared (null); a save with no change sends nothing.
    await rate.fill("")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.get_by_role("status")).to_have_text("Saved.")
    await expect(rate).not_to_have_attribute("aria-invalid", "true")
    assert (await queue(api, "testing"))["rate"] is None
    await expect(row.locator("td").nth(2)).to_have_text("4")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.get_by_role("status")).to_have_text("Nothing changed.")

    # A tenant's admin may pause for its tenant, but an engine's limits are not its to set:
    # neither form is offered (and the API refuses it).
    r = await api.post("/api/v1/auth/keys", json={"name": "ops", "user": "olga", "role": "admin", "tenant": "acme"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    put = await api.put(
        "/api/v1/jobs/queue/testing/limits", json={"rate": "1/s"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert put.status_code == 403, put.text
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, base, token=token)
    await expect(page.locator("#who")).to_have_text("olga · admin")
    await page.get_by_role("link", name="Queues", exact=True).click()
    row = page.locator("tr[data-engine='testing']")
    await expect(row.get_by_role("button", name="Pause testing")).to_be_enabled()
    await expect(row.get_by_role("button", name="Edit all limits of testing")).to_have_count(0)
    await expect(row.get_by_label("Limit for testing")).to_be_hidden()
    await expect(page.get_by_role("form", name="Limits of testing")).to_have_count(0)


async def test_4_the_admin_sets_per_key_limits_and_a_weight_and_the_engine_has_them(page, base, api):  # noqa: F811
    """The per-key limits and the weights through the real API: set, refused (nothing
    changes), and the key cleared, which clears every per-key limit."""
    sent: list[dict] = []  # what the page PUTs, observed (the server answers every one)
    page.on("request", lambda rq: sent.append(rq.post_data_json) if rq.method == "PUT" else None)
    await signed_in(page, base)
    await page.get_by_role("link", name="Queues", exact=True).click()
    row = page.locator("tr[data-engine='testing']")
    await row.get_by_role("button", name="Edit all limits of testing").click()
    editor = page.get_by_role("form", name="Limits of testing")
    key = editor.get_by_label("Limit key")
    await expect(key).to_have_value("")
    await expect(editor.get_by_label("Weight of acme")).to_have_count(0)

    await key.fill("params.account")
    await editor.get_by_label("Rate per key").fill("10/min")
    await editor.get_by_label("Burst per key").fill("2")
    await editor.get_by_label("Concurrency per key").fill("3")
    await editor.get_by_label("Add a tenant").fill("acme")
    await editor.get_by_label("Its weight").fill("2.5")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.get_by_role("status")).to_have_text("Saved.")
    assert sent == [{"key": "params.account", "key_rate": "10/min", "key_burst": 2, "key_concurrency": 3,
                     "weights": {"acme": 2.5}}]  # fmt: skip
    per_key = ("key", "key_rate", "key_burst", "key_concurrency", "weights")
    q = await queue(api, "testing")
    assert {f: q[f] for f in per_key} == {"key": "params.account", "key_rate": "10/min", "key_burst": 2,
                                          "key_concurrency": 3, "weights": {"acme": 2.5}}  # fmt: skip
    await expect(row.locator("td").nth(2)).to_have_text("8 · per params.account: 3 at once, 10/min")
    await expect(editor.get_by_label("Weight of acme")).to_have_value("2.5")  # the editor shows what was saved
    await expect(editor.get_by_label("Add a tenant")).to_have_value("")

    # A key the API does not know: its 422 beside the key field, and nothing changed (not the
    # valid per-key rate sent with it either).
    await key.fill("account")
    await editor.get_by_label("Rate per key").fill("20/min")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.locator("[data-field='key'] .field-error")).to_contain_text("unknown key 'account'")
    await expect(key).to_have_attribute("aria-invalid", "true")
    await expect(editor.locator("[data-field='key_rate'] .field-error")).to_have_text("")
    await expect(editor.get_by_label("Rate per key")).not_to_have_attribute("aria-invalid", "true")
    await expect(editor.get_by_role("status")).to_have_text("")
    assert sent[-1] == {"key": "account", "key_rate": "20/min"}
    assert {f: (await queue(api, "testing"))[f] for f in per_key} == {f: q[f] for f in per_key}
    await expect(row.locator("td").nth(2)).to_have_text("8 · per params.account: 3 at once, 10/min")
    await accessible(page, "the limits editor with a 422 on the key")

    # The key emptied: every per-key limit goes with it (the per-key rate typed above is not
    # sent); the weight stays.
    await key.fill("")
    await editor.get_by_role("button", name="Save limits").click()
    await expect(editor.get_by_role("status")).to_have_text("Saved.")
    assert sent[-1] == {"key": None}
    await expect(key).not_to_have_attribute("aria-invalid", "true")
    for label in ("Rate per key", "Burst per key", "Concurrency per key"):
        await expect(editor.get_by_label(label)).to_have_value("")
    q = await queue(api, "testing")
    assert {f: q[f] for f in per_key} == {"key": None, "key_rate": None, "key_burst": None, "key_concurrency": None,
                                          "weights": {"acme": 2.5}}  # fmt: skip
    await expect(row.locator("td").nth(2)).to_have_text("8")
    assert len(sent) == 3


async def test_5_a_budget_crossed_by_a_worker_appears_under_the_bell_live(page, base, api):  # noqa: F811
    r = await api.post("/api/v1/auth/keys", json={"name": "k", "user": "alice", "role": "admin", "tenant": "ta"})
    assert r.status_code == 201, r.text
    alice = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await api.put("/api/v1/admin/tenants/ta/budget", json={"daily": 1.0})).status_code == 200
    await sign_in(page, base, token=r.json()["token"])
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")
    bell = page.locator("#bell")
    await expect(bell).to_have_attribute("aria-label", "Notifications, 0 unread")
    await page.evaluate("window.__marker = 'same page'")

    job = {"engine": "billing", "operation": "spend", "parameters": {"cost": 0.9}}
    assert (await api.post("/api/v1/jobs/submit", json=job, headers=alice)).status_code in (200, 201)
    await expect(bell).to_have_attribute("aria-label", "Notifications, 1 unread")
    assert await page.evaluate("window.__marker") == "same page"  # pushed over the WebSocket
    await bell.click()
    item = page.locator("#bell-panel li.notification.unread")
    await expect(item).to_contain_text("Budget 80 % spent: tenant ta")
    await item.get_by_role("button", name="Mark read").click()
    await expect(bell).to_have_attribute("aria-label", "Notifications, 0 unread")
    assert (await api.get("/api/v1/jobs/notifications", headers=alice)).json()["unread_count"] == 0


async def test_6_keys_at_their_limit_are_listed_under_their_engine_for_everyone(page, base, api):  # noqa: F811
    limits = {"key": "params.account", "key_concurrency": 1}
    assert (await api.put("/api/v1/jobs/queue/testing/limits", json=limits)).status_code == 200
    r = await api.post("/api/v1/auth/keys", json={"name": "m", "user": "mia", "role": "member", "tenant": "demo"})
    assert r.status_code == 201, r.text
    mia = r.json()["token"]

    async def submit(account: str, token: str | None = None) -> str:
        job = {"engine": "testing", "operation": "wait_cancel", "parameters": {"account": account, "max": 60}}
        headers = {"Authorization": f"Bearer {token}"} if token else None
        r = await api.post("/api/v1/jobs/submit", json=job, headers=headers)
        assert r.status_code in (200, 201), r.text
        return r.json()["id"]

    async def statuses(ids: list[str]) -> list[str]:
        return sorted([(await api.get(f"/api/v1/jobs/{i}/status")).json()["status"] for i in ids])

    await signed_in(page, base)
    await page.get_by_role("link", name="Queues", exact=True).click()
    keys = page.locator("tr[data-keys='testing']")
    await expect(keys).to_be_hidden()  # no key at its limit yet
    await page.evaluate("window.__marker = 'same page'")

    # Two jobs of account a1: one runs, the other waits for it; a2's job runs beside them.
    a1 = [await submit("a1"), await submit("a1")]
    a2 = await submit("a2")
    await eventually(lambda: _are(statuses, a1 + [a2], ["queued", "running", "running"]))
    at_limit = (await queue(api, "testing"))["keys_at_limit"]
    assert {"key": "default/a1", "limit": "concurrency", "running": 1, "until": None} in at_limit
    await expect(keys).to_be_visible()

    # The API may also list a2, at its one running job though nothing of it waits (a band's
    # cursor lags its claims): the page lists what the API says, in its order.
    async def as_the_api_says() -> bool:
        said = [(k["key"], k["limit"]) for k in (await queue(api, "testing"))["keys_at_limit"]]
        shown = await keys.locator("li").evaluate_all("(lis) => lis.map((li) => [li.dataset.key, li.dataset.limit])")
        return [tuple(x) for x in shown] == said

    await eventually(as_the_api_says)
    await expect(keys.locator("li[data-key='default/a1']")).to_have_text(
        "default/a1 concurrency limit 1 running · until one of its jobs ends"
    )
    await expect(keys.get_by_role("list", name="Keys of testing at their limit")).to_be_visible()
    assert await page.evaluate("window.__marker") == "same page"  # brought by the job events, not a reload
    await accessible(page, "the queues page with a key at its limit")

    # Pushed back by the provider on its key: that key is held, until a time shown relative.
    assert (await api.put("/api/v1/jobs/queue/throttled/limits", json={"key": "params.account"})).status_code == 200
    job = {"engine": "throttled", "operation": "call", "parameters": {"account": "p1", "push": 60}}
    assert (await api.post("/api/v1/jobs/submit", json=job)).status_code in (200, 201)
    held = page.locator("tr[data-keys='throttled'] li")
    await expect(held).to_have_attribute("data-limit", "held", timeout=TIMEOUT_MS)
    await expect(held).to_have_text(re.compile(r"^default/p1 held by the provider 0 running · lifts in ([45]\d|60) s$"))
    until = (await queue(api, "throttled"))["keys_at_limit"][0]["until"]
    assert await held.locator("time").get_attribute("datetime") == _iso_ms(until)

    # A member of another tenant sees its own keys only (the API scopes them), on the same page.
    await submit("b1", mia)
    await submit("b1", mia)
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, base, token=mia)
    await expect(page.locator("#who")).to_have_text("mia · member")
    await page.get_by_role("link", name="Queues", exact=True).click()
    await expect(page.locator("tr[data-keys='testing'] li")).to_have_attribute("data-key", "demo/b1")
    await expect(page.locator("tr[data-keys='testing'] li")).to_have_count(1)
    await expect(page.locator("tr[data-keys='throttled']")).to_be_hidden()

    # Its key's jobs end (cancelled): nothing of demo's is at a limit any more, live.
    mine = {"Authorization": f"Bearer {mia}"}
    for b1 in (await api.get("/api/v1/jobs/?engine=testing", headers=mine)).json()["jobs"]:
        assert (await api.post(f"/api/v1/jobs/{b1['id']}/cancel", headers=mine)).status_code == 200
    await expect(page.locator("tr[data-keys='testing']")).to_be_hidden()


async def _are(statuses, ids: list[str], expected: list[str]) -> bool:
    return await statuses(ids) == expected


def _iso_ms(at: str) -> str:
    """The API's time as the page's <time datetime> writes it: UTC, to the millisecond."""
    t = datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"
