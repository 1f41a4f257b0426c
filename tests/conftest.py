"""Shared fixtures: one real database server per session (SecantusDB, or `MONGODB_URL`),
a fresh database per test, a store, an API client, and job factories."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from app import embedded, registry
from app.settings import Settings
from app.store import connect
from tests.factories import JobFactory

TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
def db_url():
    if os.environ.get("MONGODB_URL"):
        yield os.environ["MONGODB_URL"]
        return
    server = embedded.spawn(":memory:")
    yield server.url
    server.stop()


def make_settings(**overrides) -> Settings:
    base = dict(
        admin_token=TOKEN,
        lease_seconds=2.0,
        poll_interval_seconds=0.5,
        promote_interval_seconds=0.05,
        cancel_grace_seconds=0.5,
        shutdown_grace_seconds=2.0,
        retry_delay_seconds=0.05,
        retry_max_delay_seconds=1.0,
        log_level="WARNING",
        handlers="tests.support_handlers",
    )
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
async def store(db_url, settings):
    registry.load(settings.handler_modules())
    name = f"t_{uuid.uuid4().hex[:12]}"
    st = connect(db_url, settings, db_name=name)
    await st.start()
    yield st
    await st.client.drop_database(name)
    await st.close()


@pytest.fixture
def jobs(store) -> JobFactory:
    return JobFactory(store)


@pytest.fixture
async def api(store, settings):
    """An HTTP client on the app, sharing the test's store; no in-process workers."""
    from app.main import create_app

    app = create_app(settings, store=store, workers=0, maintenance=False, live=False)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as client:
            yield client


@pytest.fixture
async def worker(store, settings):
    """Maintenance plus a JobProcessor with 50 slots in this process, on the test's store."""
    from app.worker.maintenance import Maintenance
    from app.worker.processor import JobProcessor

    maint = Maintenance(store, settings)
    proc = JobProcessor(store, settings, concurrency=50)
    await maint.start()
    await proc.start()
    yield proc
    await proc.stop(grace=1)
    await maint.stop()


@pytest.fixture
async def live(store, settings):
    """This process's relay, notifier and mailer (and hub) on the test's store."""
    from app.notifications.runtime import Live

    lv = Live(store, settings, lease_seconds=2.0)
    await lv.start()
    yield lv
    await lv.stop()


@pytest.fixture
async def server(store, settings):
    """The whole app (relay, notifier, hub, an in-process worker) on a real uvicorn port."""
    await store.engines.set_limit("testing", 20)
    from app.main import create_app
    from tests.servers import uvicorn_app

    async with uvicorn_app(create_app(settings, store=store, workers=20)) as host:
        yield host
