"""The fault harness's ledger accounting (`scripts/chaos_check.py`): a run with no end line
is clipped where its process died, and a quarantined run also where its owning worker died."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from chaos_check import Run, intervals, peak_concurrency  # noqa: E402


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
