"""Events: what a change to a job or a workflow document means, as pure functions.

An event is derived from one change of the database's change stream (the oplog), so the
transition and its event are one write: a process that dies right after a transition cannot
lose its event (see docs/events.md). Its identity is the change's resume token (`token`),
which is unique per change; a change's cluster time is not (the writes of one transaction
share it, and so can batched writes on newer servers and sharded clusters). Its `seq` is
given when it is appended to the log (`EventStore.append`), in change-stream order, so seqs
are gap-free and ordered, and a relay that replays a change after a crash writes nothing
twice: the token is already there.

Event types: `job.<status>` when a job is created or changes status (`job.queued`,
`job.running`, `job.completed`, ...), `job.progress` when only its progress changed, and
`workflow.<status>` for a workflow (`workflow.running` on creation, then its terminal status).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .models import tenant_of

JOB_TERMINAL = frozenset({"job.completed", "job.failed", "job.cancelled"})
WORKFLOW_TERMINAL = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled"})

# Fields of a job or workflow that never change once it exists; events carry them.
JOB_STATIC = ("engine", "operation", "name", "owner", "workflow_id", "step_key")
WORKFLOW_STATIC = ("name", "owner")


def token_of(change: dict) -> str:
    """The change's resume token as a string: unique per change (`_data` on MongoDB)."""
    tok = change["_id"]
    return tok["_data"] if isinstance(tok, dict) and "_data" in tok else repr(tok)


def _changed(change: dict) -> tuple[dict | None, set[str]]:
    """(post-image if the change carries one, top-level fields it touched)."""
    op = change["operationType"]
    if op in ("insert", "replace"):
        doc = change.get("fullDocument") or {}
        return doc, set(doc)
    desc = change.get("updateDescription") or {}
    fields = {k.split(".", 1)[0] for k in desc.get("updatedFields", {})}
    return None, fields


def _progress(change: dict, doc: dict | None) -> dict | None:
    if doc is not None:
        return doc.get("progress")
    upd = (change.get("updateDescription") or {}).get("updatedFields", {})
    if "progress" in upd:
        return upd["progress"]
    parts = {k.split(".", 1)[1]: v for k, v in upd.items() if k.startswith("progress.")}
    return parts or None


def from_change(change: dict, static: dict | None, last_status: str | None, now: datetime) -> dict | None:
    """The event a change means, or None (a heartbeat, a counter, a lease write ...).

    `now` stands in for the write's wall time where the server does not record one.
    `static` holds the job's or workflow's unchanging fields when the change does not carry
    the document; `last_status` is the status seen in its previous event, if known, so that
    a whole-document rewrite that kept the status is not reported as a transition."""
    coll = change["ns"]["coll"]
    kind = "job" if coll == "jobs" else "workflow" if coll == "workflows" else None
    if kind is None or change["operationType"] not in ("insert", "update", "replace"):
        return None
    op = change["operationType"]
    doc, fields = _changed(change)
    status = doc.get("status") if doc is not None else change["updateDescription"]["updatedFields"].get("status")
    base = doc if doc is not None else (static or {})
    if status is not None and (op == "insert" or status != last_status):
        etype = f"{kind}.{status}"
    elif kind == "job" and op == "update" and "progress" in fields:
        etype, status = "job.progress", last_status or "running"
    else:  # a lease, a counter, a rewrite that kept the status
        return None
    at = change.get("wallTime") or now  # real MongoDB 6+ records the write's wall time
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    oid = change["documentKey"]["_id"]
    event: dict[str, Any] = {
        "token": token_of(change),
        "type": etype,
        "kind": kind,
        "status": status,
        "at": at,
        "job_id": oid if kind == "job" else None,
        "workflow_id": base.get("workflow_id") if kind == "job" else oid,
        "owner": base.get("owner"),
        "tenant": tenant_of(base.get("owner")),
    }
    for f in JOB_STATIC if kind == "job" else WORKFLOW_STATIC:
        if f not in event:
            event[f] = base.get(f)
    if kind == "job":
        progress = _progress(change, doc)
        if progress is not None:
            event["progress"] = progress
        touched = doc if doc is not None else change["updateDescription"]["updatedFields"]
        err = touched.get("last_error")
        if isinstance(err, dict) and etype in ("job.failed", "job.scheduled"):
            event["error"] = {"code": err.get("code"), "message": err.get("message")}
        if touched.get("cancel_reason") and etype == "job.cancelled":
            event["reason"] = touched["cancel_reason"]
    # Stored without its empty fields (a standalone job has no workflow, most no name): readers
    # take a missing field for null, and `public` never shows a null one.
    return {k: v for k, v in event.items() if v is not None}


def static_fields(kind: str, doc: dict) -> dict:
    return {f: doc.get(f) for f in (JOB_STATIC if kind == "job" else WORKFLOW_STATIC)}


def is_terminal(event: dict) -> bool:
    return event["type"] in JOB_TERMINAL or event["type"] in WORKFLOW_TERMINAL


def public(event: dict) -> dict:
    """The JSON shape clients see: `seq` instead of `_id`, an ISO time."""
    out = {k: v for k, v in event.items() if k not in ("_id", "token") and v is not None}
    out["seq"] = event["_id"]
    at = event.get("at")
    if isinstance(at, datetime):
        # Always with its fraction: a whole second is `...:08.000000+00:00`, not `...:08+00:00`.
        out["at"] = (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat(timespec="microseconds")
    return out
