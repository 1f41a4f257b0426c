"""Enqueue Switchyard jobs from Python without HTTP (docs/producer.md in Switchyard's
repository): `AsyncProducer` on your `AsyncMongoClient`, inside your transaction if you
like, and `Producer`, the same calls blocking. The models are Switchyard's own."""

from switchyard_producer._core.domain.models import JobSpec
from switchyard_producer._core.domain.workflow import WorkflowSpec
from switchyard_producer._core.errors import RateLimited, SwitchyardError, ValidationFailed
from switchyard_producer._core.producer import AsyncProducer, Producer

__all__ = ["AsyncProducer", "Producer", "JobSpec", "WorkflowSpec", "SwitchyardError", "ValidationFailed", "RateLimited"]
