"""The browser dashboard in a real Chromium: Debian's `chromium`, headless, driven by
Playwright, against the whole app (relay, notifier, hub, in-process workers) on a real
uvicorn port. One browser for the module; each test gets a fresh database, server and
browser context (so a fresh session storage).

Every test also fails on any uncaught error in the page and on any Content Security
Policy violation, so a broken module or an inline script shows up here.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
from playwright.async_api import Page, async_playwright, expect

from app.main import create_app
from tests.conftest import TOKEN
from tests.helpers import eventually
from tests.servers import uvicorn_app

CHROMIUM = os.environ.get("SWITCHYARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
async def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/test installs Debian's chromium with apt-get")
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
async def base(store, settings):
    """The whole app on a real port, with 8 in-process job slots."""
    await store.engines.set_limit("testing", 8)
    async with uvicorn_app(create_app(settings, store=store, workers=8)) as host:
        yield f"http://{host}"


@pytest.fixture
async def api(base):
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=10) as c:
        yield c


@pytest.fixture
async def page(browser, base):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = await context.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
    pg.on(
        "console",
        lambda m: (
            problems.append(f"console: {m.text}") if m.type == "error" and "Content Security Policy" in m.text else None
        ),
    )
    yield pg
    await context.close()
    assert not problems, problems


async def sign_in(page: Page, base: str, token: str = TOKEN) -> None:
    await page.goto(base + "/")
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def signed_in(page: Page, base: str) -> None:
    await sign_in(page, base)
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    await expect(page.locator("#live-state")).to_have_attribute("data-state", "live")


def chain(name: str, n: int = 5, depends_on_last: str | None = None) -> dict:
    steps = [{"key": "s0", "engine": "testing", "operation": "ok", "parameters": {"i": 0}}]
    for i in range(1, n):
        deps = [f"s{i - 1}"] if not (depends_on_last and i == n - 1) else [depends_on_last]
        steps.append(
            {"key": f"s{i}", "engine": "testing", "operation": "ok", "depends_on": deps, "parameters": {"i": i}}
        )
    return {"name": name, "jobs": steps}


async def submit_in_editor(page: Page, doc: dict) -> None:
    await page.get_by_role("link", name="Submit", exact=True).click()
    await page.get_by_label("Workflow or job (JSON)").fill(json.dumps(doc, indent=2))
    await page.get_by_role("button", name="Submit", exact=True).click()


async def queue(api, name: str) -> dict:
    r = await api.get("/api/v1/jobs/queue/status")
    assert r.status_code == 200, r.text
    return next(q for q in r.json()["queues"] if q["name"] == name)


async def test_1_sign_in(page, base):
    response = await page.goto(base + "/")
    headers = response.headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()

    await signed_in(page, base)
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    # The engines the server knows, read from the API with the token.
    await expect(page.locator("tr[data-engine='testing']")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('switchyard.token')") == TOKEN
    # The token survives a reload of the tab (session storage), and signing out forgets it.
    await page.reload()
    await expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API token")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('switchyard.token')") is None


async def test_2_submit_a_five_step_workflow_through_the_editor(page, base, api):
    await signed_in(page, base)
    # First with a mistake: the API's 422 is shown at the line of the field it names.
    await submit_in_editor(page, chain("five steps", depends_on_last="nope"))
    errors = page.locator("#editor-errors")
    await expect(errors).to_contain_text("depends on unknown step 'nope'")
    text = await page.get_by_label("Workflow or job (JSON)").input_value()
    lines = text.splitlines()
    bad_line = next(i for i, line in enumerate(lines, 1) if '"nope"' in line)
    await expect(errors).to_contain_text(f"Line {bad_line}")
    await expect(page.locator(".marks .mark-msg")).to_contain_text("unknown step 'nope'")
    await expect(page.get_by_label("Workflow or job (JSON)")).to_have_attribute("aria-invalid", "true")
    assert (await api.get("/api/v1/jobs/workflows")).json()["workflows"] == []

    # Fixed: submitted, and the page moves to the new workflow.
    await page.get_by_label("Workflow or job (JSON)").fill(json.dumps(chain("five steps"), indent=2))
    await page.get_by_role("button", name="Submit", exact=True).click()
    await page.wait_for_url("**/#/workflows/*")
    wf_id = page.url.rsplit("/", 1)[1]
    body = (await api.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
    assert body["name"] == "five steps" and body["total"] == 5
    assert [s["key"] for s in body["steps"]] == ["s0", "s1", "s2", "s3", "s4"]
    await expect(page.get_by_role("heading", name="five steps", level=1)).to_be_visible()
    await expect(page.locator("svg.dag a.node")).to_have_count(5)


async def test_3_steps_turn_completed_live_without_a_reload(page, base, api):
    assert (await api.post("/api/v1/jobs/queue/testing/pause")).json()["paused"] is True
    await signed_in(page, base)
    await submit_in_editor(page, chain("live chain"))
    await page.wait_for_url("**/#/workflows/*")
    wf_id = page.url.rsplit("/", 1)[1]
    nodes = page.locator("svg.dag a.node")
    await expect(nodes).to_have_count(5)
    # Waiting nodes say why: the root waits on the paused engine, the others on their parent.
    await expect(page.locator("a.node[data-key='s0']")).to_have_attribute("data-status", "queued")
    await expect(page.locator("a.node[data-key='s0'] .n-status")).to_contain_text("paused")
    await expect(page.locator("a.node[data-key='s3']")).to_have_attribute("data-status", "pending")
    await expect(page.locator("a.node[data-key='s3'] .n-status")).to_contain_text("waits for s2")

    # From here the page may not re-read the workflow over REST: colours can only come from
    # the WebSocket. A marker on the window shows that the page is never reloaded.
    await page.route("**/api/v1/jobs/workflows/*/status", lambda route: route.abort())
    await page.evaluate("""() => {
        window.__marker = 'same page';
        window.__completed = [];
        const seen = new Set();
        new MutationObserver(() => {
            for (const n of document.querySelectorAll('svg.dag a.node[data-status="completed"]')) {
                if (!seen.has(n.dataset.key)) { seen.add(n.dataset.key); window.__completed.push(n.dataset.key); }
            }
        }).observe(document.querySelector('svg.dag'), {subtree: true, attributes: true, attributeFilter: ['data-status']});
    }""")
    assert (await api.post("/api/v1/jobs/queue/testing/resume")).json()["paused"] is False
    # Five hops in a row, each a claim, a run, a settle and an event: on a loaded machine
    # that passes expect's default 5 s. The test is about the page, not the speed.
    await expect(page.locator("svg.dag a.node[data-status='completed']")).to_have_count(5, timeout=30_000)
    assert await page.evaluate("window.__marker") == "same page"
    assert await page.evaluate("window.__completed") == ["s0", "s1", "s2", "s3", "s4"]  # one by one, in chain order
    status = (await api.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
    assert status["status"] == "completed"

    # A node is a link to its job.
    await page.locator("a.node[data-key='s2']").click()
    await page.wait_for_url(f"**/#/jobs/{status['steps'][2]['job_id']}")
    await expect(page.locator(".timeline li[data-type='job.completed']")).to_have_count(1)


async def test_4_pause_an_engine_in_the_ui(page, base, api):
    await signed_in(page, base)
    row = page.locator("tr[data-engine='testing']")
    await row.get_by_role("button", name="Pause testing").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    assert (await queue(api, "testing"))["paused"] is True

    # While paused, a job waits, and its page says why.
    job = (await api.post("/api/v1/jobs/submit", json={"engine": "testing", "operation": "ok"})).json()
    await page.goto(f"{base}/#/jobs/{job['id']}")
    await expect(page.locator(".why-list li[data-reason='paused']")).to_contain_text("testing is paused")

    await page.get_by_role("link", name="Queues", exact=True).click()
    row = page.locator("tr[data-engine='testing']")
    await row.get_by_label("Limit for testing").fill("3")
    await row.get_by_role("button", name="Set limit").click()
    await expect(row.locator("td").nth(2)).to_have_text("3")
    assert (await queue(api, "testing"))["max_concurrent_jobs"] == 3
    await row.get_by_role("button", name="Resume testing").click()
    await expect(row.locator(".badge")).to_have_text("active")
    assert (await queue(api, "testing"))["paused"] is False
    await eventually(lambda: _completed(api, job["id"]))

    # A member may watch the queues but not steer them: the controls are there, disabled.
    r = await api.post("/api/v1/auth/keys", json={"name": "watcher", "user": "mia", "role": "member", "tenant": "demo"})
    assert r.status_code == 201, r.text
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, base, token=r.json()["token"])
    await expect(page.locator("#who")).to_have_text("mia · member")
    row = page.locator("tr[data-engine='testing']")
    await expect(row.get_by_role("button", name="Pause testing")).to_be_disabled()
    await expect(page.get_by_text("need the operator role")).to_be_visible()


async def _completed(api, job_id) -> bool:
    return (await api.get(f"/api/v1/jobs/{job_id}/status")).json()["status"] == "completed"


async def test_5_a_failed_job_appears_under_the_bell(page, base, api):
    await signed_in(page, base)
    bell = page.locator("#bell")
    await expect(bell).to_have_attribute("aria-label", "Notifications, 0 unread")
    await page.evaluate("window.__marker = 'same page'")
    job = (
        await api.post(
            "/api/v1/jobs/submit", json={"engine": "testing", "operation": "permanent", "name": "nightly report"}
        )
    ).json()
    await expect(bell).to_have_attribute("aria-label", "Notifications, 1 unread")
    await expect(bell.locator(".count")).to_have_text("1")
    assert await page.evaluate("window.__marker") == "same page"  # pushed over the WebSocket

    await bell.click()
    panel = page.locator("#bell-panel")
    item = panel.locator("li.notification.unread")
    await expect(item).to_have_count(1)
    await expect(item).to_contain_text("Job failed: nightly report")
    await item.get_by_role("button", name="Mark read").click()
    await expect(bell).to_have_attribute("aria-label", "Notifications, 0 unread")
    page_ = (await api.get("/api/v1/jobs/notifications")).json()
    assert page_["unread_count"] == 0 and page_["notifications"][0]["job_id"] == job["id"]

    # The notification links to the job: its error history and timeline.
    await panel.get_by_role("link", name="Job failed: nightly report").click()
    await page.wait_for_url(f"**/#/jobs/{job['id']}")
    await expect(page.locator(".errors li")).to_contain_text("bad_input")
    await expect(page.locator(".timeline li[data-type='job.failed']")).to_contain_text("this can never work")
    # Recent failures on the overview.
    await page.get_by_role("link", name="Overview", exact=True).click()
    await expect(page.locator(".failures")).to_contain_text("nightly report")


async def test_6_a_wrong_token_is_refused(page, base):
    await sign_in(page, base, token="not-the-token")
    await expect(page.get_by_role("alert")).to_contain_text("refused this token (401")
    await expect(page.get_by_label("API token")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    assert await page.evaluate("sessionStorage.getItem('switchyard.token')") is None

    # A token the server stops accepting (say, rotated) sends the tab back to sign-in.
    await page.evaluate("sessionStorage.setItem('switchyard.token', 'stale-token')")
    await page.reload()
    await expect(page.get_by_label("API token")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("Sign in again")
    assert await page.evaluate("sessionStorage.getItem('switchyard.token')") is None


async def test_7_a_long_waits_for_label_stays_inside_its_node(page, base, api):
    # Six long-named parents on a paused engine: the last step waits for all of them.
    assert (await api.post("/api/v1/jobs/queue/testing/pause")).json()["paused"] is True
    parents = [f"extract_customer_records_region_{i}" for i in range(6)]
    doc = {
        "name": "wide fan-in",
        "jobs": [{"key": k, "engine": "testing", "operation": "ok"} for k in parents]
        + [{"key": "publish_quarterly_report", "engine": "testing", "operation": "ok", "depends_on": parents}],
    }
    r = await api.post("/api/v1/jobs/workflows", json=doc)
    assert r.status_code in (200, 201), r.text
    await signed_in(page, base)
    await page.goto(f"{base}/#/workflows/{r.json()['id']}")
    node = page.locator("a.node[data-key='publish_quarterly_report']")
    await expect(node.locator(".n-status")).to_contain_text("waits for")
    full = f"pending · waits for {', '.join(parents)}"
    # Every label ends inside its node's rectangle, as rendered.
    boxes = await node.evaluate("""(a) => {
        const r = a.querySelector('rect').getBBox();
        return [...a.querySelectorAll('text')].map((t) => {
            const b = t.getBBox();
            return {cls: t.getAttribute('class'), left: b.x, right: b.x + b.width, min: r.x, max: r.x + r.width};
        });
    }""")
    assert len(boxes) == 3
    for b in boxes:
        assert b["min"] <= b["left"] and b["right"] <= b["max"], b
    # The whole text is on hover: the label's <title>, and the node's (also its accessible name).
    assert await node.locator(".n-status > title").text_content() == full
    assert full in await node.locator(":scope > title").text_content()
    assert full in await node.get_attribute("aria-label")


async def test_8_a_map_steps_children_appear_in_the_dag_as_it_expands(page, base, api):
    """The map step waits for its list's step; once that completes, its three children join
    the drawing (re-read on their events, no reload), with edges into the map step, which
    says it waits for them; then everything completes."""
    assert (await api.post("/api/v1/jobs/queue/testing/pause")).json()["paused"] is True
    write = {"key": "write", "engine": "testing", "operation": "stubborn", "depends_on": ["outline"]}
    doc = {
        "name": "map",
        "jobs": [
            {"key": "outline", "engine": "testing", "operation": "collect", "parameters": {"value": ["a", "b", "c"]}},
            {**write, "map_over": "outline.value", "parameters": {"seconds": 3}},
            {"key": "assemble", "engine": "testing", "operation": "collect", "depends_on": ["write"]},
        ],
    }
    r = await api.post("/api/v1/jobs/workflows", json=doc)
    assert r.status_code == 201, r.text
    await signed_in(page, base)
    await page.goto(f"{base}/#/workflows/{r.json()['id']}")
    nodes = page.locator("svg.dag a.node")
    await expect(nodes).to_have_count(3)
    assert (await api.post("/api/v1/jobs/queue/testing/resume")).status_code == 200
    await expect(nodes).to_have_count(6)
    for i in range(3):
        await expect(page.locator(f"a.node[data-key='write[{i}]']")).to_be_visible()
        edge = page.locator(f"svg.dag path.edge[data-from='write[{i}]'][data-to='write']")
        await expect(edge).to_have_count(1)
    await expect(page.locator("a.node[data-key='write'] .n-status")).to_contain_text("of 3 mapped")
    await expect(page.locator("svg.dag a.node[data-status='completed']")).to_have_count(6)
