"""Every Prometheus metric of Switchyard (prometheus-client), and the `/metrics` exposition.

Counters and histograms live in this process's default registry, so each process reports
what it did itself: the API process (`serve`, with its in-process workers) on `GET /metrics`,
a separate `switchyard worker` on `--metrics-port` (`serve_worker_metrics`). Prometheus
sums them across processes.

Queue gauges are not kept in memory: they are read from the `engines` documents at scrape
time (`render(engines)`), so every API instance reports the same, database-wide values.

Who increments what:
- `JOBS_CREATED`: the API on submit and on workflow creation / add-steps (`jobs_created`);
- `JOBS_FINISHED`, `JOB_DURATION`, `RETRIES`: `app/worker/outcome.py` after a transition
  was written (`job_outcome`); `JOBS_FINISHED{status="cancelled"}` also the API when it
  cancels a waiting job at once;
- `RESCUES`, and `JOBS_FINISHED{status="failed"}` for a rescued job out of attempts: the
  rescuer in `app/worker/maintenance.py` (`job_rescued`);
- `CLAIM_LATENCY`: the fetch loop in `app/worker/processor.py`, one claim round trip;
- `NOTIFICATIONS_SENT`, `EMAIL_FAILURES`: the notification channels;
- `WEBHOOK_ATTEMPTS`, `WEBHOOK_ATTEMPT_SECONDS`, `WEBHOOK_DELIVERIES_CREATED`: app/notifications/webhooks.py
  (the notifier writes deliveries, a sender records each attempt);
- `USAGE_TOKENS`, `USAGE_COST`: the worker that wrote an attempt's usage (`usage_recorded`,
  from `app/worker/processor.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from .domain import states

__all__ = [
    "CONTENT_TYPE_LATEST",
    "JOBS_CREATED",
    "JOBS_FINISHED",
    "JOB_DURATION",
    "CLAIM_LATENCY",
    "RETRIES",
    "RESCUES",
    "COUNTER_CORRECTIONS",
    "NOTIFICATIONS_SENT",
    "EMAIL_FAILURES",
    "WEBHOOK_ATTEMPTS",
    "WEBHOOK_ATTEMPT_SECONDS",
    "WEBHOOK_DELIVERIES_CREATED",
    "USAGE_TOKENS",
    "USAGE_COST",
    "usage_recorded",
    "jobs_created",
    "job_outcome",
    "job_rescued",
    "render",
    "serve_worker_metrics",
]

TERMINAL = tuple(s.value for s in states.TERMINAL)
disable_created_metrics()  # no `*_created` series: start times add nothing a scrape needs

JOBS_CREATED = Counter(
    "switchyard_jobs_created_total", "Jobs created (submitted, or added as workflow steps)", ["engine"]
)
JOBS_FINISHED = Counter("switchyard_jobs_finished_total", "Jobs that reached a terminal status", ["engine", "status"])
JOB_DURATION = Histogram(
    "switchyard_job_duration_seconds",
    "Handler run time of the attempt that finished a job on a worker",
    ["engine"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
CLAIM_LATENCY = Histogram(
    "switchyard_claim_latency_seconds",
    "One claim round trip of a worker's fetch loop (window read, claim, read-back)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RETRIES = Counter("switchyard_retries_total", "Failed attempts scheduled for another try", ["engine"])
COUNTER_CORRECTIONS = Counter(
    "switchyard_counter_corrections_total",
    "Engine counters found drifted from the jobs and corrected by the reconciler",
    ["engine", "counter"],
)
RESCUES = Counter("switchyard_rescues_total", "Running jobs taken back from a worker whose lease expired")
NOTIFICATIONS_SENT = Counter("switchyard_notifications_sent_total", "Notifications delivered, per channel", ["channel"])
EMAIL_FAILURES = Counter("switchyard_email_failures_total", "Emails that could not be sent")
WEBHOOK_DELIVERIES_CREATED = Counter(
    "switchyard_webhook_deliveries_created_total", "Webhook deliveries written to the outbox"
)
WEBHOOK_ATTEMPTS = Counter(
    "switchyard_webhook_attempts_total",
    "Webhook delivery attempts, by outcome: delivered, retry (failed, tried again later) or dead (out of tries)",
    ["outcome"],
)
WEBHOOK_ATTEMPT_SECONDS = Histogram(
    "switchyard_webhook_attempt_seconds",
    "One webhook delivery attempt, address check and request included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
USAGE_TOKENS = Counter(
    "switchyard_usage_tokens_total", "Tokens handlers reported (ctx.usage), in or out", ["engine", "direction"]
)
USAGE_COST = Counter("switchyard_usage_cost_total", "Cost handlers reported (ctx.usage)", ["engine"])


# --- recording helpers (one call at each place a transition happens) ---------------------
def jobs_created(engines: Iterable[str]) -> None:
    """One count per created job; pass the engine of each job."""
    for engine in engines:
        JOBS_CREATED.labels(engine=engine).inc()


def job_outcome(engine: str, status: str, execution_ms: int | None) -> None:
    """A worker wrote `status` for one attempt of a job of `engine`."""
    if status == "scheduled":
        RETRIES.labels(engine=engine).inc()
    elif status in TERMINAL:
        JOBS_FINISHED.labels(engine=engine, status=status).inc()
        if execution_ms is not None:
            JOB_DURATION.labels(engine=engine).observe(execution_ms / 1000)


def usage_recorded(engine: str, values: dict[str, float]) -> None:
    """One attempt's usage, as written to the database."""
    for direction in ("in", "out"):
        if values.get(f"tokens_{direction}"):
            USAGE_TOKENS.labels(engine=engine, direction=direction).inc(values[f"tokens_{direction}"])
    if values.get("cost"):
        USAGE_COST.labels(engine=engine).inc(values["cost"])


def job_rescued(engine: str, new_status: str) -> None:
    """The rescuer took a job back; `new_status` is where it went (queued, or failed when
    it had no attempts left)."""
    RESCUES.inc()
    if new_status in TERMINAL:
        JOBS_FINISHED.labels(engine=engine, status=new_status).inc()


# --- exposition ------------------------------------------------------------------------
class _QueueSnapshot:
    """Queue gauges from one read of the `engines` collection (a one-scrape collector)."""

    def __init__(self, engines: list[dict]) -> None:
        self.engines = engines

    def collect(self):
        depth = GaugeMetricFamily(
            "switchyard_queue_depth", "Jobs queued (claimable now), per engine", labels=["engine"]
        )
        running = GaugeMetricFamily(
            "switchyard_jobs_running", "Jobs running (permits held), per engine", labels=["engine"]
        )
        limit = GaugeMetricFamily("switchyard_queue_limit", "max_concurrent_jobs, per engine", labels=["engine"])
        paused = GaugeMetricFamily("switchyard_queue_paused", "1 when the engine's queue is paused", labels=["engine"])
        for e in self.engines:
            name = [e["_id"]]
            depth.add_metric(name, max(e.get("queued", 0), 0))
            running.add_metric(name, e.get("running", 0))
            limit.add_metric(name, e.get("limit", 0))
            paused.add_metric(name, 1 if e.get("paused") else 0)
        return [depth, running, limit, paused]


def render(engines: list[dict] | None = None) -> bytes:
    """The Prometheus text exposition: this process's counters and histograms (and the
    client's process metrics), plus the queue gauges of `engines` when given."""
    out = generate_latest(REGISTRY)
    if engines is not None:
        snapshot = CollectorRegistry(auto_describe=False)
        snapshot.register(_QueueSnapshot(engines))
        out += generate_latest(snapshot)
    return out


def serve_worker_metrics(port: int, addr: str = "0.0.0.0") -> None:
    """Expose this process's registry on `http://addr:port/metrics` from a daemon thread
    (a `switchyard worker` has no HTTP server of its own)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=addr)
