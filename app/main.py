"""Wires the service together: the FastAPI app, its store, and (optionally) an in-process
worker pool and maintenance loops, all started and stopped by the app's lifespan."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.routing import APIRoute

from . import registry
from .api import (
    admin,
    approvals,
    batch,
    body,
    budgets,
    dashboard,
    docs,
    errors,
    health,
    jobs,
    keys,
    notifications,
    queues,
    schedules,
    webhooks,
    workflows,
)
from .api import (
    live as live_api,
)
from .api import (
    usage as usage_api,
)
from .api import (
    workers as workers_api,
)
from .api.schemas import ERROR_RESPONSES, error_responses
from .domain import redact
from .notifications.runtime import Live
from .settings import Settings
from .store import Store, connect
from .worker.maintenance import Maintenance
from .worker.processor import JobProcessor


def create_app(
    settings: Settings,
    *,
    url: str | None = None,
    store: Store | None = None,
    workers: int = 0,
    maintenance: bool = True,
    live: bool = True,
    supervisor=None,
) -> FastAPI:
    """`url` (or a ready `store`) names the database; `workers` in-process job slots;
    `supervisor` (app/worker/supervisor.py) runs job slots in worker processes instead;
    `live` runs the event relay, the notifier and the mailer here (the hub always runs)."""
    registry.load(settings.handler_modules())
    redact.configure(settings.secret_param_names, settings.secret_allow_names)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        own_store = store is None
        st = store or connect(url or settings.mongodb_url, settings)
        await st.start()
        app.state.store = st
        app.state.started = time.monotonic()
        maint = Maintenance(st, settings) if maintenance else None
        proc = JobProcessor(st, settings, concurrency=workers, kind="serve") if workers > 0 else None
        if maint:
            await maint.start()
        if proc:
            await proc.start()
        if supervisor:
            await supervisor.start(st)
        app.state.processor = proc
        app.state.live = lv = Live(st, settings, background=live and settings.run_relay)
        app.state.hub = lv.hub
        app.state.email_status = lv.email_status
        await lv.start()
        app.state.ready = True  # /ready: indexes ensured, loops started
        try:
            yield
        finally:
            await lv.stop()
            app.state.ready = False
            if supervisor:
                await supervisor.stop()
            if proc:
                await proc.stop()
            if maint:
                await maint.stop()
            if own_store:
                await st.close()

    # Error responses are listed per router (app/api/schemas.py), not here: the
    # token-free operational endpoints answer no 401 or 403.
    app = FastAPI(
        title="Switchyard",
        version="0.1.0",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        description="MongoDB-backed job and workflow orchestrator",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.ready = False
    errors.install(app)
    app.add_middleware(body.BodyGuard, max_bytes=settings.max_body_bytes)
    if settings.allowed_origins():
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins(),
            allow_credentials=False,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.include_router(jobs.submit_router, responses=ERROR_RESPONSES)  # first: the hottest path
    app.include_router(health.router, responses=error_responses(400, 404, 413, 422, 429))
    app.include_router(docs.router)  # GET /docs: Swagger UI from the package, no CDN
    app.include_router(keys.router, responses=ERROR_RESPONSES)
    app.include_router(live_api.router, responses=ERROR_RESPONSES)  # before workflows and jobs: /jobs/{id}/events
    app.include_router(notifications.router, responses=ERROR_RESPONSES)  # before jobs: /jobs/notifications
    app.include_router(workflows.router, responses=ERROR_RESPONSES)
    app.include_router(approvals.router, responses=ERROR_RESPONSES)  # a workflow's approvals and signals
    app.include_router(approvals.inbox, responses=ERROR_RESPONSES)
    app.include_router(workers_api.router, responses=ERROR_RESPONSES)  # before jobs, as queues
    app.include_router(schedules.router, responses=ERROR_RESPONSES)  # before jobs, as queues
    app.include_router(
        queues.router, responses=ERROR_RESPONSES
    )  # before jobs: /jobs/queue/status must not match /jobs/{id}/status
    app.include_router(admin.router, responses=ERROR_RESPONSES)  # before jobs: /jobs/dead-letter, /jobs/retry
    app.include_router(usage_api.router, responses=ERROR_RESPONSES)
    app.include_router(budgets.router, responses=ERROR_RESPONSES)
    app.include_router(webhooks.router, responses=ERROR_RESPONSES)
    app.include_router(batch.router, responses=ERROR_RESPONSES)  # before jobs: /jobs/submit/batch
    app.include_router(jobs.router, responses=ERROR_RESPONSES)
    app.include_router(dashboard.router)  # GET / and /static/...: the browser dashboard
    app.openapi = lambda: _openapi(app)
    return app


# One-word route functions are verbs on their router's resource: `submit` under "jobs" is
# `submitJob`, `status` under "workflows" is `getWorkflowStatus`.
RESOURCES = {"jobs": "Job", "dead letter": "Job", "queues": "Queue", "schedules": "Schedule", "workflows": "Workflow"}
NOUN_VERBS = {"status": "get{}Status", "history": "get{}History", "limits": "set{}Limits"}


def operation_id(route: APIRoute) -> str:
    """The OpenAPI `operationId`: camelCase of the route function's name (tests/test_openapi.py
    checks they are unique)."""
    name = route.name
    resource = RESOURCES.get(route.tags[-1]) if route.tags else None
    if "_" not in name and resource:
        return NOUN_VERBS.get(name, name + "{}").format(resource)
    first, *rest = name.split("_")
    return first + "".join(w.capitalize() for w in rest)


def _openapi(app: FastAPI) -> dict:
    """The generated document, plus how to authenticate: every `/api/` operation takes a
    bearer token (routes check it themselves, so FastAPI cannot say so on its own)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "SWITCHYARD_ADMIN_TOKEN, an API key (`sy_<id>_<secret>`), or a single sign-on JWT",
            }
        }
        for path, operations in schema["paths"].items():
            if path.startswith("/api/"):
                for op in operations.values():
                    op["security"] = [{"bearer": []}]
    return app.openapi_schema
