"""The `switchyard` command: `serve` (API + dashboard + supervised worker processes) and `worker`.

Without `MONGODB_URL`, `serve` starts (or joins) the embedded server under the data
directory and `worker` joins the one a running `serve` recorded there.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys

import typer

from .settings import Settings

cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Switchyard: MongoDB-backed job orchestrator",
)


def _settings(handlers: str | None, lease_seconds: float | None = None) -> Settings:
    s = Settings()
    if handlers:
        s.handlers = ",".join(filter(None, [s.handlers, handlers]))
    if lease_seconds:
        s.lease_seconds = lease_seconds
    from .domain import redact
    from .logs import configure

    configure(s.log_level, s.log_json)
    redact.configure(s.secret_param_names, s.secret_allow_names)  # a worker's log lines too
    return s


def _admin_token(s: Settings) -> str:
    """Nothing is open without a token: when none is configured, make one and keep it in
    the data directory so restarts and the dashboard keep working."""
    if s.admin_token:
        return s.admin_token
    path = s.data_dir / "admin_token"
    if path.exists():
        return path.read_text().strip()
    s.data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    path.write_text(token)
    path.chmod(0o600)
    return token


def _load_handlers(s: Settings) -> None:
    """Import the handler modules now: a module that cannot be imported is one line on
    stderr and exit code 2, not a traceback from deep inside the server."""
    from . import registry

    try:
        registry.load(s.handler_modules())
    except (registry.HandlerModuleError, registry.DuplicateHandler) as exc:
        typer.echo(f"switchyard: {exc}", err=True)
        raise typer.Exit(2) from None


def _bind(host: str, port: int):
    """The listening socket, bound before anything starts: a taken port is one line on
    stderr and exit code 1."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY only on sockets whose proto says
    # TCP, and with Nagle on, every response waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        typer.echo(f"switchyard: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    sock.set_inheritable(True)
    return sock


@cli.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    workers: int = typer.Option(4, min=0, help="job slots, run in supervised worker processes (0: API only)"),
    processes: int = typer.Option(1, min=1, help="worker processes sharing the job slots"),
    handlers: str = typer.Option(
        None, help="extra handler modules, comma-separated (looked up in the current directory first)"
    ),
) -> None:
    """Run the API, the dashboard and a supervised pool of worker processes."""
    import uvicorn

    from . import embedded
    from .http_limits import uvicorn_options
    from .main import create_app
    from .worker.supervisor import Supervisor

    s = _settings(handlers)
    _load_handlers(s)
    sock = _bind(host, port)
    server = None
    url = s.mongodb_url
    if not url:
        server = embedded.start_or_join(s.data_dir.resolve())
        url = server.url
        typer.echo(f"embedded database: {url} (data in {s.data_dir.resolve() / 'db'})", err=True)
    s.admin_token = _admin_token(s)
    if not Settings().admin_token:
        typer.echo(f"admin token (from {s.data_dir / 'admin_token'}): {s.admin_token}", err=True)
        from .cli_client import record_serve  # client commands find this token from any directory

        record_serve(s.data_dir, host, port)
    if "public_url" not in s.model_fields_set:  # links in emails and logs point here
        s.public_url = f"http://{host}:{port}"
    sup = Supervisor(s, url, slots=workers, processes=processes, handlers=handlers) if workers else None
    # uvicorn handles SIGTERM/SIGINT (graceful shutdown), then re-raises the signal to the
    # handler found at start-up; a no-op one lets us stop the embedded server and exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    # Event messages are small JSON: compressing each costs more CPU than it saves bytes.
    config = uvicorn.Config(
        create_app(s, url=url, supervisor=sup),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=int(s.shutdown_grace_seconds) + 5,
        ws_per_message_deflate=False,
        ws_max_size=64 * 1024,
        **uvicorn_options(s),
    )
    web = uvicorn.Server(config)

    async def run() -> None:
        task = asyncio.create_task(web.serve(sockets=[sock]))
        while not web.started and not task.done():
            await asyncio.sleep(0.05)
        if web.started:  # listening, with its lifespan (database, supervisor) up
            typer.echo(f"Switchyard on http://{host}:{port}  (workers: {workers})", err=True)
        await task

    try:
        asyncio.run(run())
    finally:
        if server is not None:
            server.stop()
    if not web.started:
        raise typer.Exit(1)


@cli.command()
def worker(
    concurrency: int = typer.Option(4, min=1, help="job slots in this process"),
    engines: str = typer.Option(None, help="only these engines, comma-separated"),
    handlers: str = typer.Option(
        None, help="extra handler modules, comma-separated (looked up in the current directory first)"
    ),
    metrics_port: int = typer.Option(None, min=1, max=65535, help="serve Prometheus /metrics on this port"),
    supervisor: str = typer.Option(None, hidden=True, help="the id of the `serve` supervising this process"),
    parent_pid: int = typer.Option(None, hidden=True, help="exit when this process is gone"),
) -> None:
    """Run a separate worker process against the same database."""
    from . import embedded

    s = _settings(handlers)
    s.metrics_port = metrics_port or s.metrics_port  # or SWITCHYARD_METRICS_PORT
    _load_handlers(s)
    url = s.mongodb_url or embedded.recorded_url(s.data_dir.resolve())
    if not url:
        typer.echo(f"no MONGODB_URL and no running `switchyard serve` recorded in {s.data_dir.resolve()}", err=True)
        raise typer.Exit(2)
    only = [e.strip() for e in engines.split(",") if e.strip()] if engines else None
    asyncio.run(_run_worker(s, url, concurrency, only, supervisor, parent_pid))


@cli.command()
def migrate() -> None:
    """Create the database's indexes and run its migrations, then exit: run it once before a
    rolling deploy (every process also migrates at start when the database is behind, one
    at a time)."""
    from . import embedded
    from .store import connect

    s = _settings(None)
    url = s.mongodb_url or embedded.recorded_url(s.data_dir.resolve())
    if not url:
        typer.echo(f"no MONGODB_URL and no running `switchyard serve` recorded in {s.data_dir.resolve()}", err=True)
        raise typer.Exit(2)

    async def run() -> None:
        store = connect(url, s)
        try:
            await store.clock.sync()
            await store.migrate()
            typer.echo(f"migrated {s.mongodb_db}: schema {store.schema()}", err=True)
        finally:
            await store.close()

    asyncio.run(run())


async def _run_worker(
    s: Settings,
    url: str,
    concurrency: int,
    engines: list[str] | None,
    supervisor: str | None = None,
    parent_pid: int | None = None,
) -> None:
    from .store import connect
    from .worker.maintenance import Maintenance
    from .worker.processor import JobProcessor

    if s.metrics_port:  # first: a port in use fails before the worker registers
        from .metrics import serve_worker_metrics

        serve_worker_metrics(s.metrics_port, s.metrics_addr)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if parent_pid:
        from .worker.supervisor import watch_parent

        watch_parent(parent_pid, lambda: loop.call_soon_threadsafe(stop.set), s.shutdown_grace_seconds + 5)
    store = connect(url, s)
    await store.start()
    maint = Maintenance(store, s)
    # A pool that `serve` supervises registers as `serve`'s, a standalone one as a worker.
    kind = "serve" if supervisor else "worker"
    proc = JobProcessor(store, s, concurrency=concurrency, engines=engines, kind=kind, supervisor=supervisor)
    await maint.start()
    await proc.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"worker {proc.worker_id} running (concurrency {concurrency})", file=sys.stderr, flush=True)
    await stop.wait()
    await proc.stop()
    await maint.stop()
    await store.close()


from .cli_client import register  # noqa: E402  (the client commands: submit, status, queues, workers)

register(cli)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
