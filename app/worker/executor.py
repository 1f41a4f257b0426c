"""Runs one leased job: the handler under its timeout, the cancellation grace period, the
lease-lost stop, and progress reports; a suspect job's handler runs in quarantine
(quarantine.py). It decides the `Outcome`; `outcome.apply` writes it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import ValidationError

from .. import metrics, registry
from ..admission import limited_tenant
from ..context import JobContext, Retry, StepsRejected
from ..domain.userjson import field_path
from ..domain.workflow import AddSteps
from ..errors import InvalidTransition, LeaseLost, NotFound, RateLimited, ValidationFailed
from ..logs import job_context, job_logger
from ..notifications.budget import notify_budget
from . import outcome as oc
from . import quarantine


class Execution:
    """One attempt of one job on this worker. The processor sets `lost` when a heartbeat
    finds the lease gone, `cancel_requested` when a user cancels, and `releasing` on
    shutdown; the running attempt reacts within one event-loop turn."""

    def __init__(self, store, job: dict, worker: str, cancel_grace: float, admission=None) -> None:
        self.store = store
        self.admission = admission  # the worker's `Admission`: steps a handler adds count as created jobs
        self.job = job
        self.token: str = job["lease_token"]
        self.worker = worker
        self.cancel_grace = cancel_grace
        self.log = job_logger(job, worker=worker)
        self.lost = asyncio.Event()
        self.releasing = asyncio.Event()
        self.cancel_reason = "cancelled by user"  # or why the store asked it to stop (a failed workflow)
        self.ctx = JobContext(
            job_id=job["_id"],
            engine=job["engine"],
            operation=job["operation"],
            attempt=job["attempt"],
            params=job.get("parameters") or {},
            parents=job.get("parents") or {},
            workflow_id=job.get("workflow_id"),
            _sink=self._progress,
            _lease_token=self.token,
            _usage_sink=self._usage,
            _spawn=self._add_steps,
        )
        self.usage: dict[str, float] = {}  # this attempt's `ctx.usage` calls, added up

    @property
    def cancel_requested(self) -> asyncio.Event:
        return self.ctx.cancelled

    async def _progress(self, percent: float, stage: str | None, data: dict) -> None:
        try:
            await self.store.lifecycle.progress(self.job["_id"], self.token, percent, stage, data)
        except LeaseLost:
            self.lost.set()

    async def _usage(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.usage[k] = self.usage.get(k, 0) + v

    async def _add_steps(self, steps: list) -> dict[str, str]:
        """`ctx.add_steps`: the endpoint's checks (the model, a handler for each step, the
        tenant's admission), then the store's (app/store/spawn.py), fenced by this lease."""
        try:
            body = AddSteps.model_validate({"jobs": steps})
        except ValidationError as exc:
            e = exc.errors()[0]
            where = field_path(list(e.get("loc", ()))) or "jobs"
            raise StepsRejected(f"{where}: {e.get('msg', 'invalid')}", field=where) from None
        try:
            for i, s in enumerate(body.jobs):
                registry.require(s.engine, s.operation, field=f"jobs[{i}].operation")
            if self.admission is not None:
                await self.admission.jobs(limited_tenant(self.job.get("owner", "")), len(body.jobs))
            ids = await self.store.spawn.add(self.job["_id"], self.token, body.jobs)
        except LeaseLost:
            self.lost.set()
            raise
        except RateLimited as exc:
            raise Retry(after=exc.details.get("retry_after"), reason=exc.message) from None
        except (ValidationFailed, InvalidTransition, NotFound) as exc:
            raise StepsRejected(exc.message, field=exc.field) from None
        metrics.jobs_created(s.engine for s in body.jobs)
        return ids

    async def record_usage(self) -> None:
        """Write the attempt's usage, once, when it ends (app/store/usage.py)."""
        if self.usage:
            values, self.usage = self.usage, {}
            await self.store.usage.record(self.job, self.job["attempt"], values)
            metrics.usage_recorded(self.job["engine"], values)
            if values.get("cost"):
                await self.check_budget(values["cost"])

    async def check_budget(self, cost: float) -> None:
        """After the usage is written: add its cost to the tenant's period spend, notify the
        thresholds it crossed, and hold the tenant's work at 100 % (app/store/budgets.py).
        This attempt runs to its end either way."""
        tenant = self.job.get("tenant", "default")
        try:
            crossed = await self.store.budgets.charge(tenant, cost)
            if crossed:
                self.log.warning(
                    "budget.crossed", tenant=tenant, thresholds=[(c["period"], c["percent"]) for c in crossed]
                )
                await notify_budget(self.store, self.store.settings, tenant, crossed, self.job.get("owner"))
        except Exception as exc:  # the usage is written; the next costed attempt checks again
            self.log.warning("budget.check_failed", error=repr(exc))

    async def run(self) -> tuple[oc.Outcome, int]:
        """Run the handler; returns the outcome and the run time in ms."""
        start = time.monotonic()
        h = registry.get(self.job["engine"], self.job["operation"])
        if h is None:
            return oc.Failure(
                "no_handler", f"no handler for {self.job['engine']}.{self.job['operation']} on this worker"
            ), 0
        settings = self.store.settings
        isolated = settings.quarantine_suspects and quarantine.is_suspect(self.job)
        if isolated:
            self.log.warning(
                "job.quarantined",
                note="the previous attempt's worker died or stalled: this one runs in a child process",
            )
        with job_context(self.job, worker=self.worker):  # what the handler logs carries the job's fields
            coro = quarantine.run(self.ctx, settings.handler_modules(), h.fn) if isolated else h.fn(self.ctx)
            task = asyncio.create_task(coro)
        timeout = self.job.get("timeout_seconds")
        deadline = start + timeout if timeout else None
        result = await self._supervise(task, deadline)
        return result, int((time.monotonic() - start) * 1000)

    async def _supervise(self, task: asyncio.Task, deadline: float | None) -> oc.Outcome:
        signals = {
            "lost": asyncio.ensure_future(self.lost.wait()),
            "cancel": asyncio.ensure_future(self.cancel_requested.wait()),
            "release": asyncio.ensure_future(self.releasing.wait()),
        }
        try:
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                waiting = [task, *(f for f in signals.values() if not f.done())]
                done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if task in done:
                    return self._finished(task)
                if signals["lost"].done():
                    await _stop(task)
                    return oc.Lost()
                if signals["release"].done():
                    await _stop(task)
                    return oc.Released()
                if signals["cancel"].done():
                    return await self._cancel(task)
                if deadline is not None and time.monotonic() >= deadline:
                    await _stop(task)
                    return oc.Failure("timeout", f"ran longer than timeout_seconds={self.job['timeout_seconds']}")
        finally:
            for f in signals.values():
                f.cancel()

    async def _cancel(self, task: asyncio.Task) -> oc.Outcome:
        """The handler was told through `ctx.cancelled`; give it the grace period to stop."""
        reason = self.cancel_reason
        done, _ = await asyncio.wait([task], timeout=self.cancel_grace)
        if not done:
            self.log.warning("job.cancel_forced", grace_seconds=self.cancel_grace)
            await _stop(task)
            reason = f"{self.cancel_reason}; stopped after a {self.cancel_grace:g}s grace period"
        return oc.Cancelled(reason)

    def _finished(self, task: asyncio.Task) -> oc.Outcome:
        if task.cancelled():
            return oc.Cancelled("handler was cancelled")
        exc = task.exception()
        if exc is None:
            if self.cancel_requested.is_set():
                return oc.Cancelled(f"{self.cancel_reason}; the handler stopped early")
            return oc.classify_result(task.result())
        if isinstance(exc, asyncio.CancelledError) and self.cancel_requested.is_set():
            return oc.Cancelled(self.cancel_reason)
        self.log.info("job.handler_error", error_type=type(exc).__name__, error=str(exc)[:500])
        return oc.classify_exception(exc)


async def _stop(task: asyncio.Task) -> Any:
    task.cancel()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=5)
    except BaseException:  # the handler's own exception or cancellation; it is stopped either way
        pass


class ResultCache(dict):
    """Completed parents' results, newest kept, at most `size` of them."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __setitem__(self, key, value) -> None:
        if len(self) >= self.size:
            del self[next(iter(self))]
        super().__setitem__(key, value)
