"""Agenda 6's side of `scripts/bench`: runs scripts/bench_agenda/bench.mjs with Node on the
server the bench started (its Node project is installed by `scripts/_setup bench`, `npm ci`).

Agenda's MongoDB backend polls every `processEvery` (5 s by default) and, after a job ends,
takes no new job before the next poll. Its lock is a `findOneAndUpdate` with a sort that
SecantusDB answers with a collection scan, and polls that overlap (a short `processEvery`)
compete for the server: in trials on 2026-12-03 with 300 jobs, 2 processes x 32, it drained
9.1 jobs/s at the default 5 s, 6.7 at 1 s, 0.5 at 250 ms and none at 100 ms in 150 s. So the
bench runs it at the default, its best setting here (`PROCESS_EVERY_MS`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent / "bench_agenda"
DB = "agenda_bench"
PROCESS_EVERY_MS = 5000


def available() -> str | None:
    """None when Node and the installed project are there, else why not."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "agenda").is_dir():
        return "scripts/bench_agenda is not installed (scripts/_setup bench runs npm ci)"
    return None


def _run(*args: str, timeout: float) -> dict:
    out = subprocess.run(
        ["node", str(HERE / "bench.mjs"), *args], cwd=HERE, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"agenda bench {args[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def enqueue_rate(url: str, seconds: float) -> dict:
    """`agenda.now('noop')` one at a time, one client, nothing processing: {calls, per_s}."""
    return _run("enqueue", url, DB, str(seconds), timeout=seconds + 120)


def drain(
    url: str,
    n: int,
    processes: int = 2,
    concurrency: int = 32,
    process_every_ms: int = PROCESS_EVERY_MS,
    cap: float = 240,
) -> dict:
    """`n` no-op jobs drained by `processes` Node processes of `concurrency` each; stopped
    after `cap` seconds and rated by the jobs completed if it has not finished by then."""
    return _run(
        "drain", url, DB, str(n), str(processes), str(concurrency), str(process_every_ms), str(cap), timeout=cap + 180
    )
