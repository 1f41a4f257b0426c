"""Cron schedules, pure: what a client may say about a schedule (`ScheduleSpec`), when its
ticks fall (`Cron`), and which ticks to run when the scheduler is late (`plan`). No I/O.

Cron expressions have 5 fields, or 6 with seconds as the *last* field (croniter's
convention), and are read in the schedule's IANA time zone. Invariants the scheduler builds
on: ticks are whole seconds, and the ticks of one schedule strictly increase in UTC, so a
tick once passed is never produced again.

Daylight saving time:
- A wall time that does not exist (spring forward) fires once, at the end of the gap
  (02:30 on the night clocks jump from 02:00 to 03:00 fires at 03:00).
- A wall time that happens twice (fall back) fires once, at its first occurrence, when the
  hour field names fixed hours (`30 1 * * *`). When the hour field starts with `*`
  (`*/15 * * * *`, `0 * * * *`) the schedule is an interval, and both passes fire, so
  elapsed time between runs stays even.

Misfires (the scheduler was down or late, so several ticks are due at once):
- `skip`: run the most recent due tick once and continue from the next future tick; the
  older due ticks are skipped (and reported as a misfire).
- `catch_up`: run every due tick, oldest first, but at most the `cap` most recent ones
  (`SWITCHYARD_SCHEDULE_MAX_CATCHUP`); older ones are skipped and reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .models import JobSpec
from .workflow import WorkflowSpec

UTC = UTC
MisfirePolicy = Literal["skip", "catch_up"]


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`; ValueError when there is none. (Errors never repeat the
    submitted text: they say which rule it broke.)"""
    unknown = "unknown time zone; use an IANA name such as 'Europe/Paris' or 'UTC'"
    if not name or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(unknown)
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(unknown) from None


@dataclass(frozen=True)
class Cron:
    expr: str
    tz: ZoneInfo
    interval_hours: bool = field(default=False)  # hour field starts with '*': both DST passes fire

    @classmethod
    def parse(cls, expr: str, tz: str = "UTC") -> Cron:
        """Validate `expr` in zone `tz`. Raises ValueError saying what is wrong."""
        fields = expr.split()
        if len(fields) not in (5, 6):
            raise ValueError(f"a cron expression has 5 fields, or 6 with seconds last; this one has {len(fields)}")
        if not croniter.is_valid(" ".join(fields)):
            raise ValueError("not a valid cron expression: a field is out of range or malformed")
        cron = cls(" ".join(fields), zone(tz), fields[1].startswith("*"))
        try:
            cron.next_after(datetime(2000, 1, 1, tzinfo=UTC))
        except Exception:  # croniter: e.g. "0 0 30 2 *" has no date
            raise ValueError("the cron expression never fires") from None
        return cron

    def _keep(self, tick: datetime) -> bool:
        """False for the second pass of an ambiguous wall time on a fixed-hour schedule."""
        if self.interval_hours:
            return True
        wall = tick.astimezone(self.tz).replace(tzinfo=None)
        first, second = wall.replace(tzinfo=self.tz, fold=0), wall.replace(tzinfo=self.tz, fold=1)
        if first.utcoffset() == second.utcoffset():
            return True
        return tick.astimezone(UTC) == first.astimezone(UTC)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after `t`, in UTC."""
        it = croniter(self.expr, t.astimezone(self.tz))
        while True:
            tick = it.get_next(datetime).astimezone(UTC)
            if tick > t and self._keep(tick):
                return tick

    def back_from(self, t: datetime, floor: datetime, n: int) -> list[datetime]:
        """Up to `n` ticks in `[floor, t]`, newest first, in UTC."""
        it = croniter(self.expr, (t + timedelta(microseconds=1)).astimezone(self.tz))
        out: list[datetime] = []
        while len(out) < n:
            tick = it.get_prev(datetime).astimezone(UTC)
            if tick < floor:
                break
            if tick <= t and self._keep(tick) and (not out or tick < out[-1]):
                out.append(tick)
        return out


@dataclass(frozen=True)
class Plan:
    """What to do with a schedule whose next tick `cur` is due: run `run` (oldest first),
    then continue at `resume` (> now). `skipped` is `(first, last)` of the due ticks not run."""

    run: list[datetime]
    resume: datetime
    skipped: tuple[datetime, datetime] | None = None


def plan(cron: Cron, cur: datetime, now: datetime, policy: MisfirePolicy, cap: int) -> Plan | None:
    """None when nothing is due. `cur` is the schedule's stored next tick (always a tick)."""
    if cur > now:
        return None
    run = list(reversed(cron.back_from(now, cur, 1 if policy == "skip" else max(cap, 1)))) or [cur]
    skipped = None
    if run[0] > cur:
        before = cron.back_from(run[0] - timedelta(microseconds=1), cur, 1)
        skipped = (cur, before[0] if before else cur)
    return Plan(run=run, resume=cron.next_after(run[-1]), skipped=skipped)


# --- what a client sends -------------------------------------------------------------------
class JobTemplate(JobSpec):
    """A job to submit at every tick: a `JobSpec` without a fixed time or dedupe key, since
    each tick has its own time and its own idempotency (see app/store/schedules.py)."""

    @field_validator("run_at")
    @classmethod
    def _no_run_at(cls, v: datetime | None) -> datetime | None:
        if v is not None:
            raise ValueError("a scheduled job cannot have a fixed run_at; use delay_seconds")
        return v

    @field_validator("dedupe_key")
    @classmethod
    def _no_dedupe(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("a scheduled job cannot have a dedupe_key; every tick runs exactly once already")
        return v


class ScheduleSpec(BaseModel):
    """`POST /api/v1/jobs/schedules`. Exactly one of `job` and `workflow` (checked by the
    API with `check_target`, so the error can name the field; said in the schema too)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["job"], "not": {"required": ["workflow"]}},
                {"required": ["workflow"], "not": {"required": ["job"]}},
            ],
            "description": "A cron schedule of a job or a workflow: give exactly one of `job` and `workflow`.",
        },
    )

    name: str = Field(min_length=1, max_length=200)
    cron: str = Field(min_length=1, max_length=200, description="5 fields, or 6 with seconds last")
    timezone: str = Field("UTC", min_length=1, max_length=64, description="IANA zone the cron is read in")
    misfire_policy: MisfirePolicy = "skip"
    job: JobTemplate | None = None
    workflow: WorkflowSpec | None = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        return Cron.parse(v).expr

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        zone(v)
        return v

    @field_validator("workflow")
    @classmethod
    def _workflow(cls, v: WorkflowSpec | None) -> WorkflowSpec | None:
        if v is not None:  # its metadata and parameters are checked by WorkflowSpec itself
            for i, s in enumerate(v.jobs):
                if s.run_at is not None or s.dedupe_key is not None:
                    raise ValueError(f"jobs[{i}]: a scheduled workflow's steps cannot have run_at or dedupe_key")
        return v

    def cron_spec(self) -> Cron:
        return Cron.parse(self.cron, self.timezone)

    def target(self) -> tuple[str, dict[str, Any]]:
        """`("job" | "workflow", template as stored)`."""
        if self.job is not None:
            return "job", self.job.model_dump(mode="json", exclude_unset=True)
        assert self.workflow is not None
        return "workflow", self.workflow.model_dump(mode="json", exclude_unset=True)
