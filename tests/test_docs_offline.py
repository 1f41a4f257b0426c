"""`/docs` in a real Chromium (Debian's, headless, as in tests/test_dashboard.py) with every
request that is not to the test server refused: Swagger UI must come from the package and
show the operations, with no Content Security Policy violation."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest
from playwright.async_api import async_playwright, expect

from app.main import create_app
from tests.servers import uvicorn_app
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS  # one browser set-up for the browser tests


@pytest.fixture
async def base(store, settings):
    async with uvicorn_app(create_app(settings, store=store, workers=0, maintenance=False, live=False)) as host:
        yield f"http://{host}"


async def test_docs_render_without_the_internet(base):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/test installs Debian's chromium with apt-get")
    here = urlsplit(base).netloc
    refused: list[str] = []
    problems: list[str] = []

    async def offline(route):
        if urlsplit(route.request.url).netloc == here:
            await route.continue_()
        else:
            refused.append(route.request.url)
            await route.abort("internetdisconnected")

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = await browser.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            await page.route("**/*", offline)
            await page.goto(base + "/docs")
            await expect(page.locator(".swagger-ui .info .title")).to_contain_text("Switchyard")
            submit = page.locator(".opblock-summary-path[data-path='/api/v1/jobs/submit']")
            await expect(submit).to_be_visible()
            await expect(page.locator("#operations-jobs-submitJob")).to_be_visible()
        finally:
            await browser.close()
    assert not refused, refused
    assert not problems, problems


async def test_redoc_is_not_offered(api):
    assert (await api.get("/redoc")).status_code == 404
