"""The fault harness's ledger accounting (`scripts/chaos_check.py`): a run with no end line
is clipped where its process died, and a quarantined run also where its owning worker died."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from chaos_check import (  # noqa: E402
    Run,
    accepted_end,
    intervals,
    map_order_violations,
    peak_concurrency,
    stale_completions,
)


def runs(*rs: Run) -> dict[str, list[Run]]:
    return {r.job: [r] for r in rs}


def test_a_quarantined_run_ends_when_its_owner_is_killed():
    worker, child = 100, 200
    killed_at = 5.0
    rs = runs(
        Run("a", "t", 1, child, "e", 1.0, owner=worker),  # no end line: exited with its owner
        Run("b", "t", 1, 300, "e", 6.0, end=8.0, owner=300),
    )
    segs = intervals(rs, [(killed_at, worker, "SIGKILL")], "e", now=100.0)
    assert sorted(segs) == [(1.0, killed_at), (6.0, 8.0)]
    assert peak_concurrency(segs) == 1


def test_a_run_without_an_end_or_a_dead_owner_counts_until_now():
    rs = runs(Run("a", "t", 1, 200, "e", 1.0, owner=100))
    assert intervals(rs, [], "e", now=10.0) == [(1.0, 10.0)]


def test_a_quarantined_run_that_crashed_ends_when_its_owner_recorded_the_failure():
    """The harness cannot see a quarantine child exit; its owner records the attempt's
    failure only once the child is gone. A run in an ordinary worker is never clipped so:
    a SIGSTOPped worker may run on after the rescuer recorded its attempt as failed."""
    from datetime import UTC, datetime

    at = datetime.fromtimestamp(4.0, UTC)
    docs = [{"_id": "a", "errors": [{"attempt": 1, "at": at}]}, {"_id": "b", "errors": [{"attempt": 1, "at": at}]}]
    rs = runs(Run("a", "t", 1, 200, "e", 1.0, owner=100), Run("b", "t", 1, 300, "e", 1.0, owner=300))
    assert sorted(intervals(rs, [], "e", now=10.0, docs=docs)) == [(1.0, 4.0), (1.0, 10.0)]


def test_a_map_step_ends_with_its_last_accepted_child():
    """A map step runs no handler: the `dags` order check takes its end from its children's
    accepted runs (a stale run under an older token does not count), or, with no children,
    from its parents'."""
    rs = {
        "src": [Run("src", "t1", 1, 1, "e", 0.0, end=1.0, outcome="ok")],
        "c0": [
            Run("c0", "old", 1, 1, "e", 1.1, end=9.0, outcome="ok"),
            Run("c0", "t2", 2, 2, "e", 2.0, end=3.0, outcome="ok"),
        ],
        "c1": [Run("c1", "t3", 1, 1, "e", 1.2, end=2.5, outcome="ok")],
    }
    docs = {
        "src": {"finished_token": "t1"},
        "c0": {"finished_token": "t2"},
        "c1": {"finished_token": "t3"},
        "m": {"kind": "map_join", "map_children": ["c0", "c1"], "parent_ids": ["src", "c0", "c1"]},
        "empty": {"kind": "map", "parent_ids": ["src"]},
        "lost": {"kind": "map_join", "map_children": ["gone"], "parent_ids": ["src", "gone"]},
    }
    assert accepted_end("m", rs, docs) == 3.0
    assert accepted_end("empty", rs, docs) == 1.0
    assert accepted_end("lost", rs, docs) is None


def test_a_map_result_out_of_item_order_is_counted():
    docs = {
        "a": {"result": {"index": 0}},
        "b": {"result": {"index": 1}},
        "m": {
            "kind": "map_join",
            "status": "completed",
            "map_children": ["a", "b"],
            "result": [{"index": 0}, {"index": 1}],
        },
        "swapped": {
            "kind": "map_join",
            "status": "completed",
            "map_children": ["a", "b"],
            "result": [{"index": 1}, {"index": 0}],
        },
        "empty": {"kind": "map", "status": "completed", "result": []},
        "waiting": {"kind": "map_join", "status": "pending", "map_children": ["a", "b"]},
    }
    assert map_order_violations(docs) == 1


def test_a_map_step_is_not_a_completion_without_a_run():
    """A map step completes by joining its children: no handler run of its own to find."""
    docs = [
        {"_id": "m", "status": "completed", "kind": "map_join", "map_children": []},
        {"_id": "j", "status": "completed", "finished_token": "t"},
    ]
    assert stale_completions({}, docs)["completed_without_run"] == 1
