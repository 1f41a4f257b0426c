"""Switchyard: a MongoDB-backed job and workflow orchestrator.

The public handler API lives here: `from app import handler, JobContext, Retry, PermanentError,
RateLimited, StepsRejected`.
"""

from .context import JobContext, PermanentError, RateLimited, Retry, StepsRejected
from .registry import handler
from .settings import get_settings

__all__ = ["handler", "JobContext", "Retry", "PermanentError", "RateLimited", "StepsRejected", "get_settings"]
