"""Every write the store sends carries `w: majority` and `j: true` (DESIGN.md §6: a write
acknowledged at `w: 1` can be rolled back after an election), seen at the driver by a
command listener on a real workload."""

from __future__ import annotations

import uuid

from pymongo import monitoring

from app import registry
from app.domain.models import JobSpec
from app.domain.workflow import StepSpec, WorkflowSpec
from app.store import connect

WRITES = {"insert", "update", "delete", "findAndModify", "createIndexes"}


class Recorder(monitoring.CommandListener):
    def __init__(self, db: str) -> None:
        self.db, self.writes = db, []

    def started(self, event) -> None:
        if event.database_name == self.db and event.command_name in WRITES - {"createIndexes"}:
            self.writes.append((event.command_name, event.command.get("writeConcern")))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


async def test_every_write_is_majority_and_journaled(db_url, settings):
    registry.load(settings.handler_modules())
    name = f"t_{uuid.uuid4().hex[:12]}"
    rec = Recorder(name)
    st = connect(db_url, settings, db_name=name, event_listeners=[rec])
    await st.start()
    try:
        job, _ = await st.lifecycle.submit(JobSpec(engine="wc", operation="ok"), owner="admin")
        (claimed,) = await st.claimer.claim(await st.engines.get("wc"), "w1", 1)
        await st.lifecycle.complete(claimed, claimed["lease_token"], {"ok": 1}, 1)
        await st.workflows.create(
            WorkflowSpec(
                name="w",
                jobs=[
                    StepSpec(key="a", engine="wc", operation="ok"),
                    StepSpec(key="b", engine="wc", operation="ok", depends_on=["a"]),
                ],
            ),
            owner="admin",
        )
        other, _ = await st.lifecycle.submit(JobSpec(engine="wc", operation="ok"), owner="admin")
        await st.lifecycle.cancel(other["_id"])
        await st.lifecycle.drain()
        await st.numbers.flush()
    finally:
        await st.client.drop_database(name)
        await st.close()
    assert len(rec.writes) >= 8
    bad = [(c, wc) for c, wc in rec.writes if not wc or wc.get("w") != "majority" or wc.get("j") is not True]
    assert not bad, bad
