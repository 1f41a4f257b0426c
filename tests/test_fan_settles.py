"""Fan-out and fan-in settles against the real server: what a wide fan-in costs per settle
(counted at the wire, scripts/wirecount.py), when its sink is released, and that a sink
reads every parent's result, in `depends_on` order, however its parents were numbered."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.domain.workflow import StepSpec, WorkflowSpec
from app.store import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from wirecount import WireCounter  # noqa: E402


def spec(keys_deps: list[tuple[str, list[str]]]) -> WorkflowSpec:
    return WorkflowSpec(
        name="fan",
        jobs=[StepSpec(key=k, engine="testing", operation="collect", depends_on=d) for k, d in keys_deps],
    )


async def complete(store, ids: list[str], results: dict | None = None) -> None:
    """Steps as a worker leaves them completed, before their settle."""
    for i in ids:
        await store.jobs.col.update_one(
            {"_id": i},
            {"$set": {"status": "completed", "completed_at": store.clock.now(), "result": (results or {}).get(i)}},
        )


@pytest.fixture
async def counted(db_url, store, settings):
    """The test's database through a counting proxy: `(store, counter)`."""
    counter = await WireCounter(urlsplit(db_url).netloc.rsplit("@", 1)[-1].split(",")[0]).start()
    st = connect(counter.url(db_url), settings, db_name=store.db.name)
    yield st, counter
    await st.close()
    await counter.stop()


async def test_a_wide_fan_in_settles_in_the_same_few_commands_for_one_parent_or_a_chunk(store, counted):
    mids = [f"m{i}" for i in range(200)]
    wf = await store.workflows.create(spec([("root", []), *[(m, ["root"]) for m in mids], ("sink", mids)]), "admin")
    ids = {k: v["job_id"] for k, v in wf["steps"].items()}
    await complete(store, [ids["root"], *(ids[m] for m in mids)])
    st, counter = counted
    sink = ids["sink"]
    await st.flow.settle_many([ids["root"], ids[mids[0]]])  # the root's own fan-out finds its children taken
    counter.reset()
    await st.flow.settle_many([ids[mids[1]]])
    one = sum(counter.counts.values())
    counter.reset()
    await st.flow.settle_many([ids[m] for m in mids[2:66]])
    chunk = sum(counter.counts.values())
    assert chunk <= one + 1, (one, chunk, dict(counter.counts))  # by_ids of 64 is one read
    assert one <= 8, dict(counter.counts)
    assert (await store.jobs.get(sink))["status"] == "pending"
    assert len((await store.jobs.get(sink))["waiting_on"]) == 200 - 66
    await st.flow.settle_many([ids[m] for m in mids[66:]])
    assert (await store.jobs.get(sink))["status"] == "queued"  # released by its last parent's settle
    assert (await store.workflows.get(wf["_id"]))["open"] == 1


async def test_a_fan_out_queues_every_child_and_the_workflow_finishes_with_its_last_step(store):
    kids = [f"c{i}" for i in range(150)]
    wf = await store.workflows.create(spec([("root", []), *[(c, ["root"]) for c in kids]]), "admin")
    ids = {k: v["job_id"] for k, v in wf["steps"].items()}
    await complete(store, [ids["root"]])
    await store.flow.settle_many([ids["root"]])
    assert {s["status"] for s in await store.jobs.by_ids([ids[c] for c in kids])} == {"queued"}
    await complete(store, [ids[c] for c in kids])
    await store.flow.settle_many([ids[c] for c in kids[:-1]])
    assert (await store.workflows.get(wf["_id"]))["status"] == "running"
    await store.flow.settle_many([ids[kids[-1]]])
    done = await store.workflows.get(wf["_id"])
    assert (done["status"], done["open"], done["n_failed"], done["n_cancelled"]) == ("completed", 0, 0, 0)


async def test_a_child_whose_parents_finish_together_is_queued(store):
    wf = await store.workflows.create(spec([("a", []), ("b", []), ("c", ["a", "b"]), ("d", ["a"])]), "admin")
    ids = {k: v["job_id"] for k, v in wf["steps"].items()}
    await complete(store, [ids["a"], ids["b"]])
    await store.flow.settle_many([ids["a"], ids["b"]])
    assert (await store.jobs.get(ids["c"]))["status"] == "queued"
    assert (await store.jobs.get(ids["d"]))["status"] == "queued"


async def test_a_failed_step_is_counted_when_the_workflow_finishes(store):
    wf = await store.workflows.create(spec([("a", []), ("b", [])]), "admin")
    ids = {k: v["job_id"] for k, v in wf["steps"].items()}
    await complete(store, [ids["a"]])
    await store.jobs.col.update_one({"_id": ids["b"]}, {"$set": {"status": "failed"}})
    await store.workflows.col.update_one({"_id": wf["_id"]}, {"$set": {"open": 0}})  # a drifted counter
    assert await store.flow.recount(wf["_id"]) == "failed"
    assert (await store.workflows.get(wf["_id"]))["n_failed"] == 1


@pytest.mark.parametrize("others", [0, 1, 3])
async def test_a_sink_reads_every_parent_in_order_and_nothing_else(store, others):
    """Parents numbered together (`others` other steps between each two of them, so the
    range read applies for 0 and 1 and not for 3): the sink gets exactly its parents."""
    layout: list[tuple[str, list[str]]] = []
    parents = [f"p{i}" for i in range(100)]
    for p in parents:
        layout.append((p, []))
        layout += [(f"{p}x{j}", []) for j in range(others)]
    wanted = list(reversed(parents))  # `depends_on` order, not the numbering
    wf = await store.workflows.create(spec([*layout, ("sink", wanted)]), "admin")
    ids = {k: v["job_id"] for k, v in wf["steps"].items()}
    await complete(store, [ids[k] for k, _ in layout], {ids[k]: {"from": k} for k, _ in layout})
    sink = await store.jobs.get(ids["sink"])
    got = await store.jobs.parent_results(sink, {})
    assert list(got) == wanted
    assert got == {p: {"from": p} for p in parents}
