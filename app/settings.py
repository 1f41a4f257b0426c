"""The one validated `Settings` object, fed by the environment (and by CLI flags, which the
CLI writes into it). Nothing else reads environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .domain.limitkeys import parse_key_spec
from .domain.rates import parse_rate

# Seed 001's `default_queues`. An engine not named here starts with `general`'s limit.
DEFAULT_QUEUE_LIMITS: dict[str, int] = {
    "text_intelligence": 3,
    "image_generation": 2,
    "audio_generation": 2,
    "video_pipeline": 1,
    "creative_assistant": 3,
    "social_media_planner": 2,
    "discovery_analytics": 2,
    "general": 2,
}


def _env(name: str, *aliases: str) -> AliasChoices:
    return AliasChoices(name, *aliases)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore", populate_by_name=True)

    # database
    mongodb_url: str | None = Field(None, validation_alias=_env("MONGODB_URL"))
    mongodb_db: str = Field("switchyard", validation_alias=_env("MONGODB_DB"), pattern=r"^[A-Za-z0-9_-]{1,60}$")
    data_dir: Path = Path("./.switchyard")
    write_concern: str = Field(
        "majority",
        pattern=r"^(majority|[1-9])$",
        description=(
            "`w` of every write (always with j: true). `majority` survives an election on a replica set; a number "
            "lowers it (writes acknowledged by fewer members can be rolled back). On the embedded single-node "
            "server the majority is that node"
        ),
    )
    db_timeout_ms: int = Field(
        30_000,
        ge=1_000,
        le=600_000,
        description=(
            "client-side time limit (timeoutMS) of each database operation, server selection included: long "
            "enough to ride out a primary election (about 12 s in MongoDB's manual)"
        ),
    )

    # security
    admin_token: str | None = None
    jwt_secret: str | None = Field(None, description="HS256 key for JWT bearer tokens (single sign-on)")
    jwt_public_key: str | None = Field(None, description="RS256 public key (PEM) for JWT bearer tokens")
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    rate_limit_per_second: float = Field(
        50.0, gt=0, description="job creations per tenant per second, across API processes"
    )
    rate_limit_burst: float = Field(200.0, ge=1)
    tenant_max_queued: int = Field(100_000, ge=1, description="queued jobs a tenant may have at once")
    secret_param_names: str = Field(
        "api_key,apikey,password,passwd,secret,token,access_token,refresh_token,authorization,"
        "private_key,client_secret",
        description="parameter names redacted outside handlers",
    )
    cors_origins: str = Field("", description="origins allowed by CORS and the WebSocket Origin check, comma-separated")
    ws_max_messages_per_second: float = Field(20.0, gt=0)

    # email
    smtp_url: str | None = Field(None, validation_alias=_env("SMTP_URL"))
    email_from: str = "switchyard@localhost"
    alert_email: str | None = Field(None, description="where alerts go for users who set no address of their own")
    smtp_timeout_seconds: float = Field(10.0, gt=0, le=300)
    mail_max_attempts: int = Field(30, ge=1, le=1000)
    mail_retry_base_seconds: float = Field(2.0, gt=0)
    mail_retry_max_seconds: float = Field(300.0, gt=0)

    # events and notifications
    event_retention_seconds: int = Field(7 * 24 * 3600, ge=60)
    notify_types: str = Field(
        "job.failed,job.cancelled,workflow.completed,workflow.failed",
        description="event types stored as notifications, comma-separated",
    )
    email_types: str = Field("job.failed,workflow.failed", description="event types that send email by default")
    run_relay: bool = Field(True, description="this serve process may run the event relay, notifier and mailer")
    outbox_check_seconds: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="the longest the mailer and the webhook sender sleep between two looks at their outbox; they "
        "wake sooner for the next due item and for what this process adds",
    )
    ws_queue_max: int = Field(1000, ge=10, le=100_000, description="undelivered events before a client is dropped")

    # leases and the worker loop
    lease_seconds: float = Field(30.0, gt=0.2, le=3600)
    poll_interval_seconds: float = Field(2.0, gt=0, le=60)
    promote_interval_seconds: float = Field(
        0.25,
        gt=0,
        le=60,
        description="the shortest gap between two due passes (promote, wait timeouts, cron ticks); their cadence "
        "where change streams are unavailable",
    )
    safety_interval_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="how often maintenance's safety nets run (orphaned queued jobs, unsettled steps, stalled "
        "workflows), and the longest the due pass and the rescuer sleep",
    )
    claim_batch: int = Field(64, ge=1, le=1000)
    cancel_grace_seconds: float = Field(10.0, ge=0, le=3600)
    shutdown_grace_seconds: float = Field(30.0, ge=0, le=3600)
    quarantine_suspects: bool = Field(
        True,
        description="run an attempt whose previous worker died or stalled "
        "in a child process (app/worker/quarantine.py)",
    )

    # default retry policy (seed 001: 3 retries, 60 s base, exponential, capped at 1 h)
    retry_max_retries: int = Field(3, ge=0, le=100)
    retry_delay_seconds: float = Field(60.0, ge=0)
    retry_max_delay_seconds: float = Field(3600.0, ge=0)

    # queues
    queue_limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_QUEUE_LIMITS))

    # workflows
    workflow_max_steps: int = Field(10_000, ge=1, le=100_000)
    batch_max_jobs: int = Field(1000, ge=1, le=100_000, description="jobs one POST /jobs/submit/batch may carry")

    # retention (docs/retention.md): finished jobs and workflows are deleted this long after
    # they finished; failed ones are the dead letter and are kept longer
    retention_completed_seconds: int = Field(7 * 86_400, ge=0, description="completed and cancelled jobs and workflows")
    retention_failed_seconds: int = Field(30 * 86_400, ge=0, description="failed jobs and workflows (the dead letter)")
    reconcile_interval_seconds: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description=(
            "how often maintenance re-derives the engines' counters from the jobs; on SecantusDB each pass counts every "
            "queued job"
        ),
    )
    retention_interval_seconds: float = Field(
        60.0, gt=0, le=86_400, description="how often each process runs the cleaner"
    )

    # cron schedules (app/worker/scheduler.py)
    schedule_max_catchup: int = Field(100, ge=1, le=100_000, description="most missed ticks a catch_up schedule runs")

    # handlers
    handlers: str = Field("", description="extra handler modules, comma-separated")
    http_allowlist: str = Field("", description="hosts or CIDRs the http_request handler may reach even if private")

    # API
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    public_url: str = "http://127.0.0.1:8000"
    log_level: str = Field("INFO", pattern=r"(?i)^(debug|info|warning|error|critical)$")
    log_json: bool = True

    # monitoring: a `switchyard worker` serves its own /metrics here when set (`serve` has /metrics)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_addr: str = "0.0.0.0"

    # live streams (app/api/stream_guard.py)
    stream_recheck_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description=(
            "how often each API process re-reads the API keys of its open WebSocket and SSE streams (one query for all) "
            "and closes those of revoked keys with 4401; a JWT's streams close at its exp"
        ),
    )
    # slow clients (app/http_limits.py) and secrets (app/domain/redact.py)
    http_header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description=(
            "the request line and headers must arrive within this many seconds of the connection opening (or of the "
            "request's first byte on a kept-alive connection), however slowly they trickle; else 408 and close"
        ),
    )
    http_body_timeout_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description=(
            "a request's whole body must arrive within this many seconds of its headers; else the connection is closed"
        ),
    )
    http_max_connections: int = Field(
        1000,
        ge=2,
        le=1_000_000,
        description=(
            "open connections (HTTP, SSE and WebSocket) the API server holds; a request on one beyond gets 503"
        ),
    )
    secret_allow_names: str = Field(
        "dedupe_key,idempotency_key,cache_key,sort_key,partition_key,primary_key,foreign_key",
        description=("key names never redacted, though they look secret, comma-separated (compared without case)"),
    )
    # limits on schedules per tenant (app/admission.py); the bootstrap admin is not limited
    tenant_max_schedules: int = Field(100, ge=1, description="schedules a tenant may have at once")
    schedule_min_interval_seconds: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description=(
            "shortest gap allowed between two ticks of a tenant's schedule; a cron that fires closer is refused"
        ),
    )

    # the built-in `llm.chat` handler (handlers/llm.py, docs/llm.md): an OpenAI-compatible
    # chat-completions endpoint. The settings' base URL is trusted; a job's own `base_url` goes
    # through http_request's address check (SWITCHYARD_HTTP_ALLOWLIST admits private hosts).
    llm_base_url: str = Field(
        "https://api.openai.com/v1",
        pattern=r"^https?://",
        description="base URL of the chat-completions API (`{base}/chat/completions`): OpenAI, vLLM, Ollama, llama.cpp",
    )
    llm_api_key: str | None = Field(None, description="bearer key sent to `llm_base_url`; a job's `api_key` wins")
    llm_model: str = Field("gpt-4o-mini", min_length=1, description="model a job without `model` asks for")
    llm_prices: dict[str, dict[Literal["input", "output"], Annotated[float, Field(ge=0)]]] = Field(
        default_factory=dict,
        description=(
            'JSON: model -> {"input": USD per 1M prompt tokens, "output": USD per 1M completion tokens}; '
            "an unpriced model costs 0"
        ),
    )

    # engines' rate limits (docs/limits.md, "Rate limits"): an engine's default, applied when
    # its document is created, like `queue_limits`; REST changes it later
    queue_rates: dict[str, str] = Field(
        default_factory=dict,
        description='JSON: engine -> starts per period, `N/s`, `N/min` or `N/h` (e.g. {"llm": "60/min"})',
    )

    @field_validator("queue_rates")
    @classmethod
    def _rates_parse(cls, v: dict[str, str]) -> dict[str, str]:
        for engine, spec in v.items():
            try:
                parse_rate(spec)
            except ValueError as exc:
                raise ValueError(f"queue_rates[{engine[:40]!r}]: {exc}") from None
        return v

    # engines' per-key limits (docs/limits.md, "Per-key limits"), applied like `queue_rates`
    queue_keys: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='JSON: engine -> {key, key_rate, key_burst, key_concurrency} (e.g. {"image": {"key": '
        '"params.account", "key_rate": "50/min"}})',
    )

    @field_validator("queue_keys")
    @classmethod
    def _keys_parse(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for engine, spec in v.items():
            where = f"queue_keys[{engine[:40]!r}]"
            if not isinstance(spec, dict) or "key" not in spec:
                raise ValueError(f"{where}: must be an object with a key")
            if unknown := set(spec) - {"key", "key_rate", "key_burst", "key_concurrency"}:
                raise ValueError(f"{where}: unknown field {sorted(unknown)[0][:40]!r}")
            try:
                parse_key_spec(spec["key"])
                if spec.get("key_rate") is not None:
                    parse_rate(spec["key_rate"])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            for field in ("key_burst", "key_concurrency"):
                n = spec.get(field)
                if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 100_000):
                    raise ValueError(f"{where}.{field}: must be a whole number from 1 to 100000")
        return v

    # webhooks (app/notifications/webhooks.py, docs/webhooks.md); their addresses follow
    # `http_allowlist`, as the http_request handler's do
    webhook_max_attempts: int = Field(12, ge=1, le=1000, description="tries of one webhook delivery before it is dead")
    webhook_retry_base_seconds: float = Field(
        10.0, gt=0, description="first back-off of a failed delivery; it doubles with each try"
    )
    webhook_retry_max_seconds: float = Field(3600.0, gt=0, description="the longest back-off between two tries")
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="one delivery attempt, connecting included; a slower answer is a failure"
    )
    webhook_concurrency: int = Field(16, ge=1, le=1000, description="deliveries one process sends at once")
    webhook_max_per_tenant: int = Field(20, ge=1, le=10_000, description="webhooks a tenant may register")

    @property
    def lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3

    def default_limit(self, engine: str) -> int:
        limits = {**DEFAULT_QUEUE_LIMITS, **self.queue_limits}
        return limits.get(engine, limits["general"])

    def allowed_origins(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    def handler_modules(self) -> list[str]:
        return [m.strip() for m in self.handlers.split(",") if m.strip()]

    # map steps (docs/map-steps.md): the most items one map step expands into; a longer list
    # fails the step. The workflow's own cap (`workflow_max_steps`) bounds it too.
    map_max_items: int = Field(1000, ge=0, le=100_000, description="most children one map step makes")

    def map_cap(self) -> int:
        return min(self.map_max_items, self.workflow_max_steps)


@lru_cache
def get_settings() -> Settings:
    return Settings()
