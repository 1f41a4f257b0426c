"""Invariants over the ledger (what handlers did) and the database (what was accepted).

A *run* is one handler execution: the ledger's `start` line and, unless its process was
killed, its `end` line, tied by (job, lease token).

- lost: an acknowledged job id that is not in the database.
- stuck: a job still unfinished (pending, scheduled, queued, running) once the scenario
  has settled.
- double claims: two runs of one job with the same attempt number but different lease
  tokens. A claim moves a job out of `queued` and counts its attempt in one guarded
  write, so two owners of one attempt would mean two claimers won the same job.
- stale completions accepted: a completed job whose `finished_token` is not the token of
  its latest run (the lease a newer owner held was overwritten), or whose stored result
  says another token ran it.
- re-runs: runs beyond a job's first (expected after kills and stalls, counted);
  duplicate finishes: jobs whose handler returned normally more than once.
- order (the `dags` scenario): a step's run began after each parent's accepted run ended; a
  map step, which runs no handler, ends when its last mapped child does (`accepted_end`), and
  its result lists its children's results in item order (`map_order_violations`).
- peak concurrency: the most runs of one engine in progress at once, each run clipped at
  its process's SIGKILL/exit (for a quarantined run, also its owning worker's: the child
  exits with it, and the time its owner recorded the attempt's failure: the owner records
  a quarantined crash only once the child is gone, and the harness cannot see that child's
  exit) and with its SIGSTOP..SIGCONT pauses cut out.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC
from itertools import pairwise
from pathlib import Path

INF = float("inf")


@dataclass
class Run:
    job: str
    token: str
    attempt: int
    pid: int
    engine: str
    start: float
    owner: int | None = None  # the worker holding the lease (differs in a quarantine child)
    end: float | None = None
    outcome: str | None = None
    parents: list | None = None
    extra: dict = field(default_factory=dict)


def load_runs(path: Path) -> dict[str, list[Run]]:
    """{job id: runs sorted by start}."""
    by_key: dict[tuple[str, str], Run] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        e = json.loads(line)
        key = (e["job"], e["token"])
        if e["event"] == "start":
            by_key[key] = Run(
                e["job"],
                e["token"],
                e["attempt"],
                e["pid"],
                e["engine"],
                e["t"],
                owner=e.get("owner"),
                parents=e.get("parents"),
                extra={k: e[k] for k in ("t_local",) if k in e},
            )
        elif key in by_key:
            by_key[key].end, by_key[key].outcome = e["t"], e.get("outcome")
    runs: dict[str, list[Run]] = defaultdict(list)
    for r in by_key.values():
        runs[r.job].append(r)
    for rs in runs.values():
        rs.sort(key=lambda r: r.start)
    return runs


def double_claims(runs: dict[str, list[Run]]) -> int:
    """Runs of one job and attempt under different tokens. A graceful shutdown hands a job
    back without counting its attempt, so a run that was stopped (outcome `stopped`) and
    ended before the next one began is a release, not a double claim."""
    n = 0
    for rs in runs.values():
        by_attempt = defaultdict(list)
        for r in rs:
            by_attempt[r.attempt].append(r)
        for same in by_attempt.values():
            for prev, nxt in pairwise(same):
                released = prev.outcome == "stopped" and prev.end is not None and prev.end <= nxt.start
                n += not released
    return n


def reruns(runs: dict[str, list[Run]]) -> int:
    return sum(len(rs) - 1 for rs in runs.values())


def duplicate_finishes(runs: dict[str, list[Run]]) -> int:
    return sum(1 for rs in runs.values() if sum(r.outcome == "ok" for r in rs) > 1)


FLOW_KINDS = ("approval", "signal", "sleep")  # steps that wait, running no handler (docs/waiting-steps.md)


def accepted_end(job: str, runs: dict[str, list[Run]], docs: dict[str, dict]) -> float | None:
    """When `job`'s accepted run (the one whose token finished it) ended; None if none did.
    A map step runs no handler: it is done when the last of its mapped children is, or,
    with no children, when its parents are (docs/map-steps.md). A step that waits for a
    person, a signal or a time runs none either: it is done when it completed (its
    `completed_at`, on this machine's clock like the runs')."""
    d = docs.get(job) or {}
    if d.get("kind") in FLOW_KINDS:
        at = d.get("completed_at") if d.get("status") == "completed" else None
        return None if at is None else (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
    if d.get("kind") in ("map", "map_join"):
        children = d.get("map_children") or []
        waited = children or [p for p in d.get("parent_ids") or [] if p not in set(children)]
        ends = [accepted_end(c, runs, docs) for c in waited]
        return None if None in ends else max(ends, default=None)
    ok = [r for r in runs.get(job, []) if r.outcome == "ok" and r.token == d.get("finished_token")]
    return ok[0].end if ok else None


def map_order_violations(docs: dict[str, dict]) -> int:
    """Map steps whose result is not their children's results in item order (each child
    of the chaos `step` handler returns its `index`)."""
    bad = 0
    for d in docs.values():
        if d.get("kind") not in ("map", "map_join") or d.get("status") != "completed":
            continue
        children = d.get("map_children") or []
        result = d.get("result") or []
        expected = [(docs.get(c) or {}).get("result") for c in children]
        bad += result != expected or [r.get("index") for r in result] != list(range(len(children)))
    return bad


def stale_completions(runs: dict[str, list[Run]], docs: list[dict]) -> dict:
    """Completed jobs whose accepted completion is not their latest run's."""
    accepted_stale, attempted_stale, unknown = 0, 0, 0
    for d in docs:
        if d["status"] != "completed" or d.get("kind") in ("map", "map_join", *FLOW_KINDS):
            continue  # (a map step, a signal, ... complete without running a handler)
        rs = runs.get(d["_id"], [])
        if not rs:
            unknown += 1
            continue
        last = rs[-1]
        result = d.get("result") or {}
        if d.get("finished_token") != last.token or result.get("token") != d.get("finished_token"):
            accepted_stale += 1
        # a run that finished normally under an older token: its completion must have been refused
        attempted_stale += sum(1 for r in rs[:-1] if r.outcome == "ok")
    return {"accepted": accepted_stale, "attempted": attempted_stale, "completed_without_run": unknown}


def intervals(runs: dict[str, list[Run]], events: list[tuple[float, int, str]], engine: str, now: float, docs=()):
    """Each run's active time: start..end (or its process's kill/exit), minus stopped spans.
    `docs`: the jobs, whose error history dates the end of quarantined runs that crashed."""
    failed_at = {
        (d["_id"], e.get("attempt")): e["at"].timestamp() for d in docs for e in d.get("errors") or [] if e.get("at")
    }
    killed: dict[int, float] = {}
    stops: dict[int, list[tuple[float, float]]] = defaultdict(list)
    open_stop: dict[int, float] = {}
    for t, pid, what in sorted(events):
        if what in ("SIGKILL", "exit"):
            killed.setdefault(pid, t)
        elif what == "SIGSTOP":
            open_stop[pid] = t
        elif what == "SIGCONT" and pid in open_stop:
            stops[pid].append((open_stop.pop(pid), t))
    for pid, t in open_stop.items():
        stops[pid].append((t, INF))
    out = []
    for rs in runs.values():
        for r in rs:
            if r.engine != engine:
                continue
            # a quarantine child dies with the worker that owns it (it exits on the pipe's EOF)
            gone = min(killed.get(r.pid, INF), killed.get(r.owner, INF) if r.owner else INF)
            if r.owner and r.owner != r.pid and r.end is None:
                gone = min(gone, failed_at.get((r.job, r.attempt), INF))
            end = min(r.end if r.end is not None else now, gone)
            segs = [(r.start, end)]
            for a, b in stops.get(r.pid, []):
                nxt = []
                for s, e in segs:
                    if b <= s or a >= e:
                        nxt.append((s, e))
                        continue
                    if s < a:
                        nxt.append((s, a))
                    if b < e:
                        nxt.append((b, e))
                segs = nxt
            out += [s for s in segs if s[1] > s[0]]
    return out


def peak_concurrency(segs: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in segs] + [(e, -1) for _, e in segs])  # ends sort before starts at a tie
    peak = cur = 0
    for _, d in points:
        cur += d
        peak = max(peak, cur)
    return peak


def db_state(acknowledged: list[str], docs: list[dict]) -> dict:
    found = {d["_id"]: d for d in docs}
    statuses = Counter(d["status"] for d in docs)
    return {
        "acknowledged": len(acknowledged),
        "lost": sum(1 for i in acknowledged if i not in found),
        "stuck": sum(statuses[s] for s in ("pending", "scheduled", "queued", "running")),
        "statuses": dict(statuses),
        "rescues": sum(1 for d in docs for e in d.get("errors") or [] if e.get("code") == "lease_expired"),
    }
