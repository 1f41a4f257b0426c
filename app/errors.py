"""The one exception hierarchy. `app/api/errors.py` maps it to HTTP in one place."""

from __future__ import annotations

from typing import Any


class SwitchyardError(Exception):
    """Base of every error we raise on purpose. `status` is the HTTP status it maps to."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """The error's body; `errors` (every problem, as a 422 from the schema lists them)
        goes next to the first one's `field` rather than into `details`."""
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        details = {k: v for k, v in self.details.items() if k != "errors"}
        if details:
            body["details"] = details
        if "errors" in self.details:
            body["errors"] = self.details["errors"]
        return body


class NotFound(SwitchyardError):
    status = 404
    code = "not_found"


class ValidationFailed(SwitchyardError):
    status = 422
    code = "validation_error"


class Conflict(SwitchyardError):
    status = 409
    code = "conflict"


class Unauthorized(SwitchyardError):
    status = 401
    code = "unauthorized"


class LeaseLost(SwitchyardError):
    """A guarded transition found the job no longer in the state or lease it expected.
    The caller lost its lease (rescued, cancelled, or taken by another worker) and must not
    write anything else for this job."""

    status = 409
    code = "lease_lost"


class InvalidTransition(SwitchyardError):
    """The job is not in a state the requested transition starts from."""

    status = 409
    code = "invalid_transition"


class Forbidden(SwitchyardError):
    """The caller is known but its role does not allow this action."""

    status = 403
    code = "forbidden"


class RateLimited(SwitchyardError):
    """Too many requests; `retry_after` seconds until the next one can succeed."""

    status = 429
    code = "rate_limited"
