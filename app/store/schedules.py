"""The `schedules` collection: cron schedules, and the guarded moves that fire their ticks.

A schedule document holds its cron, zone, misfire policy, `target` ("job" or "workflow")
and `template`, `paused`, `next_run_at` (the next tick not yet handled; always a tick), a
`firing` claim while a tick is being launched, and what happened last: `run_count`,
`last_run_at` (the tick), `last_fired_at`, `last_job_id` / `last_workflow_id`,
`last_error`, `last_misfire`, `refused_ticks` (ticks the tenant's limits refused; see
app/admission.py: a refused tick is given up with the reason in `last_error`, and the
schedule goes on to its next tick).

Firing tick T (the scheduler drives this; any number of processes may race):
1. claim: `update_one({_id, next_run_at: T_cur, paused: false, firing: null},
   {$set: {firing: {tick: T, next, token, at}}})`. One process wins; the rest match nothing.
2. launch the job or workflow for T.
3. commit: `update_one({_id, firing.token: token}, {$max: {next_run_at: next}, $unset:
   firing, ...})`. `next_run_at` only ever moves forward, so a tick once passed is never due
   again. It moves past T only after T's launch succeeded, or T was given up with the
   reason in `last_error`.

Exactly once, for jobs: a tick's job id is a function of (schedule id, tick)
(`tick_job_id`), and `jobs._id` is unique, so no interleaving of processes, crashes or
takeovers can create two jobs for one tick. A claim older than the stale limit is taken
over by another process, which looks the job up by that id and inserts it only when it is
missing; then it commits. So a crash anywhere between claim and commit neither loses the
tick nor runs it twice. (`Lifecycle.submit`'s dedupe cannot give this: it frees a key once
its job has finished, so a re-submit after a fast job would run the tick again.)

At most once, for workflows: `WorkflowStore.create` picks its own ids, so after a crash
between launch and commit nobody can tell whether the workflow exists. A claim is the only
permission to create a tick's workflow, and a stale workflow claim is never launched again:
the taker-over commits the tick as given up, with "outcome unknown" in `last_error`. The
workflow carries `metadata.schedule_id` and `metadata.schedule_tick`, so an operator can
look. A launch that raised is retried (a workflow whose steps failed to store is marked
failed by `create` itself), so a tick has at most one workflow that is not failed.
"""

from __future__ import annotations

import hashlib
import struct
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from ..domain.models import JobSpec, tenant_of
from ..domain.schedule import Cron, ScheduleSpec
from ..domain.workflow import WorkflowSpec
from ..errors import NotFound


def tick_job_id(schedule_id: str, tick: datetime) -> str:
    """The id of the job a schedule submits at `tick`: an ObjectId whose timestamp is the
    tick (so job listings stay in time order) and whose other 8 bytes hash the pair."""
    digest = hashlib.sha256(f"{schedule_id}|{tick.timestamp():.0f}".encode()).digest()
    return str(ObjectId(struct.pack(">I", int(tick.timestamp())) + digest[:8]))


class ScheduleStore:
    def __init__(self, db: AsyncDatabase, settings, clock, jobs, lifecycle, workflows) -> None:
        self.col = db["schedules"]
        self.settings, self.clock, self.jobs, self.workflows = settings, clock, jobs, workflows
        self.lifecycle = lifecycle

    async def ensure_indexes(self) -> None:
        # The scheduler's due query: plain equality on `paused`, then a range on `next_run_at`.
        await self.col.create_index([("paused", ASCENDING), ("next_run_at", ASCENDING)])

    # --- CRUD ----------------------------------------------------------------------------
    async def create(self, spec: ScheduleSpec, owner: str, now: datetime) -> dict:
        cron = spec.cron_spec()
        target, template = spec.target()
        doc = {
            "_id": str(ObjectId()),
            "name": spec.name,
            "owner": owner,
            "tenant": tenant_of(owner),
            "cron": cron.expr,
            "timezone": spec.timezone,
            "misfire_policy": spec.misfire_policy,
            "target": target,
            "template": template,
            "paused": False,
            "next_run_at": cron.next_after(now),
            "firing": None,
            "created_at": now,
            "updated_at": now,
            "run_count": 0,
            "last_run_at": None,
            "last_fired_at": None,
            "last_job_id": None,
            "last_workflow_id": None,
            "last_error": None,
            "last_misfire": None,
            "tick_failures": 0,
        }
        await self.col.insert_one(doc)
        return doc

    async def get(self, schedule_id: str) -> dict:
        doc = await self.col.find_one({"_id": schedule_id}) if isinstance(schedule_id, str) else None
        if doc is None:
            raise NotFound(f"schedule {schedule_id!r} not found", field="schedule_id")
        return doc

    async def count(self, tenant: str) -> int:
        """A tenant's schedules (their cap is checked against this)."""
        return await self.col.count_documents({"tenant": str(tenant)})

    async def list(
        self, *, tenant: str | None = None, after: str | None = None, limit: int = 50
    ) -> tuple[list[dict], str | None]:
        """Newest first; `after` is the previous page's `next_cursor`."""
        filt: dict[str, Any] = {} if after is None else {"_id": {"$lt": str(after)}}
        if tenant is not None:
            filt["tenant"] = str(tenant)
        docs = await self.col.find(filt).sort("_id", -1).limit(limit + 1).to_list(limit + 1)
        return docs[:limit], (docs[limit - 1]["_id"] if len(docs) > limit else None)

    async def pause(self, schedule_id: str, now: datetime) -> dict:
        res = await self.col.update_one({"_id": str(schedule_id)}, {"$set": {"paused": True, "updated_at": now}})
        if not res.matched_count:
            raise NotFound(f"schedule {schedule_id!r} not found", field="schedule_id")
        return await self.get(schedule_id)

    async def resume(self, schedule_id: str, now: datetime) -> dict:
        """Ticks that fell while paused are not misfires: a resumed schedule continues at its
        first tick after `now`, whatever its misfire policy."""
        doc = await self.get(schedule_id)
        if doc["paused"]:
            nxt = Cron.parse(doc["cron"], doc["timezone"]).next_after(now)
            await self.col.update_one(
                {"_id": doc["_id"], "paused": True},
                {"$set": {"paused": False, "updated_at": now}, "$max": {"next_run_at": nxt}},
            )
        return await self.get(schedule_id)

    async def delete(self, schedule_id: str) -> None:
        """Jobs and workflows it already launched are left alone."""
        res = await self.col.delete_one({"_id": str(schedule_id)})
        if not res.deleted_count:
            raise NotFound(f"schedule {schedule_id!r} not found", field="schedule_id")

    # --- firing --------------------------------------------------------------------------
    async def due(self, now: datetime, limit: int = 100) -> list[dict]:
        """Unpaused schedules whose next tick is due, including ones with a claim in flight
        (the scheduler decides whether that claim is stale)."""
        return (
            await self.col.find({"paused": False, "next_run_at": {"$lte": now}})
            .sort("next_run_at", 1)
            .limit(limit)
            .to_list(limit)
        )

    async def claim(
        self,
        schedule_id: str,
        cur: datetime,
        tick: datetime,
        nxt: datetime,
        token: str,
        now: datetime,
        skipped: tuple[datetime, datetime] | None = None,
    ) -> bool:
        """Step 1: take tick `tick` of a schedule whose stored next tick is still `cur`.
        `skipped` (misfired ticks this plan passes over) is recorded by the winner only."""
        update: dict[str, Any] = {"firing": {"tick": tick, "next": nxt, "token": token, "at": now}}
        if skipped:
            update["last_misfire"] = {"skipped_from": skipped[0], "skipped_until": skipped[1], "detected_at": now}
        res = await self.col.update_one(
            {"_id": schedule_id, "next_run_at": cur, "paused": False, "firing": None}, {"$set": update}
        )
        return res.modified_count == 1

    async def take_over(self, schedule_id: str, old_token: str, token: str, now: datetime) -> bool:
        """Take a stale claim (its process is presumed dead); one taker wins."""
        res = await self.col.update_one(
            {"_id": schedule_id, "firing.token": old_token}, {"$set": {"firing.token": token, "firing.at": now}}
        )
        return res.modified_count == 1

    async def launch(self, doc: dict, tick: datetime, recovering: bool = False) -> tuple[str, str, list[str]]:
        """Step 2: create the tick's job or workflow. Returns `(target, id, engines)`, with
        the engine of each job this call created (none when it existed already)."""
        if doc["target"] == "workflow":
            spec = WorkflowSpec.model_validate(doc["template"])
            spec.metadata = {**spec.metadata, "schedule_id": doc["_id"], "schedule_tick": tick.isoformat()}
            wf = await self.workflows.create(spec, owner=doc["owner"])
            return "workflow", wf["_id"], [s.engine for s in spec.jobs]
        spec = JobSpec.model_validate({"name": doc["name"], **doc["template"]})
        job = self.lifecycle.build(spec, doc["owner"])
        job.update(_id=tick_job_id(doc["_id"], tick), schedule_id=doc["_id"], schedule_tick=tick)
        if recovering:
            try:
                await self.jobs.get(job["_id"])
                return "job", job["_id"], []  # the dead process got this far
            except NotFound:
                pass
        try:
            await self.lifecycle.insert_many([job])
        except (BulkWriteError, DuplicateKeyError) as exc:
            errors = exc.details.get("writeErrors", [exc.details]) if exc.details else []
            if not errors or any(e.get("code") != 11000 for e in errors):
                raise
            # A process we took over from inserted it meanwhile (the enqueuer gave our
            # count of it back).
            return "job", job["_id"], []
        return "job", job["_id"], [job["engine"]]

    async def commit(
        self, schedule_id: str, token: str, tick: datetime, nxt: datetime, target: str, target_id: str, now: datetime
    ) -> bool:
        """Step 3: the tick is done; move on. False if our claim was taken over meanwhile."""
        res = await self.col.update_one(
            {"_id": schedule_id, "firing.token": token},
            {
                "$set": {
                    "firing": None,
                    "last_run_at": tick,
                    "last_fired_at": now,
                    f"last_{target}_id": target_id,
                    "last_error": None,
                    "tick_failures": 0,
                    "updated_at": now,
                },
                "$max": {"next_run_at": nxt},
                "$inc": {"run_count": 1},
            },
        )
        return res.modified_count == 1

    async def release(
        self,
        schedule_id: str,
        token: str,
        tick: datetime,
        nxt: datetime,
        error: dict,
        give_up: bool,
        now: datetime,
        refused: bool = False,
    ) -> bool:
        """The launch failed. `give_up`: the tick is passed over (recorded in `last_error`);
        otherwise the claim is dropped and the tick stays due, to be tried again. `refused`:
        the tenant's limits refused it (given up, and counted in `refused_ticks`)."""
        update: dict[str, Any] = {
            "$set": {
                "firing": None,
                "updated_at": now,
                "last_error": {**error, "tick": tick, "at": now, "given_up": give_up},
            }
        }
        if give_up:
            update["$set"]["tick_failures"] = 0
            update["$max"] = {"next_run_at": nxt}
        else:
            update["$inc"] = {"tick_failures": 1}
        if refused:
            update["$inc"] = {"refused_ticks": 1}
        res = await self.col.update_one({"_id": schedule_id, "firing.token": token}, update)
        return res.modified_count == 1
