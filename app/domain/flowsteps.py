"""Steps that wait for people, events and time instead of running a handler: what a client
may say about them (`FlowFields`, mixed into `StepSpec`), the rules checked before anything
is written (`check_step`), what is stored of them (`flow_document`), and how a waiting
step's inputs are previewed (`preview`). Pure: no I/O.

Step types (`type` on a workflow step; docs/waiting-steps.md):
- `job` (the default): a handler runs it; `engine` and `operation` are required.
- `approval`: waits in `awaiting` until an approver decides (`approvers`: users
  `<tenant>/<user>` or roles `role:<role>` of the workflow's tenant; absent, any
  operator or admin of the tenant: `DEFAULT_APPROVERS`).
- `signal`: waits in `awaiting` until `POST .../signals/{name}` delivers its payload.
- `sleep`: waits in `scheduled` for `seconds`, or `until` a time.

Such a step is stored with the engine `FLOW_ENGINE`, which no worker serves, its type as
`operation` and `kind`, and its settings under `flow`. Nothing about it occupies a slot.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from ..errors import ValidationFailed
from .models import NAME_PATTERN

FLOW_ENGINE = "_flow"  # no handler is registered for it (a name a client's engine cannot take)
ROLES = ("member", "operator", "admin")  # as app/api/auth.py: each includes the one before
APPROVER_PATTERN = r"^(role:(member|operator|admin)|[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{1,64})$"
SIGNAL_PATTERN = NAME_PATTERN  # a signal's name becomes a field name (`signals.<name>`)
DEFAULT_APPROVERS = ("role:operator",)
MAX_WAIT_SECONDS = 366 * 86_400


class StepType(StrEnum):
    JOB = "job"
    APPROVAL = "approval"
    SIGNAL = "signal"
    SLEEP = "sleep"


WAITS_FOR_SOMEONE = frozenset({StepType.APPROVAL, StepType.SIGNAL})  # they wait in `awaiting`
ON_TIMEOUT_DEFAULT = {StepType.APPROVAL: "reject", StepType.SIGNAL: "fail"}
Approver = Annotated[str, Field(pattern=APPROVER_PATTERN)]
OnTimeout = Literal["reject", "approve", "fail"]

# Error codes of a step that waited and failed.
REJECTED = "rejected"
TIMEOUT_REJECTED = "timeout_rejected"
TIMEOUT = "timeout"
BY_TIMEOUT = "system:timeout"


class FlowFields(BaseModel):
    """The fields of a workflow step that say what it waits for. Mixed into `StepSpec`
    before `JobSpec`, so `engine` and `operation` become optional there: a job step must
    still give them (`check_step`), the other types must not."""

    type: StepType = Field(StepType.JOB, description="job (a handler runs it), approval, signal or sleep")
    engine: str | None = Field(None, pattern=NAME_PATTERN, description="a job step's engine; not for other types")
    operation: str | None = Field(None, pattern=NAME_PATTERN, description="a job step's operation")
    approvers: list[Approver] | None = Field(
        None,
        min_length=1,
        max_length=50,
        description="approval: users `<tenant>/<user>` or roles `role:<role>` of the workflow's tenant; "
        "absent: any operator or admin of the tenant",
    )
    on_timeout: OnTimeout | None = Field(
        None,
        description="approval or signal, with timeout_seconds: reject (default for approvals), approve, "
        "or fail (default for signals)",
    )
    seconds: float | None = Field(None, gt=0, le=MAX_WAIT_SECONDS, description="sleep: how long")
    until: datetime | None = Field(None, description="sleep: until when (not with seconds)")

    @field_validator("until")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v


# Fields of `StepSpec` that make no sense on a step of another type than `job`, with what
# their empty value is; and the fields of each type that other types may not give.
JOB_ONLY = ("engine", "operation", "parameters", "retry_config", "run_at", "delay_seconds", "dedupe_key", "map_over")
ONLY_FOR = {
    "approvers": (StepType.APPROVAL,),
    "on_timeout": (StepType.APPROVAL, StepType.SIGNAL),
    "seconds": (StepType.SLEEP,),
    "until": (StepType.SLEEP,),
}


def _given(s, name: str) -> bool:
    v = getattr(s, name, None)
    return v is not None and v != {} and v != []


def check_step(i: int, s, tenant: str | None = None) -> None:
    """The rules of step `i`'s type that a JSON schema cannot say; raises `ValidationFailed`
    naming the field (`jobs[i].<field>`). `tenant`: the workflow's, which named approvers
    must belong to (unknown before the owner is: the API checks again with it)."""
    t = StepType(s.type)

    def bad(field: str, why: str):
        return ValidationFailed(f"step {s.key!r}: {why}", field=f"jobs[{i}].{field}", key=s.key)

    for name, types in ONLY_FOR.items():
        if _given(s, name) and t not in types:
            raise bad(name, f"{name} is only for {' or '.join(x.value for x in types)} steps, not {t.value}")
    if t == StepType.JOB:
        for name in ("engine", "operation"):
            if getattr(s, name) is None:
                raise bad(name, f"a job step needs {name}")
        return
    for name in JOB_ONLY:
        if _given(s, name):
            raise bad(
                name,
                f"{'an' if t.value[0] in 'aeiou' else 'a'} {t.value} step runs no handler: {name} makes no sense on it",
            )
    if t == StepType.SLEEP:
        if (s.seconds is None) == (s.until is None):
            raise bad("seconds", "a sleep step needs seconds or until (one of them)")
        if s.timeout_seconds is not None:
            raise bad("timeout_seconds", "a sleep step has no timeout: it ends when it has slept")
        return
    if s.on_timeout is not None and s.timeout_seconds is None:
        raise bad("on_timeout", "on_timeout needs timeout_seconds")
    if t == StepType.SIGNAL:
        if s.name is None or not re.match(SIGNAL_PATTERN, s.name):
            raise bad("name", "a signal step needs the signal's name: letters, digits, _ and - (at most 64)")
    if t == StepType.APPROVAL and tenant is not None:
        for j, a in enumerate(s.approvers or ()):
            if not a.startswith("role:") and a.split("/", 1)[0] != tenant:
                raise bad(f"approvers[{j}]", f"approvers must be users of the workflow's tenant ({tenant})")


def flow_document(s) -> dict[str, Any]:
    """What a step of another type than `job` stores besides a job's fields: its kind, the
    engine no worker serves, and its settings under `flow`."""
    t = StepType(s.type)
    flow: dict[str, Any] = {}
    if t in WAITS_FOR_SOMEONE:
        flow = {"timeout_seconds": s.timeout_seconds, "on_timeout": s.on_timeout or ON_TIMEOUT_DEFAULT[t]}
    if t == StepType.APPROVAL:
        flow["approvers"] = list(s.approvers or DEFAULT_APPROVERS)
    elif t == StepType.SIGNAL:
        flow["signal"] = s.name
    elif t == StepType.SLEEP:
        flow = {"seconds": s.seconds, "until": s.until}
    return {"kind": t.value, "engine": FLOW_ENGINE, "operation": t.value, "parameters": {}, "flow": flow}


def may_decide(owner: str, tenant: str, role: str, approvers, step_tenant: str) -> bool:
    """Whether a caller (its owner stamp, tenant and role) may decide an approval of a
    workflow in `step_tenant`: only in the same tenant, and only if named, or holding at
    least a named role."""
    if tenant != step_tenant:
        return False
    for a in approvers or DEFAULT_APPROVERS:
        if a.startswith("role:"):
            wanted = a[5:]
            if role in ROLES and wanted in ROLES and ROLES.index(role) >= ROLES.index(wanted):
                return True
        elif a == owner:
            return True
    return False


def roles_at_least(role: str) -> list[str]:
    return list(ROLES[ROLES.index(role) :])


def iso(t: datetime) -> str:
    """A time as results hold it: ISO 8601 in UTC, milliseconds (results are JSON)."""
    t = t if t.tzinfo else t.replace(tzinfo=UTC)
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- previews of what an approval is about (the parents' results) ----------------------
PREVIEW_TEXT = 2_000  # characters of a string
PREVIEW_IMAGE = 256 * 1024  # a `data:image/...` URL up to this is kept whole, to be shown
PREVIEW_ITEMS = 20  # items of a list, keys of an object
PREVIEW_DEPTH = 6


def preview(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """`value` cut to a size a page can show, and whether anything was cut. Long strings,
    lists and objects are shortened (a marker says how much is left out); a data URL of an
    image is kept whole up to `PREVIEW_IMAGE`, so the inbox can show it."""
    if isinstance(value, str):
        if value.startswith("data:image/") and len(value) <= PREVIEW_IMAGE:
            return value, False
        if len(value) > PREVIEW_TEXT:
            return value[:PREVIEW_TEXT] + f"… ({len(value) - PREVIEW_TEXT} more characters)", True
        return value, False
    if depth >= PREVIEW_DEPTH and isinstance(value, (dict, list)):
        return "…", True
    if isinstance(value, dict):
        out, cut = {}, len(value) > PREVIEW_ITEMS
        for k in list(value)[:PREVIEW_ITEMS]:
            out[k], c = preview(value[k], depth + 1)
            cut |= c
        if len(value) > PREVIEW_ITEMS:
            out["…"] = f"{len(value) - PREVIEW_ITEMS} more keys"
        return out, cut
    if isinstance(value, list):
        items = [preview(v, depth + 1) for v in value[:PREVIEW_ITEMS]]
        out_list = [v for v, _ in items]
        if len(value) > PREVIEW_ITEMS:
            out_list.append(f"… {len(value) - PREVIEW_ITEMS} more items")
        return out_list, len(value) > PREVIEW_ITEMS or any(c for _, c in items)
    return value, False
