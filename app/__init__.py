"""Switchyard: a MongoDB-backed job and workflow orchestrator.

The public handler API lives here: `from app import handler, JobContext, Retry, PermanentError,
RateLimited, StepsRejected`.
"""

from app.context import JobContext, PermanentError, RateLimited, Retry, StepsRejected
from app.registry import handler
from app.settings import get_settings

__all__ = ["handler", "JobContext", "Retry", "PermanentError", "RateLimited", "StepsRejected", "get_settings"]
