"""Switchyard: a MongoDB-backed job and workflow orchestrator.

The public handler API lives here: `from app import handler, JobContext, Retry, PermanentError,
RateLimited`.
"""

from app.context import JobContext, PermanentError, RateLimited, Retry
from app.registry import handler
from app.settings import get_settings

__all__ = ["handler", "JobContext", "Retry", "PermanentError", "RateLimited", "get_settings"]
