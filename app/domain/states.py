"""The job state machine. Every state documents who moves a job out of it.

The store (`app/store/jobs.py`) is the only code that performs these moves, one named,
guarded function per arrow.
"""

from enum import StrEnum


class JobStatus(StrEnum):
    """Lifecycle of a job.

    ```
    pending ──(last dependency completed: workflows)──> queued
    scheduled ──(run_at reached: promoter)──> queued
    queued ──(claim: a worker)──> running
    running ──(handler returned)──> completed
    running ──(retryable error, attempts left)──> scheduled
    running ──(lease expired: rescuer, attempts left)──> queued
    running ──(permanent error / attempts exhausted)──> failed
    running ──(graceful shutdown: release)──> queued   (attempt not counted)
    pending | scheduled | queued ──(cancel)──> cancelled
    running ──(cancel requested, handler stopped)──> cancelled
    ```
    """

    PENDING = "pending"
    """Waits for its dependencies. Left by the workflow engine (queued) or by cancel."""
    SCHEDULED = "scheduled"
    """Waits for `run_at` (a delay or a retry back-off). Left by the promoter or by cancel."""
    QUEUED = "queued"
    """Claimable now, ordered by (priority, seq). Left by a worker's claim or by cancel."""
    RUNNING = "running"
    """Leased by one worker (`lease_owner`, `lease_token`). Left only by that lease holder's
    guarded transitions, or by the rescuer once the lease has expired."""
    COMPLETED = "completed"
    """Terminal: the handler returned a result."""
    FAILED = "failed"
    """Terminal: a permanent error, or no attempts left. Kept as the dead letter."""
    CANCELLED = "cancelled"
    """Terminal: cancelled by a user or because a dependency failed."""

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
