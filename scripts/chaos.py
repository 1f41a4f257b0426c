"""Switchyard's fault harness: real processes, real faults, invariants checked from a
ledger written by the handlers and from the database. See docs/reliability.md.

    ./scripts/chaos                  every scenario (about 17 minutes on 2 cores)
    ./scripts/chaos --quick          smaller numbers
    ./scripts/chaos --only sigstop   one scenario (comma-separated for several)
    ./scripts/chaos --json out.json  also write every figure

Each scenario starts its own SecantusDB (`--enable-test-commands --sync-on-commit`) on a
fresh data directory, a `switchyard serve --workers 0` and `switchyard worker` processes
with a 2 s lease, then prints one table row. Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import machine  # noqa: E402
from chaos_scenarios import SCENARIOS, Result  # noqa: E402

SHOW = {
    "sigkill": ["lost", "killed_runs", "rerun_within_s", "rerun_p50_s", "reruns", "duplicate_finishes"],
    "sigterm": ["exit_s", "finished_in_grace", "released", "duplicate_finishes", "reruns"],
    "long_job": ["rescues", "reruns", "duplicate_finishes"],
    "sigstop": ["stale_accepted", "stale_attempted", "stale_results_kept", "rescues", "stopped_s"],
    "db_restart": [
        "lost",
        "acknowledged",
        "unacknowledged_landed",
        "server_down_s",
        "submit_gap_s",
        "submit_failures",
        "reconnected",
        "reruns",
    ],
    "fail_command": [
        "injected",
        "matching_commands",
        "fault_rate",
        "stuck",
        "lost",
        "failed",
        "reruns",
        "duplicate_finishes",
        "submit_failures",
    ],
    "claim_race": [
        "double_claims",
        "jobs_per_s",
        "drain_s",
        "completed_in_limit",
        "db_commands_per_job",
        "server_s_by_op",
        "reruns",
        "cursor",
        "first_queued_seq",
        "inflight_markers",
    ],
    "dags": [
        "order_violations",
        "workflows_stuck",
        "parents_mismatch",
        "map_order_violations",
        "mapped_children",
        "steps",
        "kills",
        "reruns",
        "p50_release_s",
        "max_release_s",
    ],
    "poison": [
        "poison_status",
        "poison_attempts",
        "worker_deaths",
        "jobs_per_s_without",
        "jobs_per_s_with",
        "throughput_ratio",
    ],
    "retry_storm": [
        "failures_peak_per_s",
        "retries_peak_per_s",
        "delay_min_s",
        "delay_max_s",
        "delay_sd_s",
        "retry_span_s",
    ],
    "clock_skew": ["premature_reclaims", "reruns", "skew_seen_s"],
    "lost_reply": [
        "lost",
        "charged_without_run",
        "stranded",
        "stale_accepted",
        "counters_at_rest",
        "dropped_claims",
        "dropped_completions",
        "dropped_exits",
        "dropped_submits",
        "lost_completions_kept",
        "failed_once",
        "submits_acknowledged",
        "race_claimed_before_read_back",
        "reruns",
    ],
}


def figures(r: Result) -> str:
    keys = SHOW.get(r.name, list(r.figures))
    return ", ".join(f"{k} {r.figures[k]}" for k in keys if k in r.figures)


def table(results: list[Result]) -> str:
    rows = [(r.title, figures(r), r.goal, "pass" if r.ok else "FAIL") for r in results]
    peaks = [(r.name, r.peak) for r in results if r.peak]
    if peaks:
        ok = all(p <= lim for _, (p, lim) in peaks)
        rows.append(
            (
                "per-engine limit N under all of the above (peak from the ledger)",
                ", ".join(f"{n} {p}/{lim}" for n, (p, lim) in peaks),
                "peak concurrency <= N",
                "pass" if ok else "FAIL",
            )
        )
    out = ["| scenario | figures | goal | result |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(out)


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller numbers, shorter run")
    ap.add_argument("--only", help=f"scenarios to run, comma-separated: {', '.join(SCENARIOS)}")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--seed", type=int, default=1234, help="seed for faults, kills and DAGs (default 1234)")
    ap.add_argument("--keep", action="store_true", help="keep the ledgers and process logs (the path is printed)")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    tmp = Path(tempfile.mkdtemp(prefix="switchyard-chaos-"))
    print(f"machine: {machine()}\nseed {args.seed}{', quick' if args.quick else ''}; work dir {tmp}", flush=True)
    results: list[Result] = []
    t_all = time.monotonic()
    try:
        for name in names:
            t0 = time.monotonic()
            print(f"\n== {name}", flush=True)
            try:
                r = await SCENARIOS[name](tmp, args.quick, args.seed)
            except Exception as exc:
                traceback.print_exc()
                r = Result(name, name, "", notes=[f"error: {exc!r}"])
                r.check(f"ran without error ({exc!r})", False)
            r.figures["seconds"] = round(time.monotonic() - t0, 1)
            results.append(r)
            for what, ok in r.checks:
                print(f"  {'ok ' if ok else 'FAIL'} {what}", flush=True)
            for note in r.notes:
                print(f"  note: {note}", flush=True)
            print(f"  figures: {json.dumps(r.figures, default=str)}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{len(results)} scenarios in {time.monotonic() - t_all:.0f} s\n")
    print(table(results))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\n{r.name}: " + "; ".join(w for w, ok in r.checks if not ok))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine(),
                    "seed": args.seed,
                    "quick": args.quick,
                    "results": [
                        {
                            "name": r.name,
                            "title": r.title,
                            "goal": r.goal,
                            "ok": r.ok,
                            "figures": r.figures,
                            "peak": r.peak,
                            "checks": r.checks,
                            "notes": r.notes,
                        }
                        for r in results
                    ],
                },
                indent=2,
                default=str,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
