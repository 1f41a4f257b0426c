"""Enqueue from Python without HTTP (docs/producer.md): `AsyncProducer` on the application's
own `AsyncMongoClient` (or a URL), and `Producer`, the same calls blocking.

It validates as REST does (the same `JobSpec` and `WorkflowSpec`, a registered handler when
handlers are loaded, the tenant's rate limit and quota through the same `Admission`) and
writes through the same store primitives (`Lifecycle.submit_many`, `WorkflowStore.create`).

**Transactional enqueue.** Inside `async with producer.transaction(session):` the jobs are
written in the caller's transaction, so they exist only if it commits. What every claimer
shares is kept out of the transaction: a band's seqs are taken and counted in the engine's
document before the insert, under an in-flight marker that holds the band's cursor, so no
claimer passes the uncommitted jobs. After the commit the markers go and idle workers are
woken; after an abort the counts are given back as well. A process that dies between the two
leaves a marker that maintenance drops after 60 s, and a count the reconciler mends.
Transactions need a replica set (or the embedded server).
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager
from typing import Any

from . import registry
from .admission import Admission
from .domain.models import JobSpec, tenant_of
from .domain.states import JobStatus
from .domain.workflow import WorkflowSpec
from .errors import ValidationFailed
from .settings import Settings
from .store.db import AsyncMongoClient, Store, connect
from .store.enqueue import TxLedger

QUEUED = JobStatus.QUEUED.value


class AsyncProducer:
    """`owner` (`<tenant>/<user>`) is who the jobs belong to, as an API key's user would be."""

    def __init__(
        self,
        client: AsyncMongoClient | str,
        *,
        owner: str,
        db_name: str | None = None,
        settings: Settings | None = None,
        check_handlers: bool = False,
    ) -> None:
        self.settings = settings or Settings()
        if isinstance(client, str):
            self.store = connect(client, self.settings, db_name)
        else:
            self.store = Store(client, self.settings, db_name)
        self.owner, self.tenant = owner, tenant_of(owner)
        self.check_handlers = check_handlers  # on when this process loaded the handlers
        self.admission = Admission(self.store, self.settings)
        self._tx: dict[int, TxLedger] = {}  # id(session) -> the open transaction's bookkeeping

    async def enqueue(self, spec: JobSpec | dict, *, session=None) -> str:
        return (await self.enqueue_many([spec], session=session))[0]

    async def enqueue_many(self, specs: list[JobSpec | dict], *, session=None) -> list[str]:
        """The jobs' ids, in order (a dedupe hit: the live job's id). All are validated first;
        `session` must be inside `transaction(session)`."""
        jobs = [self._spec(s, i) for i, s in enumerate(specs)]
        tx = self._joined(session)
        await self.admission.jobs(self.tenant if self.tenant != "default" else None, len(jobs))
        if tx is None:
            done = await self.store.lifecycle.submit_many(jobs, self.owner)
        else:
            done = await self.store.lifecycle.submit_many(jobs, self.owner, session=session, deferred=tx.markers)
            tx.queued.update(job["engine"] for job, new in done if new and job["status"] == QUEUED)
        return [job["_id"] for job, _ in done]

    async def submit_workflow(self, spec: WorkflowSpec | dict, *, session=None) -> dict[str, Any]:
        """`{id, jobs: {key: job id}}`; validated and admitted as `POST /jobs/workflows`.
        `session` must be inside `transaction(session)`: the workflow exists only if it commits."""
        wf = spec if isinstance(spec, WorkflowSpec) else WorkflowSpec.model_validate(spec)
        tx = self._joined(session)
        if self.check_handlers:
            for i, s in enumerate(wf.jobs):
                if s.type == "job":
                    registry.require(s.engine, s.operation, field=f"jobs[{i}].operation")
        await self.admission.jobs(self.tenant if self.tenant != "default" else None, len(wf.jobs))
        created = await self.store.workflows.create(wf, self.owner, session=session, tx=tx)
        return {"id": created["_id"], "jobs": {k: v["job_id"] for k, v in created["steps"].items()}}

    def _joined(self, session) -> TxLedger | None:
        """The open `transaction(session)`'s ledger; None without a session."""
        if session is None:
            return None
        if (tx := self._tx.get(id(session))) is None:
            raise ValidationFailed(
                "session: enqueue inside `async with producer.transaction(session)`", field="session"
            )
        return tx

    @asynccontextmanager
    async def transaction(self, session):
        """Run the block in a transaction of `session` (from the same client): committed at
        the end, aborted on an exception; the producer's bookkeeping follows either way."""
        tx = self._tx[id(session)] = TxLedger()
        try:
            async with await session.start_transaction():
                yield session
        except BaseException:
            for engine, n in tx.queued.items():  # the jobs never existed
                await self.store.numbers.count_left_queue(engine, n)
            tx.ready.clear()
            raise
        finally:
            del self._tx[id(session)]
            self.store.numbers.land(tx.markers)  # after the commit or abort: wake the workers
            await self.store.numbers.flush()
        if tx.ready:  # committed: workflow roots of another kind (an approval, a sleep) move
            await self.store.steps.ready(tx.ready)

    def _spec(self, spec: JobSpec | dict, i: int) -> JobSpec:
        job = spec if isinstance(spec, JobSpec) else JobSpec.model_validate(spec)
        if job.debounce is not None:
            raise ValidationFailed(f"jobs[{i}].debounce: submit a debounced job over REST", field=f"jobs[{i}].debounce")
        if self.check_handlers:
            registry.require(job.engine, job.operation, field=f"jobs[{i}].operation")
        return job

    async def start(self) -> AsyncProducer:
        await self.store.start()
        return self

    async def close(self) -> None:
        await self.store.numbers.flush()

    async def __aenter__(self) -> AsyncProducer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()


class Producer:
    """`AsyncProducer`'s calls, blocking, on a loop of its own (a URL: a sync `MongoClient`'s
    sessions cannot join an async client's transaction, so this one has no `session`)."""

    def __init__(self, url: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="switchyard-producer", daemon=True)
        self._thread.start()
        self._async = self._run(self._make(url, kw))

    async def _make(self, url: str, kw: dict) -> AsyncProducer:
        return await AsyncProducer(url, **kw).start()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def enqueue(self, spec: JobSpec | dict) -> str:
        return self._run(self._async.enqueue(spec))

    def enqueue_many(self, specs: list[JobSpec | dict]) -> list[str]:
        return self._run(self._async.enqueue_many(specs))

    def submit_workflow(self, spec: WorkflowSpec | dict) -> dict[str, Any]:
        return self._run(self._async.submit_workflow(spec))

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
