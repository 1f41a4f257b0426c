"""Structured logging: JSON lines through structlog, level from settings. Everything logs
through `get_logger`; lines about a job carry job_id, workflow_id, engine and attempt.

Two ways a line gets the job fields: `job_logger(job)` binds them to a logger, and
`job_fields(job)` is bound as context variables around a handler's task, so whatever the
handler logs (with structlog or with the standard `logging` module) carries them too.
Standard-library records (uvicorn, httpx, handlers' own loggers) are rendered as the same
JSON lines, filtered by the same level.
"""

from __future__ import annotations

import logging
import sys
from typing import IO

import structlog


def _redact(_, __, event: dict) -> dict:
    """Secrets (app/domain/redact.py) never reach a log line: run last before rendering, so
    the message, every field and a formatted traceback all go through it."""
    from .domain.redact import redact

    return redact(event)


def configure(level: str = "INFO", json: bool = True, stream: IO[str] | None = None) -> None:
    """(Re)configure logging for this process; may be called again with another level or
    stream (the last call wins)."""
    lvl = getattr(logging, level.upper(), logging.INFO)
    out = stream or sys.stderr
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, _redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _redact,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(lvl)


def get_logger(name: str = "switchyard", **bound):
    return structlog.get_logger(name).bind(**bound)


def job_fields(job: dict) -> dict:
    """The fields every line about `job` carries."""
    return {
        "job_id": job["_id"],
        "workflow_id": job.get("workflow_id"),
        "engine": job.get("engine"),
        "attempt": job.get("attempt"),
    }


def job_logger(job: dict, **extra):
    return get_logger("switchyard.job", **job_fields(job), **extra)


def job_context(job: dict, **extra):
    """A context manager binding the job's fields as context variables: tasks created inside
    it (a handler's task) log with them."""
    return structlog.contextvars.bound_contextvars(**job_fields(job), **extra)
