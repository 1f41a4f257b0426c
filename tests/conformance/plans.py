"""Reading `explain` output of any server: the classic plan shape, the slot-based engine's
(`queryPlan` under `winningPlan`), and a `mongos` answer (`shards`, each with its own plan)."""

from __future__ import annotations


def winning_plans(explain: dict) -> list[dict]:
    """The winning plan of each shard (one for a replica set)."""
    qp = explain.get("queryPlanner") or {}
    win = qp.get("winningPlan") or {}
    if "shards" in win:
        return [s.get("winningPlan", s) for s in win["shards"]]
    return [win]


def stages(plan: dict):
    """Every stage of a plan tree, classic or SBE."""
    yield plan
    for key in ("inputStage", "queryPlan", "outerStage", "innerStage"):
        if isinstance(plan.get(key), dict):
            yield from stages(plan[key])
    for sub in plan.get("inputStages", []):
        yield from stages(sub)


def keys_examined(explain: dict) -> int:
    stats = explain.get("executionStats") or {}
    if "executionStages" in stats or "totalKeysExamined" in stats:
        return stats.get("totalKeysExamined", 0)
    return sum(s.get("totalKeysExamined", 0) for s in stats.get("executionStages", {}).get("shards", []))


def assert_index_bounded(
    explain: dict, index: dict | None = None, max_keys: int | None = None, allow: frozenset = frozenset()
) -> None:
    """An index scan (of `index`, if given), no collection scan and no in-memory sort, and
    at most `max_keys` keys examined. `allow`: the server's known explain quirks
    (`app.store.quirks.PLAN_ALLOWANCES` on SecantusDB, nothing on MongoDB)."""
    for plan in winning_plans(explain):
        found = [s.get("stage") for s in stages(plan)]
        if "id_range_scan" in allow and "COLLSCAN" in found:
            return  # SecantusDB: an `_id` range sorted by `_id`
        assert "COLLSCAN" not in found, f"collection scan: {found}"
        assert "SORT" not in found or "sort_over_index_scan" in allow, f"in-memory sort: {found}"
        scans = [s for s in stages(plan) if s.get("stage") in ("IXSCAN", "COUNT_SCAN")]
        assert scans, f"no index scan: {found}"
        if index is not None:
            assert any(s.get("keyPattern") == index for s in scans), [s.get("keyPattern") for s in scans]
    if max_keys is not None:
        assert keys_examined(explain) <= max_keys, keys_examined(explain)
