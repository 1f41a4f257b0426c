"""The scheduler: fires the due ticks of cron schedules. Maintenance runs `tick()` in its due
pass, at the earliest `next_run_at` (app/worker/maintenance.py); any number may run at once.

It owns the order of moves, not their safety: every move is a guarded write in
`app/store/schedules.py` (claim, launch, commit), which is where exactly-once is argued.
Before launching, a tick asks `Admission` (app/admission.py), the same as a REST submit: a
tick over its tenant's rate or quota is given up with the reason in `last_error`, its owner
is notified (once per run of refusals), and the schedule goes on to its next tick.
The clock is injectable (`clock`, or `tick(now)`) so tests drive time instead of waiting;
by default it is the database clock, which every process shares.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from .. import metrics
from ..admission import Admission, limited_tenant
from ..domain.schedule import Cron, plan
from ..errors import RateLimited, SwitchyardError
from ..logs import get_logger
from ..notifications.service import notify_schedule_refused

# A claim older than this is taken as its process's death. Launching one tick is a single
# insert (or one workflow's inserts), far below this.
STALE_CLAIM = timedelta(seconds=60)
# A launch that fails with an unexpected error is retried on later passes this many times in
# all before its tick is given up (errors we raise on purpose give it up at once).
MAX_TICK_ATTEMPTS = 3


class Scheduler:
    def __init__(self, store, settings, clock: Callable[[], datetime] | None = None) -> None:
        self.store, self.settings = store, settings
        self.clock = clock or store.clock.now
        self.admission = Admission(store, settings)
        self.log = get_logger("switchyard.scheduler")

    async def tick(self, now: datetime | None = None) -> int:
        """One pass over every due schedule. Returns how many ticks it launched."""
        now = now or self.clock()
        launched = 0
        for doc in await self.store.schedules.due(now):
            try:
                launched += await self._run(doc, now)
            except Exception as exc:  # one schedule's trouble must not stop the others
                self.log.warning("schedule.error", schedule_id=doc["_id"], error=repr(exc))
        return launched

    async def _run(self, doc: dict, now: datetime) -> int:
        firing = doc.get("firing")
        if firing:
            if firing["at"] > now - STALE_CLAIM:
                return 0  # another process is launching this tick right now
            token = uuid.uuid4().hex
            if not await self.store.schedules.take_over(doc["_id"], firing["token"], token, now):
                return 0
            self.log.warning("schedule.claim_taken_over", schedule_id=doc["_id"], tick=firing["tick"].isoformat())
            return int(await self._launch(doc, firing["tick"], firing["next"], token, now, recovering=True))

        p = plan(
            Cron.parse(doc["cron"], doc["timezone"]),
            doc["next_run_at"],
            now,
            doc["misfire_policy"],
            self.settings.schedule_max_catchup,
        )
        if p is None:
            return 0
        if p.skipped:
            self.log.warning(
                "schedule.misfire",
                schedule_id=doc["_id"],
                policy=doc["misfire_policy"],
                skipped_from=p.skipped[0].isoformat(),
                skipped_until=p.skipped[1].isoformat(),
            )
        launched, cur = 0, doc["next_run_at"]
        for i, tick in enumerate(p.run):
            nxt = p.run[i + 1] if i + 1 < len(p.run) else p.resume
            token = uuid.uuid4().hex
            if not await self.store.schedules.claim(
                doc["_id"], cur, tick, nxt, token, now, skipped=p.skipped if i == 0 else None
            ):
                break  # another process has it (or it was paused or deleted)
            if not await self._launch(doc, tick, nxt, token, now):
                break
            launched, cur, doc = launched + 1, nxt, {**doc, "last_error": None}  # as commit left it
        return launched

    async def _launch(
        self, doc: dict, tick: datetime, nxt: datetime, token: str, now: datetime, recovering: bool = False
    ) -> bool:
        """Launch one claimed tick and commit it; on failure, release or give up the tick."""
        st, sid = self.store.schedules, doc["_id"]
        if recovering and doc["target"] == "workflow":
            # At most once: the dead process may or may not have created it.
            await st.release(
                sid,
                token,
                tick,
                nxt,
                {
                    "code": "outcome_unknown",
                    "message": "the process firing this tick stopped before recording its workflow; not re-run",
                },
                give_up=True,
                now=now,
            )
            return False
        try:
            if not recovering:  # a taken-over tick was admitted by the process that claimed it
                await self.admission.jobs(limited_tenant(doc["owner"]), steps_of(doc))
        except RateLimited as exc:
            error = {"code": exc.code, "message": exc.message}
            await st.release(sid, token, tick, nxt, error, give_up=True, now=now, refused=True)
            self.log.warning("schedule.refused", schedule_id=sid, tick=tick.isoformat(), error=exc.message)
            if (doc.get("last_error") or {}).get("code") != exc.code:  # the first of a run of refusals
                await notify_schedule_refused(self.store, self.settings, doc, tick, error, now)
            return False
        try:
            target, target_id, created = await st.launch(doc, tick, recovering=recovering)
        except Exception as exc:
            give_up = isinstance(exc, SwitchyardError) or doc.get("tick_failures", 0) + 1 >= MAX_TICK_ATTEMPTS
            code = getattr(exc, "code", type(exc).__name__)
            await st.release(
                sid, token, tick, nxt, {"code": code, "message": str(exc)[:2000]}, give_up=give_up, now=now
            )
            self.log.warning(
                "schedule.launch_failed", schedule_id=sid, tick=tick.isoformat(), error=repr(exc), given_up=give_up
            )
            return False
        metrics.jobs_created(created)
        if not await st.commit(sid, token, tick, nxt, target, target_id, now):
            self.log.warning(
                "schedule.claim_lost", schedule_id=sid, tick=tick.isoformat(), **{f"{target}_id": target_id}
            )
        self.log.info("schedule.fired", schedule_id=sid, tick=tick.isoformat(), **{f"{target}_id": target_id})
        return True


def steps_of(doc: dict) -> int:
    """How many jobs one tick of a schedule creates."""
    return len(doc["template"].get("jobs") or ()) if doc["target"] == "workflow" else 1
