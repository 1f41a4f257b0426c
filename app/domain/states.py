"""The job and workflow state machines: the state enums, the terminal sets, and `MOVES`, the
transition table that says which moves exist and what each implies.

`app/store/lifecycle.py` performs these moves, one named, guarded primitive per move, with
`enqueue.py`, `steps.py` and, for the steps that wait for people, events and time,
`decisions.py` (`tests/test_domain_states.py` checks that no other module writes a job's
`status`, and that the diagram in `JobStatus`'s docstring is `diagram()`'s output).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Flag, StrEnum, auto


class JobStatus(StrEnum):
    """Lifecycle of a job.

    ```
    (new)      ──submit──────> pending | scheduled | queued
    pending    ──ready───────> queued       [fresh seq]
    scheduled  ──promote─────> queued       [fresh seq]
    queued     ──reseq───────> queued       [fresh seq]
    queued     ──claim───────> running      [lease taken, attempt charged]
    running    ──complete────> completed    [lease cleared, settle]
    running    ──backoff─────> scheduled    [lease cleared]
    running    ──fail────────> failed       [lease cleared, settle]
    running    ──release─────> queued       [fresh seq, lease cleared, attempt refunded]
    running    ──hold────────> queued       [fresh seq, lease cleared, attempt refunded]
    running    ──rescue──────> queued       [fresh seq, lease cleared]
    running    ──exhaust─────> failed       [lease cleared, settle]
    running    ──stop────────> cancelled    [lease cleared, settle]
    pending | scheduled | queued | awaiting ──cancel──────> cancelled [settle]
    pending    ──join────────> completed    [settle]
    pending    ──refuse──────> failed       [settle]
    failed | cancelled ──retry───────> queued [fresh seq, attempts reset]
    failed | cancelled ──reset───────> pending [attempts reset]
    pending    ──await───────> awaiting
    awaiting   ──decide──────> completed | failed [settle]
    pending    ──sleep───────> scheduled
    scheduled  ──wake────────> completed    [settle]
    ```
    """

    PENDING = "pending"
    """Waits for its dependencies. Left by `ready` (its last parent completed) or `cancel`;
    a map step by `join` or `refuse` instead of `ready` (app/store/mapsteps.py)."""
    SCHEDULED = "scheduled"
    """Waits for `run_at` (a delay, a retry back-off, or a sleep step's wake-up). Left by the
    promoter (a sleep step completes there: `wake`) or by cancel."""
    QUEUED = "queued"
    """Claimable now, ordered by (priority, seq). Left by a worker's claim or by cancel."""
    AWAITING = "awaiting"
    """A workflow step that waits for a person (an approval) or an event (a signal), holding
    no worker slot. Left by `decide` (an approver, the signal, or the timeout sweep in
    maintenance) or by cancel."""
    RUNNING = "running"
    """Leased by one worker (`lease_owner`, `lease_token`). Left only by that lease holder's
    guarded transitions, or by the rescuer once the lease has expired."""
    COMPLETED = "completed"
    """Terminal: the handler returned a result."""
    FAILED = "failed"
    """Terminal: a permanent error, or no attempts left. Kept as the dead letter; an operator
    (or a workflow retry) can move it back."""
    CANCELLED = "cancelled"
    """Terminal: cancelled by a user or because a dependency failed."""

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
WAITING = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.QUEUED, JobStatus.AWAITING})
"""Not started and not finished: a cancel moves these to cancelled at once."""
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class WorkflowStatus(StrEnum):
    """Lifecycle of a workflow: `running` until every step is terminal, then `completed`,
    `failed` (a step failed) or `cancelled` (a step was cancelled, none failed). A retry
    moves a failed or cancelled workflow back to `running`."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self is not WorkflowStatus.RUNNING


class Effect(Flag):
    """What a move implies besides the new status."""

    NONE = 0
    SEQ = auto()
    """The job takes a fresh seq from its engine and counts in the engine's `queued`."""
    LEASE_TAKEN = auto()
    """A lease owner, token and expiry are stamped."""
    CHARGED = auto()
    """The attempt counts against `max_attempts`."""
    LEASE_CLEARED = auto()
    """The lease fields are removed; the move is fenced by the lease token."""
    REFUNDED = auto()
    """The attempt that was charged is given back: the handler never ran, or was stopped."""
    SETTLE = auto()
    """A terminal move a workflow must settle (children, failure policy, counts)."""
    RESET = auto()
    """The attempt budget starts again."""


LABELS = {
    Effect.SEQ: "fresh seq",
    Effect.LEASE_TAKEN: "lease taken",
    Effect.CHARGED: "attempt charged",
    Effect.LEASE_CLEARED: "lease cleared",
    Effect.REFUNDED: "attempt refunded",
    Effect.SETTLE: "settle",
    Effect.RESET: "attempts reset",
}


@dataclass(frozen=True)
class Move:
    name: str
    sources: tuple[JobStatus, ...]  # empty: a new job
    target: JobStatus | tuple[JobStatus, ...]
    effects: Effect = Effect.NONE
    who: str = ""

    @property
    def targets(self) -> tuple[JobStatus, ...]:
        return self.target if isinstance(self.target, tuple) else (self.target,)


S = JobStatus
E = Effect
MOVES: dict[str, Move] = {
    m.name: m
    for m in (
        Move("submit", (), (S.PENDING, S.SCHEDULED, S.QUEUED), E.NONE, "a client; queued takes a seq like any enqueue"),
        Move("ready", (S.PENDING,), S.QUEUED, E.SEQ, "the workflow settle of its last parent"),
        Move("promote", (S.SCHEDULED,), S.QUEUED, E.SEQ, "maintenance, once run_at is due"),
        Move("reseq", (S.QUEUED,), S.QUEUED, E.SEQ, "maintenance: an orphan below its band's cursor"),
        Move("claim", (S.QUEUED,), S.RUNNING, E.LEASE_TAKEN | E.CHARGED, "a worker holding permits"),
        Move("complete", (S.RUNNING,), S.COMPLETED, E.LEASE_CLEARED | E.SETTLE, "the lease holder"),
        Move("backoff", (S.RUNNING,), S.SCHEDULED, E.LEASE_CLEARED, "the lease holder, attempts left"),
        Move("fail", (S.RUNNING,), S.FAILED, E.LEASE_CLEARED | E.SETTLE, "the lease holder"),
        Move("release", (S.RUNNING,), S.QUEUED, E.SEQ | E.LEASE_CLEARED | E.REFUNDED, "the lease holder, on shutdown"),
        Move(
            "hold",
            (S.RUNNING,),
            S.QUEUED,
            E.SEQ | E.LEASE_CLEARED | E.REFUNDED,
            "the lease holder, the provider pushed back (RateLimited): its engine or key is held",
        ),
        Move("rescue", (S.RUNNING,), S.QUEUED, E.SEQ | E.LEASE_CLEARED, "maintenance, the lease expired"),
        Move("exhaust", (S.RUNNING,), S.FAILED, E.LEASE_CLEARED | E.SETTLE, "maintenance, no attempts left"),
        Move("stop", (S.RUNNING,), S.CANCELLED, E.LEASE_CLEARED | E.SETTLE, "the lease holder, cancel requested"),
        Move(
            "cancel",
            (S.PENDING, S.SCHEDULED, S.QUEUED, S.AWAITING),
            S.CANCELLED,
            E.SETTLE,
            "a user, or a workflow's failure policy",
        ),
        Move("join", (S.PENDING,), S.COMPLETED, E.SETTLE, "a map step: its mapped children all completed, or none"),
        Move("refuse", (S.PENDING,), S.FAILED, E.SETTLE, "a map step whose parent's result cannot be mapped"),
        Move("retry", (S.FAILED, S.CANCELLED), S.QUEUED, E.SEQ | E.RESET, "an operator (the dead letter)"),
        Move("reset", (S.FAILED, S.CANCELLED), S.PENDING, E.RESET, "a workflow retry; ready follows at once"),
        # Steps that wait for people, events and time (app/store/decisions.py): their `ready`.
        Move("await", (S.PENDING,), S.AWAITING, E.NONE, "the settle of its last parent: an approval or a signal"),
        Move(
            "decide",
            (S.AWAITING,),
            (S.COMPLETED, S.FAILED),
            E.SETTLE,
            "an approver, the signal's sender, or maintenance once its timeout passed",
        ),
        Move("sleep", (S.PENDING,), S.SCHEDULED, E.NONE, "the settle of its last parent: a sleep step, run_at set"),
        Move("wake", (S.SCHEDULED,), S.COMPLETED, E.SETTLE, "the promoter, once a sleep step's run_at is due"),
    )
}
"""Every move of a job. A rescue whose handler never started also refunds the attempt."""


def allowed(move: str, source: JobStatus) -> bool:
    return source in MOVES[move].sources


def diagram() -> str:
    """The table as the diagram in `JobStatus`'s docstring."""
    lines = []
    for m in MOVES.values():
        src = " | ".join(s.value for s in m.sources) if m.sources else "(new)"
        dst = " | ".join(t.value for t in m.targets)
        arrow = f"──{m.name}" + "─" * max(1, 12 - len(m.name)) + ">"
        labels = [label for flag, label in LABELS.items() if flag in m.effects]
        note = f"[{', '.join(labels)}]" if labels else ""
        left = f"{src:<10} {arrow} {dst}" if len(src) <= 10 else f"{src} {arrow} {dst}"
        lines.append(f"{left:<39} {note}".rstrip() if note else left)
    return "\n".join(lines)
