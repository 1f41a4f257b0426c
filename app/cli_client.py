"""The client commands of `switchyard`: `submit`, `status`, `queues` and `workers`.

They talk to a running server's REST API through `app.client.SwitchyardClient`, never to
the database, so they work against any deployment: `--url` (or SWITCHYARD_URL, default
http://127.0.0.1:8000) and `--token` (or SWITCHYARD_TOKEN, then SWITCHYARD_ADMIN_TOKEN, then
the admin token `serve` keeps in the data directory). `register` adds them to the CLI.

Finding the admin token from any directory: a `serve` that generated its token records
its data directory and URL in `~/.local/state/switchyard/last-serve.json` (`record_serve`).
The client reads `<SWITCHYARD_DATA_DIR>/admin_token` first, then the recorded directory's,
the latter only when `--url` names that same server (a local token is never sent elsewhere).
A 401 says which token was used, or which files were looked for.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client import DEFAULT_URL, FINISHED, SwitchyardAPIError, SwitchyardClient

out = Console()
err = Console(stderr=True)
UrlOption = typer.Option(DEFAULT_URL, "--url", envvar="SWITCHYARD_URL", help="the server's base URL")
TokenOption = typer.Option(
    None,
    "--token",
    envvar="SWITCHYARD_TOKEN",
    show_default=False,
    help="API token (default: SWITCHYARD_ADMIN_TOKEN, or the admin_token of the data directory "
    "or of the one `serve` recorded)",
)


def register(cli: typer.Typer) -> None:
    for fn in (submit, status, queues, workers):
        cli.command()(fn)


LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"}


def serve_record() -> Path:
    return Path.home() / ".local" / "state" / "switchyard" / "last-serve.json"


def record_serve(data_dir: Path, host: str, port: int) -> None:
    """Called by `serve` when it uses the data directory's admin token: where that token is,
    for client commands run from any directory. Best effort: a read-only home stops nothing."""
    path = serve_record()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"data_dir": str(data_dir.resolve()), "url": f"http://{host}:{port}"}))
        tmp.replace(path)  # atomic: a reader sees the old record or the new one
    except OSError:
        pass


def _same_server(url: str, recorded: str) -> bool:
    """The same port, and the same host or both this machine's (`serve --host 0.0.0.0` too)."""
    a, b = urlsplit(url), urlsplit(recorded)
    same_port = a.netloc.rpartition(":")[2] == b.netloc.rpartition(":")[2]
    return same_port and (a.hostname == b.hostname or {a.hostname, b.hostname} <= LOCAL_HOSTS)


@dataclass
class Auth:
    """The token a command uses, where it came from, and where else it was looked for."""

    token: str | None
    source: str = ""
    looked: list[str] = field(default_factory=list)

    def explain(self) -> str:
        return (
            f"the token came from {self.source}"
            if self.token
            else "no token: looked for --token, SWITCHYARD_TOKEN, SWITCHYARD_ADMIN_TOKEN, " + ", ".join(self.looked)
        )


def find_token(token: str | None, url: str) -> Auth:
    if token:
        return Auth(token, "--token or SWITCHYARD_TOKEN")
    from .settings import Settings

    s = Settings()
    if s.admin_token:
        return Auth(s.admin_token, "SWITCHYARD_ADMIN_TOKEN")
    paths = [s.data_dir.resolve() / "admin_token"]
    record = serve_record()
    try:
        rec = json.loads(record.read_text())
        if _same_server(url, rec["url"]):
            paths.append(Path(rec["data_dir"]) / "admin_token")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    looked = []
    for path in dict.fromkeys(paths):
        if path.is_file() and (found := path.read_text().strip()):
            return Auth(found, str(path))
        looked.append(f"{path} (missing)")
    if len(paths) == 1:
        looked.append(f"no `serve` recorded in {record} for {url}")
    return Auth(None, looked=looked)


def _run(fn, auth: Auth | None = None):
    """Run one command body, turning API and connection errors into a message and exit code."""
    try:
        return fn()
    except SwitchyardAPIError as exc:
        where = (f" ({exc.field})" if exc.field else "") + (f"; {auth.explain()}" if auth and exc.status == 401 else "")
        err.print(f"[red]error {exc.status} {exc.code}[/red]: {exc.message}{where}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except httpx.TransportError as exc:
        err.print(f"[red]cannot reach the server[/red]: {exc}", highlight=False)
        raise typer.Exit(2) from None


def load_spec(path: Path) -> dict | list:
    """A job, a workflow or a list of jobs from a JSON or YAML file (by extension; otherwise
    JSON, then YAML). A file that does not parse raises ValueError with one line: line,
    column, the reason."""
    import yaml

    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            doc = yaml.safe_load(text)
        else:
            try:
                doc = json.loads(text)
            except ValueError:
                if path.suffix.lower() == ".json":
                    raise
                doc = yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ValueError(where + ": ".join(filter(None, [exc.context, exc.problem]))) from None
    except yaml.YAMLError as exc:
        raise ValueError(" ".join(str(exc).split())) from None
    if isinstance(doc, list) and doc and all(isinstance(j, dict) for j in doc):
        return doc
    if not isinstance(doc, dict):
        raise ValueError("the file must hold a job, a workflow (an object with `jobs`) or a list of jobs")
    return doc


def submit(
    file: Path = typer.Argument(
        ..., exists=True, dir_okay=False, help="a job, a workflow (an object with `jobs`), or a list of jobs"
    ),
    wait: bool = typer.Option(False, "--wait/--no-wait", metavar="", help="then follow it until it finishes"),
    as_json: bool = typer.Option(False, "--json", metavar="", help="print the API's answer as JSON"),
    url: str = UrlOption,
    token: str = TokenOption,
) -> None:
    """Submit a job, a workflow, or a list of jobs (one batch: all or none) from a JSON or YAML
    file."""
    try:
        spec = load_spec(file)
    except ValueError as exc:  # a UnicodeDecodeError too
        err.print(f"[red]cannot read {file}[/red]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if isinstance(spec, list):
        raise typer.Exit(_submit_batch(spec, as_json, wait, url, token))
    workflow = "jobs" in spec
    auth = find_token(token, url)

    def go():
        with SwitchyardClient(url, auth.token) as c:
            body = c.submit_workflow(spec) if workflow else c.submit(spec)
            if as_json:
                out.print_json(data=body)
            elif workflow:
                out.print(f"workflow [bold]{body['id']}[/bold] submitted: {len(body['jobs'])} steps", highlight=False)
                for key, job_id in body["jobs"].items():
                    out.print(f"  {key}: {job_id}", highlight=False)
            else:
                again = " (an existing job with this dedupe_key)" if body.get("deduplicated") else ""
                out.print(f"job [bold]{body['id']}[/bold] {body['status']}{again}", highlight=False)
            return _follow(c, body["id"], workflow) if wait else 0

    raise typer.Exit(_run(go, auth))


def _submit_batch(specs: list[dict], as_json: bool, wait: bool, url: str, token: str) -> int:
    """One batch; with `--wait`, a progress bar until every job has finished."""
    auth = find_token(token, url)

    def go():
        with SwitchyardClient(url, auth.token) as c:
            body = c.submit_many(specs)
            if as_json:
                out.print_json(data=body)
            else:
                again = f", {body['deduplicated']} existing (dedupe_key)" if body["deduplicated"] else ""
                out.print(f"{len(body['jobs'])} jobs submitted: {body['created']} new{again}", highlight=False)
                for job in body["jobs"]:
                    out.print(f"  {job['id']} {job['status']}", highlight=False)
            return _follow_many(c, [j["id"] for j in body["jobs"]]) if wait else 0

    return _run(go, auth)


def _follow_many(c: SwitchyardClient, ids: list[str], interval: float = 0.5) -> int:
    """A progress bar over the jobs' completion; 1 if any did not complete. Each round reads
    the first 50 unfinished jobs, in submit order: the batch runs roughly in that order."""
    left, failed = list(ids), 0
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task(f"{len(ids)} jobs", total=len(ids))
        while left:
            for job_id in left[:50]:
                body = c.status(job_id)
                if body["status"] in FINISHED:
                    left.remove(job_id)
                    failed += body["status"] != "completed"
                    bar.advance(task)
            if left:
                time.sleep(interval)
    out.print(f"{len(ids) - failed} completed, {failed} did not", highlight=False)
    return 1 if failed else 0


def status(
    id: str = typer.Argument(..., help="a job id or a workflow id"),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", metavar="", help="follow it until it finishes (--no-wait: print the status once)"
    ),
    interval: float = typer.Option(0.5, min=0.05, help="seconds between polls while following"),
    url: str = UrlOption,
    token: str = TokenOption,
) -> None:
    """Show a job or a workflow, with a live progress bar until it finishes.

    Exits 0 once it completed, 1 if it failed or was cancelled (0 with --no-wait)."""
    auth = find_token(token, url)

    def go():
        with SwitchyardClient(url, auth.token) as c:
            try:
                body, workflow = c.status(id), False
            except SwitchyardAPIError as exc:
                if exc.status != 404:
                    raise
                body, workflow = c.workflow_status(id), True
            if not wait or body["status"] in FINISHED:
                _summary(body, workflow)
                return _code(body) if wait else 0
            return _follow(c, id, workflow, interval)

    raise typer.Exit(_run(go, auth))


def _percent(body: dict, workflow: bool) -> float:
    return float(body.get("progress", 0.0)) if workflow else float((body.get("progress") or {}).get("percent", 0.0))


def _describe(body: dict, workflow: bool) -> str:
    if workflow:
        n = body.get("counts", {})
        return f"workflow {body['status']}: {n.get('completed', 0)}/{body['total']} steps done"
    stage = (body.get("progress") or {}).get("stage")
    return f"{body['engine']}.{body['operation']} {body['status']}" + (f" ({stage})" if stage else "")


def _follow(c: SwitchyardClient, id: str, workflow: bool, interval: float = 0.5) -> int:
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as bar:
        task = bar.add_task(id, total=100)
        while True:
            body = c.workflow_status(id) if workflow else c.status(id)
            bar.update(task, completed=_percent(body, workflow), description=_describe(body, workflow))
            if body["status"] in FINISHED:
                break
            time.sleep(interval)
    _summary(body, workflow)
    return _code(body)


def _code(body: dict) -> int:
    return 0 if body["status"] == "completed" else 1


def _summary(body: dict, workflow: bool) -> None:
    colour = {"completed": "green", "failed": "red", "cancelled": "yellow"}.get(body["status"], "cyan")
    kind = "workflow" if workflow else "job"
    out.print(
        f"{kind} [bold]{body['id']}[/bold] [{colour}]{body['status']}[/{colour}] ({_percent(body, workflow):.0f}%)",
        highlight=False,
    )
    if workflow:
        table = Table("step", "status", "engine.operation", "progress")
        for s in body.get("steps") or []:
            table.add_row(s["key"], s["status"], f"{s['engine']}.{s['operation']}", f"{s['progress']:.0f}%")
        out.print(table)
        return
    if body.get("result") is not None:
        out.print_json(data=body["result"])
    if body.get("last_error"):
        e = body["last_error"]
        out.print(f"last error: {e['code']}: {e['message']}", highlight=False)


def _age(at: Any) -> str:
    if not at:
        return "-"
    seconds = (datetime.now(UTC) - datetime.fromisoformat(str(at).replace("Z", "+00:00"))).total_seconds()
    return f"{max(seconds, 0):.0f}s ago"


def queues(url: str = UrlOption, token: str = TokenOption) -> None:
    """Every queue (engine): running against its limit, queued, paused, oldest wait."""
    auth = find_token(token, url)

    def go():
        with SwitchyardClient(url, auth.token) as c:
            rows = c.queues()
        table = Table("queue", "running", "queued", "paused", "oldest queued", title="queues")
        for q in rows:
            age = q.get("oldest_queued_age_seconds")
            table.add_row(
                q["name"],
                f"{q['running']}/{q['max_concurrent_jobs']}",
                str(q["queued"]),
                "yes" if q["paused"] else "",
                f"{age:.1f}s" if age is not None else "-",
            )
        out.print(table)
        return 0

    raise typer.Exit(_run(go, auth))


def workers(
    url: str = UrlOption,
    token: str = TokenOption,
    state: str = typer.Option(None, "--status", help="only alive, dead or stopped workers"),
) -> None:
    """Registered worker processes: host, pid, engines, slots, running jobs, last heartbeat."""
    auth = find_token(token, url)

    def go():
        with SwitchyardClient(url, auth.token) as c:
            rows = c.workers(status=state)
        table = Table("worker", "host", "pid", "kind", "engines", "running", "status", "last seen", title="workers")
        for w in rows:
            colour = {"alive": "green", "dead": "red"}.get(w["status"], "dim")
            table.add_row(
                w["id"],
                w["host"],
                str(w["pid"]),
                w.get("kind", ""),
                ",".join(w["engines"] or ["all"]),
                f"{w['running']}/{w['concurrency']}",
                f"[{colour}]{w['status']}[/{colour}]",
                _age(w["last_seen"]),
            )
        out.print(table)
        return 0

    raise typer.Exit(_run(go, auth))
