"""Transient command failures, found by `scripts/chaos`'s `failCommand` scenario
(docs/reliability.md), on a server of its own started with `--enable-test-commands`:

- a fault after a claim's write stranded the jobs it had just claimed: they sat `running`
  and unrun until their lease expired, and each lost an attempt;
- a fault on a job's terminal write (completion, retry, failure) left the job `running`
  until its lease expired, and a completed job then ran again.
"""

from __future__ import annotations

import uuid

import pytest

from app import embedded
from app.domain.models import JobSpec
from app.store import connect
from app.worker import outcome as oc
from tests.conftest import make_settings


@pytest.fixture(scope="module")
def fault_url():
    server = embedded.spawn(":memory:", extra=["--enable-test-commands"])
    yield server.url
    server.stop()


@pytest.fixture
async def fstore(fault_url):
    st = connect(fault_url, make_settings(), db_name=f"f_{uuid.uuid4().hex[:10]}")
    await st.start()
    yield st
    await fail_next(st, "off")
    await st.client.drop_database(st.db.name)
    await st.close()


async def fail_next(st, mode, commands=("update",)) -> None:
    """Fail matching commands with InternalError (code 1, which the driver does not retry)."""
    await st.client.admin.command(
        {"configureFailPoint": "failCommand", "mode": mode, "data": {"failCommands": list(commands), "errorCode": 1}}
    )


async def queued_job(st, **kw) -> dict:
    job, _ = await st.lifecycle.submit(JobSpec(engine="fx", operation="ok", **kw), owner="t")
    await st.numbers.flush()  # its enqueue marker is cleared: no update left in flight
    return job


async def test_a_fault_after_the_claim_write_does_not_strand_the_jobs(fstore):
    job = await queued_job(fstore)
    engine = await fstore.engines.get("fx")
    await fail_next(fstore, {"skip": 1, "times": 1})  # the claim's update_many passes, its bookkeeping fails
    claimed = await fstore.claimer.claim(engine, "w1", 4)
    assert [c["_id"] for c in claimed] == [job["_id"]]
    doc = await fstore.jobs.get(job["_id"])
    assert doc["status"] == "running" and doc["lease_token"] == claimed[0]["lease_token"]


@pytest.mark.parametrize(
    "outcome, status",
    [
        (oc.Success({"ok": 1}), "completed"),
        (oc.Failure("ConnectionError", "try again"), "scheduled"),
        (oc.Failure("bad_input", "never", permanent=True), "failed"),
    ],
)
async def test_a_terminal_write_survives_a_transient_fault(fstore, outcome, status):
    await queued_job(fstore)
    (job,) = await fstore.claimer.claim(await fstore.engines.get("fx"), "w1", 1)
    await fail_next(fstore, {"times": 1})
    assert await oc.apply(fstore, job, job["lease_token"], outcome, 5, "w1") == status
    doc = await fstore.jobs.get(job["_id"])
    assert doc["status"] == status and "lease_token" not in doc
    if status == "completed":
        assert doc["finished_token"] == job["lease_token"] and doc["result"] == {"ok": 1}
