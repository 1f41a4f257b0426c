"""Per-key limits and tenant weights (docs/limits.md), against the real server: a per-key
concurrency limit is never exceeded across three `switchyard worker` processes (sampled from
a ledger, as the chaos checker does), a per-key rate holds per key, back-pressure on a key
holds only that key, weights give shares within 10 % of their ratios, "why" and queue
status name the key, two tenants never share a key, and bad limits are 422s naming the
field that change nothing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict

import pytest

from app import JobContext, RateLimited, handler
from app.domain.limitkeys import shares
from app.store.why import explain
from app.worker.processor import JobProcessor
from tests.helpers import eventually, wait_status
from tests.procs import start_worker, stop

LIMITS = "/api/v1/jobs/queue/{}/limits"
PUSHED: set[str] = set()


@handler(engine="keyed", operation="call")
async def call(ctx: JobContext) -> dict:
    """Pushed back on its key the first time, when asked to; else returns at once."""
    if ctx.params.get("push") and ctx.job_id not in PUSHED:
        PUSHED.add(ctx.job_id)
        raise RateLimited(ctx.params["push"], key="key")
    return {"account": ctx.params.get("account"), "attempt": ctx.attempt}


@pytest.fixture
async def keyed_worker(store, settings):
    proc = JobProcessor(store, settings, concurrency=8, engines=["keyed"])
    await proc.start()
    yield proc
    await proc.stop(grace=1)


def overlaps(ledger: list[dict], account_of: dict[str, str]) -> dict[str, int]:
    """The most jobs of each account that ran at the same time, from start and end lines."""
    marks = sorted(
        (e["t"], 0 if e["event"] == "end" else 1, account_of[e["job"]]) for e in ledger
    )  # at the same instant, an end counts before a start
    now: Counter = Counter()
    peak: Counter = Counter()
    for _, start, account in marks:
        now[account] += 1 if start else -1
        peak[account] = max(peak[account], now[account])
    return dict(peak)


async def test_key_concurrency_is_never_exceeded_across_three_processes(db_url, store, jobs, tmp_path):
    await store.engines.set_limits("ledger", limit=50, key="params.account", key_concurrency=2)
    ledger = tmp_path / "ledger.jsonl"
    account_of = {}
    for i in range(45):
        account = f"acct-{i % 3}"
        params = {"ledger": str(ledger), "seconds": 0.15, "account": account}
        job = await jobs.queued(engine="ledger", operation="work", parameters=params)
        account_of[job["_id"]] = account
    procs = [start_worker(db_url, store.db.name, concurrency=6, engines="ledger") for _ in range(3)]
    try:
        for job_id in account_of:
            await wait_status(store, job_id, "completed", timeout=60)
    finally:
        for p in procs:
            stop(p)
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    peak = overlaps(entries, account_of)
    assert peak == {"acct-0": 2, "acct-1": 2, "acct-2": 2}, peak  # held at 2, and reached
    assert len({e["pid"] for e in entries}) >= 2  # the processes shared the work
    doc = await store.engines.get("ledger")
    assert all(k.get("running", 0) == 0 for k in doc["keys"].values()), doc["keys"]
    assert not any((doc.get("kholds") or {}).values()), doc.get("kholds")


async def test_a_key_rate_holds_per_key(store, jobs, keyed_worker):
    await store.engines.set_limits("keyed", key="params.account", key_rate="4/s", key_burst=1)
    ids = defaultdict(list)
    for i in range(24):
        job = await jobs.queued(engine="keyed", operation="call", parameters={"account": "ab"[i % 2]})
        ids["ab"[i % 2]].append(job["_id"])
    for job_id in ids["a"] + ids["b"]:
        await wait_status(store, job_id, "completed", timeout=30)
    for account, mine in ids.items():
        starts = sorted(d["started_at"] for d in await store.jobs.col.find({"_id": {"$in": mine}}).to_list(None))
        span = (starts[-1] - starts[0]).total_seconds()
        # 12 starts at 4/s with a burst of 1: 11 intervals of 0.25 s, whatever the other key does
        assert 11 / 4 * 0.9 <= span <= 11 / 4 * 1.5, (account, span)


async def test_back_pressure_on_a_key_holds_only_that_key_and_charges_nothing(store, jobs, keyed_worker, api):
    await store.engines.set_limits("keyed", key="params.account")
    pushed = await jobs.queued(engine="keyed", operation="call", parameters={"account": "a", "push": 30})

    async def held():
        doc = await store.jobs.get(pushed["_id"])
        return doc if doc.get("backpressure_count") else None

    doc = await eventually(held)
    assert doc["status"] == "queued" and doc["attempt"] == 0 and doc["last_backpressure"]["key"].startswith("lane:")
    same = await jobs.queued(engine="keyed", operation="call", parameters={"account": "a"})
    other = await jobs.queued(engine="keyed", operation="call", parameters={"account": "b"})
    await wait_status(store, other["_id"], "completed", timeout=10)
    await asyncio.sleep(0.5)
    assert (await store.jobs.get(same["_id"]))["status"] == "queued"
    reasons = (await explain(store, await store.jobs.get(same["_id"])))["reasons"]
    limited = next(r for r in reasons if r["reason"] == "key_limited")
    assert limited["limit"] == "held" and limited["key"] == "params.account='a'" and limited["seconds_left"] > 20
    status = (await api.get("/api/v1/jobs/queue/status")).json()
    keyed = next(q for q in status["queues"] if q["name"] == "keyed")
    assert [(k["key"], k["limit"]) for k in keyed["keys_at_limit"]] == [("default/a", "held")]


async def test_why_names_a_key_at_its_concurrency(store, jobs):
    await store.engines.set_limits("keyed", key="owner", key_concurrency=1)
    first = await jobs.queued(engine="keyed", operation="call", owner="acme/ann")
    second = await jobs.queued(engine="keyed", operation="call", owner="acme/ann")
    engine = await store.engines.get("keyed")
    assert await store.engines.keys.draw(engine, first["lane"], "w1", 5) == 1  # the cap, not 5
    reasons = (await explain(store, await store.jobs.get(second["_id"])))["reasons"]
    limited = next(r for r in reasons if r["reason"] == "key_limited")
    assert (limited["limit"], limited["running"], limited["max"]) == ("concurrency", 1, 1)
    assert await store.engines.keys.draw(await store.engines.get("keyed"), first["lane"], "w2", 1) == 0
    assert await store.engines.drop_holds("w1") == 1  # a dead worker's key permit goes back
    assert await store.engines.keys.draw(await store.engines.get("keyed"), first["lane"], "w2", 1) == 1


async def test_two_tenants_never_share_a_key(store, jobs):
    await store.engines.set_limits("keyed", key="params.account", key_concurrency=1)
    mine = await jobs.queued(engine="keyed", operation="call", owner="acme/ann", parameters={"account": "x"})
    theirs = await jobs.queued(engine="keyed", operation="call", owner="other/bob", parameters={"account": "x"})
    again = await jobs.queued(engine="keyed", operation="call", owner="acme/cid", parameters={"account": "x"})
    assert mine["lane"] == again["lane"] != theirs["lane"]
    assert mine["seq"] >> 40 == mine["lane"]  # numbered in the lane's own range


async def test_weights_give_shares_within_10_percent(store, jobs, settings):
    await store.engines.set_limits("keyed", weights={"heavy": 3, "light": 1})
    owners = {"heavy": "heavy/u", "light": "light/u"}
    ids = {t: [] for t in owners}
    for _ in range(240):
        for t, owner in owners.items():
            ids[t].append((await jobs.queued(engine="keyed", operation="call", owner=owner))["_id"])
    proc = JobProcessor(store, settings, concurrency=4, engines=["keyed"])
    await proc.start()
    try:
        for job_id in ids["heavy"]:
            await wait_status(store, job_id, "completed", timeout=60)
    finally:
        await proc.stop(grace=1)
    heavy_done = max(d["started_at"] for d in await store.jobs.col.find({"_id": {"$in": ids["heavy"]}}).to_list(None))
    light = await store.jobs.col.count_documents({"_id": {"$in": ids["light"]}, "started_at": {"$lt": heavy_done}})
    # While both had work, heavy got 3 starts for each of light's: 240 against 80.
    assert 3 * 0.9 <= 240 / light <= 3 * 1.1, light


def test_stride_shares_are_exact_over_claims_of_one():
    passes: dict[str, float] = {}
    got = Counter()
    for _ in range(400):
        got.update({t: n for t, n in shares({"a": 3.0, "b": 1.0}, 1, passes).items() if n})
    assert got == {"a": 300, "b": 100}
    assert shares({"a": 1.0, "b": 1.0, "c": 2.0}, 8, {}) == {"a": 2, "b": 2, "c": 4}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "account"}, "key"),
        ({"key": "params.a..b"}, "key"),
        ({"key": "params.$where"}, "key"),
        ({"key": "params.account", "key_rate": "0/s"}, "key_rate"),
        ({"key": "params.account", "key_rate": "-5/min"}, "key_rate"),
        ({"key": "params.account", "key_concurrency": 0}, "key_concurrency"),
        ({"key_concurrency": 2}, "key_concurrency"),  # no key set
        ({"key": "params.account", "key_burst": 3}, "key_burst"),  # no key_rate
        ({"weights": {"acme": 0}}, "weights"),
        ({"weights": {"acme": "lots"}}, "weights"),
        ({"weights": {"$gt": 1}}, "weights"),
        ({"weights": {"a.b": 1}}, "weights"),
        ({"weights": None}, "weights"),
    ],
)
async def test_bad_key_limits_are_422_naming_the_field_and_change_nothing(api, store, body, field):
    before = await store.engines.ensure("keyed")
    r = await api.put(LIMITS.format("keyed"), json=body)
    assert r.status_code == 422, r.text
    assert field in (r.json()["error"].get("field") or "") + r.json()["error"]["message"], r.json()
    after = await store.engines.get("keyed")
    assert {k: v for k, v in after.items() if k != "wake"} == {k: v for k, v in before.items() if k != "wake"}


async def test_limits_round_trip_over_rest_and_a_tenant_sees_only_its_weight(api, store, settings):
    body = {"key": "params.account", "key_rate": "50/min", "key_concurrency": 2, "weights": {"acme": 2}}
    out = (await api.put(LIMITS.format("keyed"), json=body)).json()
    assert (out["key"], out["key_rate"], out["key_burst"], out["key_concurrency"]) == (
        "params.account",
        "50/min",
        50,
        2,
    )
    assert out["weights"] == {"acme": 2}
    cleared = (await api.put(LIMITS.format("keyed"), json={"key": None, "weights": {"acme": None}})).json()
    assert (cleared["key"], cleared["key_rate"], cleared["key_concurrency"], cleared["weights"]) == (
        None,
        None,
        None,
        {},
    )


async def test_settings_give_an_engine_its_default_key_limits(db_url):
    from app.store import connect
    from tests.conftest import make_settings

    s = make_settings(queue_keys={"img": {"key": "params.account", "key_rate": "50/min", "key_concurrency": 2}})
    st = connect(db_url, s, db_name="t_keys_defaults")
    await st.start()
    try:
        doc = await st.engines.ensure("img")
        assert (doc["key"], doc["key_rate"], doc["key_burst"], doc["key_concurrency"]) == (
            "params.account",
            "50/min",
            50,
            2,
        )
    finally:
        await st.client.drop_database("t_keys_defaults")
        await st.close()
    with pytest.raises(ValueError, match="queue_keys"):
        make_settings(queue_keys={"img": {"key": "account"}})


async def test_a_key_limit_that_does_not_bind_drains_normally(store, jobs, keyed_worker):
    await store.engines.set_limits("keyed", key="params.account", key_rate="1000/s", key_concurrency=50)
    ids = [
        (await jobs.queued(engine="keyed", operation="call", parameters={"account": f"a{i % 5}"}))["_id"]
        for i in range(60)
    ]
    for job_id in ids:
        await wait_status(store, job_id, "completed", timeout=20)

    async def settled():  # key permits go back in batches, a few ms after their jobs end
        doc = await store.engines.get("keyed")
        return doc.get("queued", 0) == 0 and all(k.get("running", 0) == 0 for k in doc["keys"].values()) or None

    await eventually(settled, timeout=5)


async def test_scheduled_jobs_and_workflow_steps_keep_their_lane(store, jobs, worker, api):
    await store.engines.set_limits("keyed", key="params.account", key_concurrency=1)
    later = await jobs.queued(engine="keyed", operation="call", parameters={"account": "a"}, delay_seconds=0.2)
    step = {"engine": "keyed", "operation": "call", "parameters": {"account": "a"}}
    wf = {"name": "keyed", "jobs": [{"key": "one", **step}, {"key": "two", "depends_on": ["one"], **step}]}
    r = await api.post("/api/v1/jobs/workflows", json=wf)
    assert r.status_code == 201, r.text
    ids = [later["_id"], *r.json()["jobs"].values()]
    for job_id in ids:
        await wait_status(store, job_id, "completed", timeout=15)
    docs = await store.jobs.col.find({"_id": {"$in": ids}}).to_list(None)
    assert len({d["lane"] for d in docs}) == 1 and all(d["seq"] >> 40 == d["lane"] for d in docs), docs


async def test_queue_status_lists_a_key_at_its_limit_only_while_it_has_queued_jobs(store, jobs, api):
    await store.engines.set_limits("keyed", key="owner", key_concurrency=1)
    await jobs.queued(engine="keyed", operation="call", owner="acme/ann")
    claimed = await store.claimer.claim(await store.engines.get("keyed"), "w1", 5)
    assert len(claimed) == 1 and claimed.key_permits

    async def listed():
        status = (await api.get("/api/v1/jobs/queue/status")).json()
        return next(q for q in status["queues"] if q["name"] == "keyed")["keys_at_limit"]

    assert await listed() == []  # at its limit, but nothing of it waits
    await jobs.queued(engine="keyed", operation="call", owner="acme/ann")
    [row] = await listed()
    assert (row["key"], row["limit"], row["running"]) == ("acme/acme/ann", "concurrency", 1)


class _ReleaseAfterRead:
    """The engines collection, with the worker's own last release landing right after the
    first read of `drop`: the race a stopping worker's final returns run with it."""

    def __init__(self, col, release) -> None:
        self._col, self._release, self.raced = col, release, False

    def __getattr__(self, name):
        return getattr(self._col, name)

    def find(self, *args, **kwargs):
        cursor, outer = self._col.find(*args, **kwargs), self

        class _Cursor:
            async def to_list(self, n):
                docs = await cursor.to_list(n)
                if not outer.raced:
                    outer.raced = True
                    await outer._release()
                return docs

        return _Cursor()


async def test_dropping_a_workers_key_permits_reads_again_after_its_own_release_races(store):
    await store.engines.set_limits("ledger", limit=50, key="params.account", key_concurrency=2)
    keys = store.engines.keys
    await keys.col.update_one({"_id": "ledger"}, {"$set": {"keys.k1.running": 2, "kholds.w1": {"k1": 2}}})
    col = keys.col
    keys.col = _ReleaseAfterRead(col, lambda: keys.release("ledger", "w1", {1: 1}))
    try:
        assert await keys.drop("w1") == 1  # the other went back through the release
    finally:
        keys.col = col
    assert (await store.engines.get("ledger")).get("kholds", {}) == {}
    assert (await store.engines.get("ledger"))["keys"]["k1"]["running"] == 0
