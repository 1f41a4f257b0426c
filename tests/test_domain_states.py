"""The transition table (`app/domain/states.py`): its documentation, its primitives, and the
rule that only the lifecycle's modules write a job's `status`."""

from __future__ import annotations

import ast
import pathlib
import re

from app.domain.states import MOVES, TERMINAL, JobStatus, WorkflowStatus, allowed, diagram
from app.store.decisions import Decisions
from app.store.enqueue import Enqueuer
from app.store.job_admin import JobAdmin
from app.store.lifecycle import EXIT_TARGETS, Lifecycle
from app.store.steps import StepMoves

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The job moves live here; other modules write the status of other collections only.
# decisions.py: the moves of steps that wait for people, events and time (await, decide,
# sleep, wake), kept out of lifecycle.py, which is long enough.
JOB_MOVERS = {"app/store/lifecycle.py", "app/store/enqueue.py", "app/store/steps.py", "app/store/decisions.py"}
OTHER_COLLECTIONS = {
    "app/store/mail.py": "mail outbox",
    "app/store/workers.py": "worker registry",
    "app/store/workflows.py": "workflows",
    "app/store/workflow_flow.py": "workflows",
}
# One named primitive per move of the table.
PRIMITIVES = {
    "submit": Lifecycle.submit,
    "ready": Enqueuer.ready,
    "promote": Lifecycle.promote_due,
    "reseq": Lifecycle.reseq,
    "claim": Lifecycle.take,
    "complete": Lifecycle.complete,
    "backoff": Lifecycle.backoff,
    "fail": Lifecycle.fail,
    "release": Lifecycle.release,
    "hold": Lifecycle.hold,
    "rescue": Lifecycle.rescue,
    "exhaust": Lifecycle.rescue,
    "stop": Lifecycle.stop,
    "cancel": Lifecycle.cancel,
    "join": StepMoves.join,
    "refuse": StepMoves.refuse,
    "retry": JobAdmin.retry_job,
    "reset": StepMoves.reset_steps,
    "await": Decisions.await_steps,
    "decide": Decisions.decide,
    "sleep": Decisions.sleep_steps,
    "wake": Decisions.wake_due,
}


def test_the_state_diagram_is_the_table():
    doc = JobStatus.__doc__
    block = re.search(r"```\n(.*?)\n\s*```", doc, re.S).group(1)
    assert [line.strip() for line in block.splitlines()] == [line.strip() for line in diagram().splitlines()]


def test_every_state_is_reached_and_every_move_has_a_primitive():
    reached = {t for m in MOVES.values() for t in m.targets}
    assert reached == set(JobStatus)
    left = {s for m in MOVES.values() for s in m.sources}
    assert left == set(JobStatus) - {JobStatus.COMPLETED}  # completed is final
    assert set(PRIMITIVES) == set(MOVES)
    assert {m for m, t in EXIT_TARGETS.items() if allowed(m, JobStatus.RUNNING)} == set(EXIT_TARGETS)


def test_terminal_sets_are_defined_once():
    assert TERMINAL == {s for s in JobStatus if s.terminal}
    assert {s for s in WorkflowStatus if s.terminal} == {WorkflowStatus(s.value) for s in TERMINAL}
    assert not allowed("cancel", JobStatus.RUNNING) and allowed("cancel", JobStatus.QUEUED)


def _status_writes(path: pathlib.Path) -> list[int]:
    """Lines that set a `status` field in an update: `{"$set": {"status": ...}}`,
    `update["$set"].update(status=...)` or `doc["status"] = ...`."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(k, ast.Constant)
                    and k.value in ("$set", "$setOnInsert")
                    and isinstance(v, ast.Dict)
                    and any(isinstance(kk, ast.Constant) and kk.value == "status" for kk in v.keys)
                ):
                    lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "update"
            and any(kw.arg == "status" for kw in node.keywords)
        ):
            lines.append(node.lineno)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "status":
                    lines.append(node.lineno)
    return lines


def test_only_the_lifecycle_writes_a_jobs_status():
    writers = {}
    for path in sorted((ROOT / "app" / "store").rglob("*.py")):  # nothing else talks to MongoDB
        rel = path.relative_to(ROOT).as_posix()
        if lines := _status_writes(path):
            writers[rel] = lines
    strays = {p: ls for p, ls in writers.items() if p not in JOB_MOVERS and p not in OTHER_COLLECTIONS}
    assert not strays, f"status written outside the lifecycle: {strays}"
    assert JOB_MOVERS <= set(writers)  # the scan sees the real writers


def test_the_scan_catches_a_stray_write(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text(
        'async def f(col):\n    await col.update_one({"_id": 1}, {"$set": {"status": "queued"}})\n'
        'def g(u):\n    u["$set"].update(status="failed")\n'
    )
    assert sorted(_status_writes(stray)) == [2, 4]
