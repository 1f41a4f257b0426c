"""Switchyard: a MongoDB-backed job and workflow orchestrator.

The public handler API lives here: `from app import handler, JobContext, Retry, PermanentError`.
"""

from app.context import JobContext, PermanentError, Retry
from app.registry import handler
from app.settings import get_settings

__all__ = ["handler", "JobContext", "Retry", "PermanentError", "get_settings"]
