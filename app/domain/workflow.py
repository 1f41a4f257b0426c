"""Workflow specs and their validation: keys, dependencies, cycles and size, checked
before anything is written. Pure: no I/O."""

from __future__ import annotations

from collections import deque
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ValidationFailed
from . import mapover
from .flowsteps import FlowFields, check_step
from .models import JobSpec
from .userjson import UserDict

KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$"
StepKey = Annotated[str, Field(pattern=KEY_PATTERN)]


class StepSpec(FlowFields, JobSpec):
    """One step: a job plus its key and the keys it depends on; or, by its `type`, a step
    that waits for an approval, a signal or a time (app/domain/flowsteps.py)."""

    key: StepKey
    # Keys only, so an error about an unknown dependency names a step, never arbitrary text.
    depends_on: list[StepKey] = Field(default_factory=list, max_length=10_000)
    map_over: str | None = Field(
        None,
        max_length=mapover.MAX_PATH,
        description="'<parent key>.<path to a list>' in that parent's result: the step runs once per item "
        "(docs/map-steps.md)",
    )


class WorkflowSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    jobs: list[StepSpec] = Field(min_length=1)
    failure_policy: Literal["fail_fast", "continue"] = "fail_fast"
    metadata: UserDict = Field(default_factory=dict, description="stored as given; the same rules as parameters")


class AddSteps(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[StepSpec] = Field(min_length=1)


def validate_steps(
    steps: list[StepSpec], *, existing: set[str] = frozenset(), cap: int = 10_000, tenant: str | None = None
) -> list[str]:
    """Check a new set of steps (optionally joining `existing` keys, which may be depended
    on but cannot depend on new ones) of a workflow in `tenant` (when known). Returns the
    new keys in a topological order. Raises ValidationFailed naming the problem."""
    if len(steps) + len(existing) > cap:
        raise ValidationFailed(
            f"a workflow may have at most {cap} steps; this one would have {len(steps) + len(existing)}", field="jobs"
        )
    keys: dict[str, int] = {}
    for i, s in enumerate(steps):
        check_step(i, s, tenant)  # what its type needs and forbids
        if s.key in keys or s.key in existing:
            raise ValidationFailed(f"duplicate step key {s.key!r}", field=f"jobs[{i}].key", key=s.key)
        keys[s.key] = i
    for i, s in enumerate(steps):
        for dep in s.depends_on:
            if dep == s.key:
                raise ValidationFailed(f"step {s.key!r} depends on itself", field=f"jobs[{i}].depends_on", key=s.key)
            if dep not in keys and dep not in existing:
                raise ValidationFailed(
                    f"step {s.key!r} depends on unknown step {dep!r}",
                    field=f"jobs[{i}].depends_on",
                    key=s.key,
                    unknown=dep,
                )
        if len(set(s.depends_on)) != len(s.depends_on):
            raise ValidationFailed(f"step {s.key!r} lists a dependency twice", field=f"jobs[{i}].depends_on", key=s.key)
        if s.map_over is not None:
            mapover.check(i, s.key, s.map_over, s.depends_on, s.parameters)
    return topological(steps, keys)


def topological(steps: list[StepSpec], keys: dict[str, int]) -> list[str]:
    """Kahn's algorithm over the new steps; a leftover means a cycle, which is named."""
    indeg = {s.key: 0 for s in steps}
    children: dict[str, list[str]] = {s.key: [] for s in steps}
    for s in steps:
        for dep in s.depends_on:
            if dep in keys:
                indeg[s.key] += 1
                children[dep].append(s.key)
    ready = deque(k for k, d in indeg.items() if d == 0)
    order: list[str] = []
    while ready:
        k = ready.popleft()
        order.append(k)
        for c in children[k]:
            indeg[c] -= 1
            if indeg[c] == 0:
                ready.append(c)
    if len(order) < len(steps):
        cycle = find_cycle({k for k, d in indeg.items() if d > 0}, steps)
        raise ValidationFailed(f"the dependencies form a cycle: {' -> '.join(cycle)}", field="jobs", cycle=cycle)
    return order


def find_cycle(stuck: set[str], steps: list[StepSpec]) -> list[str]:
    """One concrete cycle among the keys Kahn's algorithm could not order."""
    deps = {s.key: [d for d in s.depends_on if d in stuck] for s in steps if s.key in stuck}
    start = min(stuck)
    path, seen = [start], {start: 0}
    node = start
    while True:
        node = deps[node][0]
        if node in seen:
            return path[seen[node] :] + [node]
        seen[node] = len(path)
        path.append(node)


def descendants(children: dict[str, list[str]], roots: list[str]) -> set[str]:
    out: set[str] = set()
    todo = list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out
