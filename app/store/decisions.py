"""The moves of workflow steps that wait for people, events and time (app/domain/
flowsteps.py), one named, guarded primitive per move of `app.domain.states.MOVES`:

- `await_steps`: pending → awaiting (an approval or a signal whose parents completed), with
  `wait_until` when it has a timeout;
- `decide`: awaiting → completed | failed (an approver, a signal, or the timeout sweep
  `expire_due`), followed by the step's settle;
- `sleep_steps`: pending → scheduled (a sleep step), with its `run_at`;
- `wake_due`: scheduled → completed (a due sleep step; the promoter calls it instead of
  queueing the step), followed by the settle.

With lifecycle.py, enqueue.py and steps.py, this is the only code that writes a job's
`status` (tests/test_domain_states.py). Invariants:
- Every move is an update guarded by the status it leaves (and, leaving `pending`, by the
  `waiting_on` map `ready` saw, as `Enqueuer.ready` guards it), so of two processes making
  the same move one wins; `decide` raises `InvalidTransition` when its guard fails.
- No step here is ever queued or leased: its engine (`FLOW_ENGINE`) has no worker, and no
  move here counts it in an engine's counters.
- A timed-out step is found through the partial index on `wait_until` (awaiting steps
  only), with a range bounded on both sides: the sweep's cost follows what is due.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from ..domain.flowsteps import BY_TIMEOUT, TIMEOUT, TIMEOUT_REJECTED, iso
from ..domain.states import JobStatus
from ..errors import InvalidTransition
from .db import find_in
from .documents import error_entry

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PENDING = JobStatus.PENDING.value
AWAITING = JobStatus.AWAITING.value
SCHEDULED = JobStatus.SCHEDULED.value


class Decisions:
    def __init__(self, col, clock, expiry, lifecycle) -> None:
        self.col, self.clock, self.expiry, self.lifecycle = col, clock, expiry, lifecycle

    async def ensure_indexes(self) -> None:
        # The timeout sweep: only awaiting steps with a timeout are in it.
        await self.col.create_index("wait_until", partialFilterExpression={"status": AWAITING}, name="wait_until")

    async def _leave_pending(self, steps: list[dict], exact: bool, update_of) -> int:
        """One guarded `update_one` per step out of `pending` (in one `bulk_write`): on its
        status and on the `waiting_on` map read (`exact`) or an empty one. `update_of(flow)`
        is the step's update, from its `flow` settings. Returns how many moved."""
        ids = [s["_id"] for s in steps]
        flows = {d["_id"]: d.get("flow") or {} for d in await find_in(self.col, ids, None, {"flow": 1})} if ids else {}
        ops = []
        for s in steps:
            if s["_id"] in flows:
                # The map's keys in the order read: on MongoDB, equality on an embedded
                # document compares field order too.
                waited = dict(s.get("waiting_on") or {}) if exact else {}
                guard = {"_id": s["_id"], "status": PENDING, "waiting_on": waited}
                ops.append(UpdateOne(guard, update_of(flows[s["_id"]])))
        return (await self.col.bulk_write(ops, ordered=False)).modified_count if ops else 0

    # --- pending → awaiting --------------------------------------------------------------
    async def await_steps(self, steps: list[dict], exact: bool = False) -> list[str]:
        """pending → awaiting for approval and signal steps with nothing left to wait on.
        Returns the ids of those now awaiting (read back: the writes are one per step)."""
        now = self.clock.now()

        def update(flow: dict) -> dict:
            out: dict[str, Any] = {
                "$set": {"status": AWAITING, "waiting_on": {}, "awaiting_since": now},
                "$unset": {"decision": "", "wait_until": ""},
            }
            if flow.get("timeout_seconds"):
                out["$set"]["wait_until"] = now + timedelta(seconds=flow["timeout_seconds"])
                del out["$unset"]["wait_until"]
            return out

        if not await self._leave_pending(steps, exact, update):
            return []
        moved = await find_in(
            self.col, [s["_id"] for s in steps], {"status": AWAITING, "awaiting_since": now}, {"_id": 1}
        )
        return [d["_id"] for d in moved]

    # --- awaiting → completed | failed ---------------------------------------------------
    async def decide(
        self, step_id: str, *, result: Any = None, error: tuple[str, str] | None = None, decision: dict | None = None
    ) -> None:
        """awaiting → completed with `result`, or → failed with `error` (code, message);
        `decision` (an approval's) is kept on the step either way. Guarded on `awaiting`:
        raises `InvalidTransition` (nothing written) when the step is no longer there. The
        step's settle follows (its children, the failure policy)."""
        now = self.clock.now()
        if error is None:
            update: dict[str, Any] = {
                "$set": {
                    "status": JobStatus.COMPLETED.value,
                    "completed_at": now,
                    "result": result,
                    "progress.percent": 100.0,
                },
            }
        else:
            entry = error_entry(error[0], error[1], 0, now, None)
            update = {
                "$set": {
                    "status": JobStatus.FAILED.value,
                    "completed_at": now,
                    "last_error": entry,
                    **self.expiry.finished(True, JobStatus.FAILED.value, now),
                },
                "$push": {"errors": entry},
            }
        if decision is not None:
            update["$set"]["decision"] = decision
        update["$unset"] = {"wait_until": ""}
        res = await self.col.update_one({"_id": step_id, "status": AWAITING}, update)
        if not res.modified_count:
            doc = await self.col.find_one({"_id": step_id}, {"status": 1, "step_key": 1})
            what = f"step {doc.get('step_key')!r} is {doc['status']}" if doc else f"step {step_id} is gone"
            raise InvalidTransition(f"{what}: it no longer awaits a decision", field="status")
        await self.lifecycle.settle_now([step_id])

    async def expire_due(self, now: datetime, limit: int = 100) -> int:
        """Apply `on_timeout` to awaiting steps whose `wait_until` has passed: `approve`
        completes the step (decided by `system:timeout`), `reject` fails it with
        `timeout_rejected`, `fail` with `timeout`. Returns how many were decided here."""
        due = (
            await self.col.find(
                {"status": AWAITING, "wait_until": {"$gte": EPOCH, "$lte": now}},
                {"kind": 1, "flow": 1, "wait_until": 1},
            )
            .limit(limit)
            .to_list(limit)
        )
        decided = 0
        for d in due:
            flow = d.get("flow") or {}
            what = "approval" if d.get("kind") == "approval" else f"signal {flow.get('signal')!r}"
            waited = f"no {what} within {flow.get('timeout_seconds')}s"
            on = flow.get("on_timeout") or "fail"
            kw: dict[str, Any]
            if on == "approve":
                stamp = {"by": BY_TIMEOUT, "at": iso(now)}
                if d.get("kind") == "approval":
                    verdict = {"decision": "approved", **stamp, "comment": waited, "payload": None}
                    kw = {"result": verdict, "decision": verdict}
                else:
                    kw = {"result": {"timed_out": True, **stamp}}
            elif on == "reject":
                verdict = {"decision": "rejected", "by": BY_TIMEOUT, "at": iso(now), "comment": waited, "payload": None}
                kw = {"error": (TIMEOUT_REJECTED, f"rejected: {waited}"), "decision": verdict}
            else:
                kw = {"error": (TIMEOUT, waited)}
            try:
                await self.decide(d["_id"], **kw)
                decided += 1
            except InvalidTransition:
                continue  # decided (or cancelled) meanwhile
        return decided

    # --- pending → scheduled → completed: sleep steps ------------------------------------
    async def sleep_steps(self, steps: list[dict], exact: bool = False) -> int:
        """pending → scheduled for sleep steps with nothing left to wait on: `run_at` is
        now plus `seconds`, or `until`. The promoter wakes them (`wake_due`)."""
        now = self.clock.now()

        def update(flow: dict) -> dict:
            run_at = flow.get("until") or now + timedelta(seconds=flow.get("seconds") or 0)
            return {"$set": {"status": SCHEDULED, "waiting_on": {}, "run_at": run_at}}

        return await self._leave_pending(steps, exact, update)

    async def wake_due(self, steps: list[dict], now: datetime) -> int:
        """scheduled → completed for due sleep steps (read by the promoter with `run_at`),
        each guarded on its status and the `run_at` read; result `{"slept_until": ...}`.
        Those moved here are settled. Returns how many."""
        steps = [s for s in steps if s.get("run_at") is not None and s["run_at"] <= now]
        if not steps:
            return 0
        ops = [
            UpdateOne(
                {"_id": s["_id"], "status": SCHEDULED, "kind": "sleep", "run_at": s["run_at"]},
                {
                    "$set": {
                        "status": JobStatus.COMPLETED.value,
                        "completed_at": now,
                        "result": {"slept_until": iso(s["run_at"])},
                        "progress.percent": 100.0,
                    }
                },
            )
            for s in steps
        ]
        await self.col.bulk_write(ops, ordered=False)
        woke = await find_in(
            self.col, [s["_id"] for s in steps], {"status": JobStatus.COMPLETED.value, "completed_at": now}, {"_id": 1}
        )
        ids = [d["_id"] for d in woke]
        await self.lifecycle.settle_now(ids)
        return len(ids)
