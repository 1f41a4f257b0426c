"""Agenda 6's side of `scripts/bench`: runs scripts/bench_agenda/bench.mjs with Node on the
server the bench started (its Node project is installed by `scripts/_setup bench`, `npm ci`).

Agenda's MongoDB backend polls every `processEvery` (5 s by default) and, after a job ends,
takes no new job before the next poll. Its lock is a `findOneAndUpdate` with a sort that
SecantusDB answers with a collection scan, and polls that overlap (a short `processEvery`)
compete for the server. Trials on fresh servers on 2026-12-03, 300 jobs, 2 processes x 32:
26.8 jobs/s at 2 s, 11.4 at the default 5 s, 3.3 at 1 s and 1.1 at 500 ms (both stopped at
60 s); on a server that had run for a while, none in 150 s at 100 ms. The scan grows with the
collection: in the full run of 2026-12-03 (1,000 jobs) it made 1.5 jobs/s at 5 s and 0.4 at
2 s, stopped at 240 s. So the bench runs it at 2 s and, in a full run, at the default as
well, and compares Switchyard with the faster (`PROCESS_EVERY_MS`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent / "bench_agenda"
DB = "agenda_bench"
PROCESS_EVERY_MS = (2000, 5000)  # the first alone in a quick run


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
    process_every_ms: int = PROCESS_EVERY_MS[0],
    cap: float = 240,
) -> dict:
    """`n` no-op jobs drained by `processes` Node processes of `concurrency` each; stopped
    after `cap` seconds and rated by the jobs completed if it has not finished by then."""
    return _run(
        "drain", url, DB, str(n), str(processes), str(concurrency), str(process_every_ms), str(cap), timeout=cap + 180
    )
