"""Measure Celery 5.x on a MongoDB-wire-protocol server, for comparison with Switchyard.

Broker: kombu's ``mongodb://`` transport; result backend: Celery's MongoDB backend.
Both use one dedicated database, ``celery_bench``, dropped before and after each run.
The database named in the given URL is replaced and the query string kept: pymongo
needs ``?directConnection=true`` for a single server, and kombu passes it through.

API (each returns a dict):

* ``drain(url, n, processes, threads, timeout)``: pre-fill the queue with ``n``
  ``delay()`` calls, start ``processes`` worker subprocesses (threads pool,
  ``threads`` each), time from their spawn (start-up included) until ``n`` results
  are stored: ``{"jobs", "seconds", "jobs_per_s"}``.
* ``delay_rate(url, seconds)``: one client calling ``delay()`` in a loop, no workers:
  ``{"calls", "per_s"}``.
* ``submit_to_start(url, samples, poll)``: on warm idle workers polling every ``poll``
  seconds, from ``delay()`` to the task's start, one at a time:
  ``{"p50_ms", "p99_ms", "samples", "poll_s"}``.
* ``end_to_end(url, n, processes, threads, timeout, window)``: warm workers first,
  then ``n`` tasks submitted one ``delay()`` at a time with at most ``window`` in
  flight, timed until all results are stored: ``{"jobs", "seconds", "jobs_per_s"}``.

Workers run ``python -m celery -A bench_celery worker`` with cwd set to this folder
and rebuild the same app from ``SWITCHYARD_BENCH_CELERY_URL``.  kombu's mongodb
transport polls: when a poll finds nothing (or the prefetch window is full) the
worker sleeps ``polling_interval``, 1.0 s by default.  The default is kept, as a
typical user runs it; ``SWITCHYARD_BENCH_CELERY_POLL=<seconds>`` overrides it.

Manual use:
  python scripts/bench_celery.py --url 'mongodb://127.0.0.1:27555/?directConnection=true'
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import kombu.transport.mongodb as kombu_mongodb
from celery import Celery
from pymongo import MongoClient
from pymongo.errors import CollectionInvalid

ENV_URL = "SWITCHYARD_BENCH_CELERY_URL"
ENV_POLL = "SWITCHYARD_BENCH_CELERY_POLL"
DB = "celery_bench"
QUEUE = "celery_bench"
TASK = "bench_celery.noop"
STAMP = "bench_celery.stamp"
RESULTS = "celery_taskmeta"  # Celery's MongoDB backend default collection
HERE = os.path.dirname(os.path.abspath(__file__))


def bench_url(url: str) -> str:
    """``url`` with its database replaced by the dedicated benchmark database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + DB, parts.query, ""))


def make_app(url: str):
    """A Celery app on ``url`` (broker and backend) and its no-op task."""
    url = bench_url(url)
    app = Celery("bench_celery", broker=url, backend=url)
    transport_options = {}
    if os.environ.get(ENV_POLL):
        transport_options["polling_interval"] = float(os.environ[ENV_POLL])
    app.conf.update(
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK)
    def noop():
        return None

    @app.task(name=STAMP)
    def stamp():
        return time.time()  # when the task started, on this machine's clock

    app.stamp = stamp
    return app, noop


_create_broadcast = kombu_mongodb.Channel._create_broadcast


def _create_broadcast_tolerant(self, database):
    # kombu lists collections, then creates the capped ``messages.broadcast``; on
    # SecantusDB that check-then-create once crashed a starting worker with
    # CollectionInvalid although the collection already existed.  Tolerate it.
    try:
        _create_broadcast(self, database)
    except CollectionInvalid:
        pass


kombu_mongodb.Channel._create_broadcast = _create_broadcast_tolerant

# The app the worker subprocesses load with ``-A bench_celery``.
app, noop = make_app(os.environ.get(ENV_URL, "mongodb://127.0.0.1:27017/?directConnection=true"))


def _db(url: str):
    client = MongoClient(bench_url(url))
    return client, client[DB]


def _reset(url: str) -> None:
    client, _ = _db(url)
    with client:
        client.drop_database(DB)


def _start_workers(url: str, processes: int, threads: int, log) -> list:
    env = dict(os.environ, **{ENV_URL: url})
    env["PYTHONPATH"] = HERE + os.pathsep + env.get("PYTHONPATH", "")
    procs = []
    for i in range(processes):
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench_celery",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(threads),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            QUEUE,
            "-n",
            f"bench{i}-{os.getpid()}@%h",
            "--loglevel",
            "WARNING",
        ]
        procs.append(subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def _stop_workers(procs: list, grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _wait_for(db, target: int, procs: list, timeout: float, log) -> None:
    """Block until ``target`` results are stored.  Counting scans on SecantusDB (18 ms
    at 2000 docs): sleep 20x the last count's cost (0.05..1 s), <=5% extra load."""
    deadline = time.monotonic() + timeout
    while True:
        t = time.monotonic()
        done = db[RESULTS].estimated_document_count()
        if done >= target:
            return
        if t > deadline:
            raise TimeoutError(f"{done}/{target} results after {timeout}s")
        if any(p.poll() is not None for p in procs):
            log.seek(0)
            raise RuntimeError("celery worker exited early:\n" + log.read().decode()[-3000:])
        time.sleep(min(1.0, max(0.05, 20 * (time.monotonic() - t))))


def _check(db, target: int) -> None:
    if (ok := db[RESULTS].count_documents({"status": "SUCCESS"})) != target:
        raise RuntimeError(f"{ok} SUCCESS results, expected {target}")


def _rate(n: int, seconds: float) -> dict:
    return {"jobs": n, "seconds": round(seconds, 3), "jobs_per_s": round(n / seconds, 2)}


@contextmanager
def _session(url: str):
    """A clean benchmark database, the Celery app's task and a client on the database;
    everything is closed and dropped afterwards."""
    _reset(url)
    client_app, task = make_app(url)
    client, db = _db(url)
    try:
        yield task, db
    finally:
        client.close()
        client_app.close()
        _reset(url)


def drain(url: str, n: int = 2000, processes: int = 2, threads: int = 8, timeout: float = 600) -> dict:
    """Pre-fill ``n`` tasks, then time ``processes`` workers until all results are stored."""
    with _session(url) as (task, db):
        for _ in range(n):
            task.delay()
        queued = db["messages"].count_documents({"queue": QUEUE})
        if queued != n:
            raise RuntimeError(f"expected {n} queued messages, found {queued}")
        with tempfile.TemporaryFile() as log:
            t0 = time.monotonic()
            procs = _start_workers(url, processes, threads, log)
            try:
                _wait_for(db, n, procs, timeout, log)
                seconds = time.monotonic() - t0
                _check(db, n)
            finally:
                _stop_workers(procs)
    return _rate(n, seconds)


def delay_rate(url: str, seconds: float = 5.0) -> dict:
    """Calls of ``delay()`` per second from one client with no workers running."""
    _reset(url)
    client_app, task = make_app(url)
    try:
        task.delay()  # connect, declare the queue: not timed
        calls = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            task.delay()
            calls += 1
    finally:
        client_app.close()
        _reset(url)
    return {"calls": calls, "per_s": round(calls / seconds, 2)}


def end_to_end(
    url: str, n: int = 300, processes: int = 2, threads: int = 8, timeout: float = 600, window: int | None = None
) -> dict:
    """With warm workers, submit ``n`` tasks one at a time and wait for all results.

    At most ``window`` tasks are in flight (submitted, result not stored), so the queue
    stays shallow even though one ``delay()`` caller outruns the workers; the default
    is ``processes * threads`` (one free thread per task); 0 = no cap.
    """
    window = processes * threads if window is None else window
    with _session(url) as (task, db):
        results = db[RESULTS]
        with tempfile.TemporaryFile() as log:
            procs = _start_workers(url, processes, threads, log)
            try:
                for _ in range(processes):  # warm-up: workers up and consuming
                    task.delay()
                _wait_for(db, processes, procs, 120, log)
                time.sleep(1.0)  # let every worker settle into its polling loop
                t0 = time.monotonic()
                done = 0
                for i in range(n):
                    while window and i - done >= window:
                        done = results.estimated_document_count() - processes
                        if i - done >= window:
                            time.sleep(0.01)
                    task.delay()
                _wait_for(db, n + processes, procs, timeout, log)
                seconds = time.monotonic() - t0
                _check(db, n + processes)
            finally:
                _stop_workers(procs)
    return _rate(n, seconds)


def submit_to_start(url: str, samples: int = 50, poll: float = 0.05, processes: int = 2, threads: int = 8) -> dict:
    """On an idle system (warm workers polling every ``poll`` seconds): ``delay()`` one
    task, wait for its result, which is the time the task started; one at a time, 0.15 s
    apart, as Switchyard's measure. ``{"p50_ms", "p99_ms", "samples", "poll_s"}``."""
    old = os.environ.get(ENV_POLL)
    os.environ[ENV_POLL] = str(poll)  # the workers and this client's app
    try:
        with _session(url) as (task, db):
            stamp = task.app.stamp
            with tempfile.TemporaryFile() as log:
                procs = _start_workers(url, processes, threads, log)
                try:
                    for _ in range(processes):  # warm-up: workers up and consuming
                        stamp.delay().get(timeout=120, interval=0.01)
                    time.sleep(1.0)
                    lat = []
                    for _ in range(samples):
                        t = time.time()
                        started = stamp.delay().get(timeout=60, interval=0.01)
                        lat.append((started - t) * 1000)
                        time.sleep(0.15)
                finally:
                    _stop_workers(procs)
    finally:
        if old is None:
            os.environ.pop(ENV_POLL, None)
        else:
            os.environ[ENV_POLL] = old
    lat.sort()
    return {
        "p50_ms": lat[len(lat) // 2],
        "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "samples": samples,
        "poll_s": poll,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="mongodb:// URL of the server")
    ap.add_argument("--n", type=int, default=2000, help="tasks for drain")
    ap.add_argument("--e2e-n", type=int, default=300, help="tasks for end_to_end")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of delay_rate")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument(
        "--window", type=int, default=None, help="end_to_end in-flight cap (default processes*threads; 0: none)"
    )
    a = ap.parse_args(argv)
    for name, fn in [
        ("delay_rate", lambda: delay_rate(a.url, a.seconds)),
        ("end_to_end", lambda: end_to_end(a.url, a.e2e_n, a.processes, a.threads, a.timeout, a.window)),
        ("drain", lambda: drain(a.url, a.n, a.processes, a.threads, a.timeout)),
    ]:
        t = time.monotonic()
        result = fn()
        print(f"{name}: {result}  (wall {time.monotonic() - t:.1f}s)", flush=True)


if __name__ == "__main__":
    main()
