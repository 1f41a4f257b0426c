"""Engine counters that cannot drift (`enqueue.py`, `EngineStore.reconcile`): every path that
takes a seq gives the count back when its write fails, and the reconciler re-derives the
counters from the jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pymongo.errors import AutoReconnect

from app import metrics
from app.domain.models import JobSpec
from app.worker.maintenance import Maintenance
from tests.factories import dying_lifecycle


class Faulty:
    """A `jobs` collection whose next `method` call fails: before it reaches the server
    (`land=False`), or after it landed, as a lost reply (`land=True`)."""

    def __init__(self, col, method: str, land: bool, then=None) -> None:
        self._col, self._method, self._land, self._then, self.fired = col, method, land, then, 0

    def __getattr__(self, name):
        real = getattr(self._col, name)
        if name != self._method or self.fired:
            return real

        async def failing(*a, **kw):
            self.fired += 1
            if self._land:
                await real(*a, **kw)
            if self._then is not None:
                await self._then()
            raise AutoReconnect("injected: connection dropped")

        return failing


async def truth(store, engine: str) -> tuple[int, int]:
    await store.numbers.flush()  # an open seq block counts its unused numbers until it closes
    doc = await store.engines.get(engine)
    return doc.get("queued", 0), await store.jobs.count_queued(engine)


def spec(**kw) -> JobSpec:
    return JobSpec(engine="counted", operation="ok", **kw)


async def test_a_submit_that_cannot_be_encoded_leaves_no_phantom_count(store, jobs):
    await jobs.queued(engine="counted")
    bad = spec()
    bad.parameters = {"n": 2**63}  # past the API's validation (it refuses this): the store's own guard
    with pytest.raises(OverflowError):
        await store.lifecycle.submit(bad, owner="admin")
    assert await truth(store, "counted") == (1, 1)


@pytest.mark.parametrize("method", ["insert_many", "bulk_write", "update_many"])
async def test_a_failed_write_after_the_seq_was_taken_gives_the_count_back(store, jobs, method):
    """insert_many: a submit; bulk_write: a promotion (scheduled → queued); update_many: a
    workflow step made ready."""
    await jobs.queued(engine="counted")
    store.enqueuer.col = Faulty(store.enqueuer.col, method, land=False)
    with pytest.raises(AutoReconnect):
        if method == "insert_many":
            await store.lifecycle.submit(spec(), owner="admin")
        elif method == "bulk_write":
            job = await jobs.scheduled(engine="counted", delay_seconds=0.01)
            await store.lifecycle.promote_due(store.clock.now() + timedelta(seconds=5))
        else:
            await _ready_a_step(store)
    assert store.enqueuer.col.fired == 1
    assert await truth(store, "counted") == (1, 1)
    if method == "bulk_write":
        assert (await store.jobs.get(job["_id"]))["status"] == "scheduled"


async def _ready_a_step(store):
    from app.domain.workflow import StepSpec, WorkflowSpec

    wf = await store.workflows.create(
        WorkflowSpec(
            name="w",
            jobs=[
                StepSpec(key="a", engine="other", operation="ok"),
                StepSpec(key="b", engine="counted", operation="ok", depends_on=["a"]),
            ],
        ),
        owner="admin",
    )
    (a,) = await store.claimer.claim(await store.engines.get("other"), "w1", 1)
    await dying_lifecycle(store).complete(a, a["lease_token"], {}, 1)
    await store.flow.settle_many([wf["steps"]["a"]["job_id"]])


async def test_a_write_whose_reply_was_lost_counts_what_landed(store, jobs):
    await jobs.queued(engine="counted")
    store.enqueuer.col = Faulty(store.enqueuer.col, "insert_many", land=True)
    job, created = await store.lifecycle.submit(spec(), owner="admin")  # it landed: a success
    assert created and (await store.jobs.get(job["_id"]))["status"] == "queued"
    assert await truth(store, "counted") == (2, 2)


async def test_a_lost_insert_reply_read_back_after_a_worker_claimed_the_job(store, jobs):
    """The job landed and a worker took it before the submitter read back: it landed all the
    same (a claim keeps the seq), and the claim already counted it out of queued."""
    await jobs.queued(engine="counted")
    taken = []

    async def a_worker_claims():
        taken.extend(await store.claimer.claim(await store.engines.get("counted"), "w1", 5))

    store.enqueuer.col = Faulty(store.enqueuer.col, "insert_many", land=True, then=a_worker_claims)
    job, created = await store.lifecycle.submit(spec(), owner="admin")
    assert created and job["_id"] in {t["_id"] for t in taken}
    doc = await store.engines.get("counted")
    assert doc["queued"] == 0 == await store.jobs.count_queued("counted")


async def test_the_reconciler_corrects_drift_and_reports_it(store, jobs):
    for _ in range(3):
        await jobs.queued(engine="counted")
    await store.engines.col.update_one({"_id": "counted"}, {"$inc": {"queued": 9, "running": 2}})
    before = metrics.COUNTER_CORRECTIONS.labels("counted", "queued")._value.get()
    fixed = await Maintenance(store, store.settings).reconcile()
    assert fixed == 2
    doc = await store.engines.get("counted")
    assert doc["queued"] == 3 and doc["running"] == sum((doc.get("holds") or {}).values()) == 0
    assert metrics.COUNTER_CORRECTIONS.labels("counted", "queued")._value.get() == before + 1
    assert await store.engines.reconcile(store.jobs.count_queued, pause=0.05) == []  # at rest: nothing to do


async def test_the_reconciler_leaves_an_engine_alone_while_an_enqueue_is_in_flight(store, jobs):
    await jobs.queued(engine="counted")
    async with store.numbers.enqueue("counted", "p5", 1):  # counted, not written yet
        assert await store.engines.reconcile(store.jobs.count_queued, pause=0.05) == []
        assert (await store.engines.get("counted"))["queued"] == 2
    await store.numbers.count_left_queue("counted", 1)
    assert await truth(store, "counted") == (1, 1)


async def test_reconcile_on_demand_over_the_api(api, store, jobs):
    await jobs.queued(engine="counted")
    await store.engines.col.update_one({"_id": "counted"}, {"$inc": {"queued": 4}})
    r = await api.post("/api/v1/admin/engines/reconcile")
    assert r.status_code == 200, r.text
    assert r.json()["corrections"] == [{"engine": "counted", "counter": "queued", "was": 5, "now": 1}]
    assert await truth(store, "counted") == (1, 1)
