"""scripts/bench_report.py: the bench's table says met or not from the figures, and says a
skipped baseline was skipped instead of judging against it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from bench_report import render, rows  # noqa: E402


def figures(**over) -> dict:
    o = {
        "raw_writes_per_s": 1000.0,
        "library_enqueue": {"calls": 3000, "per_s": 1000.0},
        "rest_batch": {"batches": 3, "size": 1000, "seconds": 0.3, "per_s": 10_000.0},
        "rest_submit_per_s": 400.0,
        "floor_per_s": 700.0,
        "rest_submit_consumed_per_s": 300.0,
        "deployed_drain": {"jobs": 1000, "seconds": 2.5, "jobs_per_s": 400.0},
        "no_relay_drain": {"jobs": 1000, "seconds": 2.0, "jobs_per_s": 500.0},
        "relay_ratios": [0.8, 0.9, 0.86],
        "latency": {"p50_ms": 10.0, "p99_ms": 20.0, "samples": 100},
        "makespan": {"steps": 1000, "independent_s": 2.0, "workflow_s": 3.0, "floor_s": 2.5},
        "makespan_vs_floor": [1.2],
        "at_rest": {"seconds": 30, "serve": 1.5, "serve_commands": {"find": 1.5}, "worker": 2.5, "worker_commands": {}},
        "celery_delay": {"calls": 9000, "per_s": 900.0},
        "celery_drain": {"jobs": 1000, "seconds": 20.0, "jobs_per_s": 50.0},
        "celery_latency": {"p50_ms": 25.0, "p99_ms": 80.0, "samples": 100, "poll_s": 0.05},
        "agenda_drain": {"jobs": 1000, "completed": 1000, "seconds": 50, "jobs_per_s": 20.0, "process_every_ms": 2000},
        "agenda_now": {"calls": 9000, "per_s": 950.0},
    }
    o.update(over)
    return o


def verdicts(o: dict) -> dict[str, str]:
    return {measure.strip(): met for measure, _, _, met in rows(o)}


def test_each_target_is_judged_from_its_figures():
    v = verdicts(figures())
    assert v["library single enqueue, one client (AsyncProducer.enqueue)"] == "yes"  # 1000 >= 900
    assert v["REST batch of 1,000 jobs (POST /jobs/submit/batch, 3 in a row), per job"] == "yes"  # 10,000 >= 9,000
    assert v["REST single-job submit, one client (POST /jobs/submit)"] == "no"  # 400 < 700 / 1.5
    assert v["REST submit while 2 workers run every job, against idle"] == "yes"  # 0.75
    assert v["drain as deployed: serve + 2 workers x 32, 1,000 no-op jobs"] == "yes"  # 400 >= 0.7 x 500
    assert v["against Celery"] == "yes"  # 400 >= 250
    assert v["drain as deployed against Agenda 6"] == "yes"  # 400 >= 100
    assert v["single enqueue against agenda.now(), library"] == "yes"  # 1000 >= 950
    assert v["single enqueue against agenda.now(), REST"] == "no"  # 400 < 0.5 x 950
    assert v["submit-to-start p50, idle system (100 jobs, REST)"] == "yes"  # 10 <= 12.5
    assert v["1,000-step fan-out/fan-in makespan against the floor run"] == "no"  # 1.2 > 1.15
    assert v["commands to the database at rest, serve (counted at the wire, 30 s)"] == "yes"
    assert v["commands to the database at rest, worker (counted at the wire, 30 s)"] == "no"
    assert "drain as deployed / the same with the relay off (SWITCHYARD_RUN_RELAY=false), alternated" in v


def test_a_skipped_baseline_is_named_not_judged():
    o = figures()
    for key in ("celery_delay", "celery_drain", "celery_latency", "agenda_drain", "agenda_now"):
        del o[key]
    table = rows(o)
    by_name = {m.strip(): (result, target, met) for m, result, target, met in table}
    assert by_name["library single enqueue, one client (AsyncProducer.enqueue)"][1:] == ("(Celery skipped)", "")
    assert by_name["drain as deployed against Agenda 6"][0] == "(Agenda skipped)"
    assert by_name["drain as deployed against Agenda 6"][2] == ""
    assert by_name["single enqueue against agenda.now()"] == ("(Agenda skipped)", "", "")
    assert "against Celery" not in by_name
    lines = render(table).splitlines()
    assert lines[0].split() == ["measure", "result", "target", "met"]
    assert len(lines) == len(table) + 2


def test_floors_are_shown_beside_their_rows_with_the_ratio_to_them():
    o = figures(
        enqueue_floor={"one_insert": 600.0, "two_writes": 400.0},
        batch_floor={"batches": 3, "size": 1000, "per_s": 20_000.0},
        busy_floor={"idle_per_s": 600.0, "draining_per_s": 150.0, "ratio": 0.25, "still_queued": 10},
        relay_floor_ratios=[0.9, 0.7, 0.8],
        relay_floor_drain={"jobs": 1000, "seconds": 2.5, "jobs_per_s": 400.0},
    )
    names = [m.strip() for m, *_ in rows(o)]
    results = {m.strip(): result for m, result, *_ in rows(o)}
    enqueue = "floor: one client writing job documents: one insert_one each; findAndModify + insert_one"
    assert names.index(enqueue) > names.index("library single enqueue, one client (AsyncProducer.enqueue)")
    assert results[enqueue] == "600/s; 400/s (library 1.67x the former)"
    relay = "floor: relay off + a bare change stream writing each reply's events as a page, / relay off"
    assert (
        names.index(relay)
        == names.index("drain as deployed / the same with the relay off (SWITCHYARD_RUN_RELAY=false), alternated") + 1
    )
    assert results[relay] == "0.80 (400 jobs/s, 0.80x raw/2) (median of 3: 0.90, 0.70, 0.80)"
    assert results["floor: insert_many of 1,000 job documents, 3 in a row, per job"] == "20000/s (REST batch 0.50x)"
    busy = "floor: a bare insert_one loop beside serve + 2 workers, while they drain, against idle"
    assert results[busy] == "150/s against 600/s (0.25x)"
    assert enqueue not in [m.strip() for m, *_ in rows(figures())]  # a run without the floors has no such row
