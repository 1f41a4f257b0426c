""" "Why is it waiting?": a job's reasons for not running yet, as data.

Reasons (any number, in this order): `dependencies` (unfinished parents, by step key), or
`map_children` for a map step that made its children (how many it still waits for); for a
step that waits for a person, an event or a time, then only `approval`, `signal` or
`sleeping` (`waits_for`); for a job,
`scheduled` (waiting for `run_at`, a delay or a retry back-off), `paused` (its engine is
paused), `held` (provider back-pressure holds its engine, or its tenant's key, until
`until`), `budget_reached` (its tenant spent its daily or monthly cost budget: it waits
until the period rolls over at `until`, or the budget is raised), `rate_limited` (the
engine's rate limit has no token now: `next_slot_at`, when the next start is allowed),
`key_limited` (its limit key is at its concurrency, has no rate token, or is held by the
provider: app/store/keylimits.py), `engine_full` (`running/limit`), and `position` (queued jobs ahead of it in its
engine's line, counted only where asked, since a count costs what it counts, and over at
most 1,000 sequence numbers a band: `ahead_at_least` says when it is a lower bound).
"""

from __future__ import annotations

from datetime import datetime

from ..domain.flowsteps import FLOW_ENGINE
from ..domain.states import JobStatus
from .bands import key_block, next_token_at
from .db import find_in
from .engines import budget_hold, held_until


async def explain(
    store, job: dict, *, engine: dict | None = None, key_of: dict[str, str] | None = None, count_position: bool = True
) -> dict | None:
    status = JobStatus(job["status"])
    if status in (JobStatus.RUNNING,) or status.terminal:
        return None
    reasons: list[dict] = []
    if status == JobStatus.PENDING and job.get("kind") == "map_join":
        reasons.append(map_reason(job))
    elif status == JobStatus.PENDING:
        waiting = list(job.get("waiting_on") or {})
        keys = [key_of.get(i, i) for i in waiting] if key_of else None
        if keys is None and waiting:
            docs = await find_in(store.jobs.col, waiting, None, {"step_key": 1, "status": 1})
            keys = [d.get("step_key") or d["_id"] for d in docs]
        reasons.append(
            {
                "reason": "dependencies",
                "waiting_for": sorted(keys or []),
                "message": f"waits for {len(waiting)} unfinished dependenc{'y' if len(waiting) == 1 else 'ies'}",
            }
        )
    if job.get("engine") == FLOW_ENGINE:  # an approval, a signal, a sleep: no engine holds it
        reasons += waits_for(job, store.clock.now())
        return {"status": status.value, "reasons": reasons}
    if status == JobStatus.SCHEDULED:
        run_at: datetime | None = job.get("run_at")
        kind = "retry_backoff" if job.get("retry_count") else "run_at"
        left = (run_at - store.clock.now()).total_seconds() if run_at else None
        reasons.append(
            {
                "reason": "scheduled",
                "kind": kind,
                "run_at": run_at,
                "seconds_left": max(left, 0) if left is not None else None,
                "message": ("retry back-off" if kind == "retry_backoff" else "scheduled to run")
                + (f" in {max(left, 0):.1f}s" if left is not None else ""),
            }
        )
    engine = engine or await store.engines.get(job["engine"])
    if engine.get("paused"):
        reasons.append({"reason": "paused", "engine": engine["_id"], "message": f"engine {engine['_id']} is paused"})
    elif job.get("tenant") in (engine.get("paused_tenants") or {}):
        reasons.append(
            {
                "reason": "paused",
                "engine": engine["_id"],
                "tenant": job["tenant"],
                "message": f"this tenant's work on engine {engine['_id']} is paused",
            }
        )
    now = store.clock.now()
    hold = held_until(engine, job.get("tenant"), now)
    if hold is not None:
        until, key = hold
        left = (until - now).total_seconds()
        what = f"engine {engine['_id']}" if key is None else f"{key} on engine {engine['_id']}"
        reasons.append(
            {
                "reason": "held",
                "engine": engine["_id"],
                "key": key,
                "until": until,
                "seconds_left": left,
                "message": f"{what} is held by the provider (rate limited) for {left:.1f}s more",
            }
        )
    budget = budget_hold(engine, job.get("tenant"), now)
    if budget is not None:
        left = (budget["until"] - now).total_seconds()
        reasons.append(
            {
                "reason": "budget_reached",
                "tenant": job["tenant"],
                "period": budget["period"],
                "period_key": budget["key"],
                "until": budget["until"],
                "seconds_left": left,
                "message": f"budget reached: tenant {job['tenant']} spent its {budget['period']} cost budget "
                f"({budget['key']}); waits until it rolls over in {left:.0f}s or the budget is raised",
            }
        )
    slot = next_token_at(engine, now) if status == JobStatus.QUEUED else None
    if slot is not None:
        left = (slot - now).total_seconds()
        reasons.append(
            {
                "reason": "rate_limited",
                "engine": engine["_id"],
                "rate": engine.get("rate"),
                "burst": engine.get("burst"),
                "next_slot_at": slot,
                "seconds_left": left,
                "message": f"engine {engine['_id']}'s rate limit ({engine.get('rate')}) holds it: "
                f"its next slot comes in {left:.2f}s",
            }
        )
    block = key_block(engine, job.get("lane", 0), now) if status == JobStatus.QUEUED else None
    if block is not None:
        reasons.append(key_reason(engine, job, block, now))
    running, limit = engine.get("running", 0), engine["limit"]
    if running >= limit:
        reasons.append(
            {
                "reason": "engine_full",
                "engine": engine["_id"],
                "running": running,
                "limit": limit,
                "message": f"engine {engine['_id']} is full ({running}/{limit})",
            }
        )
    if status == JobStatus.QUEUED:
        entry = {"reason": "position", "engine": engine["_id"], "priority": job["priority"]}
        if count_position:
            ahead, partial = await store.jobs.queue_position(job)
            entry.update(
                ahead=ahead,
                ahead_at_least=partial,
                message=f"{'at least ' if partial else ''}{ahead} queued job{'s' if ahead != 1 else ''} ahead in {engine['_id']}",
            )
        else:
            entry["message"] = f"queued in {engine['_id']} at priority {job['priority']}"
        reasons.append(entry)
    return {"status": status.value, "reasons": reasons}


def waits_for(job: dict, now) -> list[dict]:
    """ "why" for a step that waits for a person, an event or a time (app/domain/flowsteps.py):
    `approval` (by whom, until when), `signal` (its name), `sleeping` (until when)."""
    flow, status = job.get("flow") or {}, job["status"]
    until: datetime | None = job.get("wait_until") if status == JobStatus.AWAITING else job.get("run_at")
    left = max((until - now).total_seconds(), 0) if until else None
    unless = "nobody decides" if job.get("kind") == "approval" else "it does not come"
    then = f"; {flow.get('on_timeout')} in {left:.0f}s if {unless}" if left is not None else ""
    if status == JobStatus.AWAITING and job.get("kind") == "approval":
        who = " or ".join(flow.get("approvers") or [])
        return [
            {
                "reason": "approval",
                "approvers": flow.get("approvers") or [],
                "until": until,
                "seconds_left": left,
                "on_timeout": flow.get("on_timeout"),
                "message": f"awaiting approval by {who}{then}",
            }
        ]
    if status == JobStatus.AWAITING:
        return [
            {
                "reason": "signal",
                "signal": flow.get("signal"),
                "until": until,
                "seconds_left": left,
                "on_timeout": flow.get("on_timeout"),
                "message": f"awaiting signal {flow.get('signal')!r}{then}",
            }
        ]
    if status == JobStatus.SCHEDULED:
        return [
            {
                "reason": "sleeping",
                "until": until,
                "seconds_left": left,
                "message": f"sleeps until {until.isoformat() if until else '?'} ({left or 0:.0f}s left)",
            }
        ]
    return []


def map_reason(job: dict) -> dict:
    """ "why" for a map step that made its children (app/store/mapsteps.py): how many it
    still waits for, not their keys (a map may have thousands)."""
    waiting, items, key = len(job.get("waiting_on") or {}), len(job.get("map_children") or []), job.get("step_key")
    names = f"{key}[0]" if items == 1 else f"{key}[0] .. {key}[{items - 1}]"
    return {
        "reason": "map_children",
        "waiting": waiting,
        "items": items,
        "map_over": job.get("map_over"),
        "message": f"maps over {job.get('map_over')}: waits for {waiting} of its {items} children ({names})",
    }


def key_reason(engine: dict, job: dict, block: dict, now) -> dict:
    """ "why" for a job whose limit key (docs/limits.md, "Per-key limits") may not start it."""
    key = f"{engine.get('key')}={job.get('limit_key', '')!r}"
    out = {"reason": "key_limited", "engine": engine["_id"], "key": key, "limit": block["limit"]}
    if block["limit"] == "concurrency":
        out.update(running=block["running"], max=block["max"])
        out["message"] = f"key {key} has {block['running']} of {block['max']} jobs running on engine {engine['_id']}"
        return out
    until = block.get("next_slot_at") or block["until"]
    left = (until - now).total_seconds()
    out.update(next_slot_at=until, seconds_left=left)
    if block["limit"] == "rate":
        out["rate"] = engine.get("key_rate")
        out["message"] = (
            f"key {key}'s rate limit ({engine.get('key_rate')}) on engine {engine['_id']} holds it: "
            f"its next slot comes in {left:.2f}s"
        )
    else:
        out["message"] = f"key {key} on engine {engine['_id']} is held by the provider for {left:.1f}s more"
    return out
