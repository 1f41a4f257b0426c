"""Structured logging: JSON lines through structlog, level from settings. Everything logs
through `get_logger`; lines about a job carry job_id, workflow_id, engine and attempt."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "INFO", json: bool = True) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "switchyard", **bound):
    return structlog.get_logger(name).bind(**bound)


def job_logger(job: dict, **extra):
    return get_logger("switchyard.job", job_id=job["_id"], workflow_id=job.get("workflow_id"),
                      engine=job.get("engine"), attempt=job.get("attempt"), **extra)
