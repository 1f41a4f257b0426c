"""Quarantine: a suspect job's attempt runs in a child process of its own.

A job is suspect once an attempt ended with `lease_expired`: the worker running it died or
stalled. If the job itself killed the process (a crash in native code, the OOM
killer, `os._exit`), running it again in a worker would kill that worker too, with every
other job and permit it holds, once per attempt. In a child, a crash costs only the
attempt: it fails at once with the code `HandlerCrashed` (retryable like any error), and no
lease has to run out first.

The child imports the same handler modules (`registry.load`) and runs the handler under a
`JobContext` whose progress, usage, cancellation and `add_steps` (a request answered by the
parent) travel over a pipe; the parent's `Execution`
keeps timeouts, cancellation and lease loss exactly as for an in-process run (cancelling
the parent's task kills the child, and a child whose worker died exits). A handler the
child cannot find (registered outside a module) runs in-process as before.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection, wait
from typing import Any

from ..context import JobContext, PermanentError, RateLimited, Retry, StepsRejected


class HandlerCrashed(Exception):
    """The child running a quarantined attempt died without an answer."""


SUSPECT_CODES = ("lease_expired", "HandlerCrashed")


def is_suspect(job: dict) -> bool:
    """An earlier attempt's worker died or stalled while running it, or a quarantined
    attempt crashed: every later attempt stays in quarantine."""
    return any(e.get("code") in SUSPECT_CODES for e in job.get("errors") or ())


async def run(ctx: JobContext, modules: list[str], fallback: Callable[[JobContext], Awaitable[Any]]) -> Any:
    """Run the handler of `ctx` in a child; returns its result or raises what it raised.
    `fallback` (the handler itself) runs in-process when the child cannot find it."""
    mp = _context(modules)
    parent, child = mp.Pipe()
    fields = {
        "job_id": ctx.job_id,
        "engine": ctx.engine,
        "operation": ctx.operation,
        "attempt": ctx.attempt,
        "params": ctx.params,
        "parents": ctx.parents,
        "workflow_id": ctx.workflow_id,
        "_lease_token": ctx.lease_token,
    }
    proc = mp.Process(target=_child, args=(child, modules, fields), name=f"quarantine-{ctx.job_id}", daemon=True)
    proc.start()
    child.close()
    told_cancel = False
    try:
        while True:
            if ctx.cancelled.is_set() and not told_cancel:
                told_cancel = True
                parent.send(("cancel",))
            ready = await asyncio.to_thread(wait, [parent, proc.sentinel], 0.1)
            if parent.poll():
                try:
                    msg = parent.recv()
                except EOFError:  # the child is gone, without an answer
                    msg = None
                if msg is not None:
                    if msg[0] == "progress":
                        await ctx.progress(*msg[1:])
                        continue
                    if msg[0] == "usage":
                        await ctx.usage(**msg[1])
                        continue
                    if msg[0] == "add_steps":
                        parent.send(await _add_steps(ctx, msg[1]))
                        continue
                    if msg[0] == "ok":
                        return msg[1]
                    if msg[0] == "nohandler":
                        break
                    raise _rebuild(msg)
            elif proc.sentinel not in ready:
                continue
            await asyncio.to_thread(proc.join, 1)
            raise HandlerCrashed(
                f"the handler's process died (exit code {proc.exitcode}) on a quarantined attempt; "
                "the previous attempt's worker had died or stalled while running this job"
            )
    finally:
        if proc.is_alive():
            proc.kill()
        await asyncio.to_thread(proc.join, 5)
        parent.close()
    return await fallback(ctx)  # registered outside a module: the child could not find it


async def _add_steps(ctx: JobContext, steps: list) -> tuple:
    """The parent's answer to a child's `ctx.add_steps`."""
    try:
        return ("added", await ctx.add_steps(steps))
    except StepsRejected as exc:
        return ("add_rejected", exc.message, exc.field)
    except Retry as exc:
        return ("add_retry", exc.after, exc.reason)
    except Exception as exc:  # noqa: BLE001 (the child raises it, by its class name)
        return ("add_error", type(exc).__name__, str(exc))


_preloaded: list[str] | None = None


def _context(modules: list[str]):
    """Children fork from a forkserver that has imported the handler modules once: a few
    milliseconds each, where a spawned interpreter took half a second of CPU (which a
    worker crash holding fifty jobs would pay fifty times). Never a plain fork: the worker
    runs threads (the driver's), and forking those is unsafe."""
    global _preloaded
    ctx = multiprocessing.get_context("forkserver")
    if _preloaded is None:
        _preloaded = ["app.worker.quarantine", "handlers", *modules]
        ctx.set_forkserver_preload(_preloaded)
    return ctx


def _rebuild(msg: tuple) -> Exception:
    kind = msg[0]
    if kind == "retry":
        return Retry(after=msg[1], reason=msg[2])
    if kind == "permanent":
        return PermanentError(msg[1], msg[2])
    if kind == "ratelimited":
        return RateLimited(msg[1], msg[2], msg[3])
    name, text = msg[1], msg[2]
    if name == "TimeoutError":
        return TimeoutError(text)
    return type(name, (Exception,), {})(text)  # the class name is the error code


def _child(conn: Connection, modules: list[str], fields: dict) -> None:
    from .. import registry

    try:
        registry.load(modules)
        h = registry.get(fields["engine"], fields["operation"])
        if h is None:
            conn.send(("nohandler",))
            return
        conn.send(asyncio.run(_run_child(conn, h, fields)))
    except BaseException as exc:  # noqa: BLE001 (everything goes back to the parent)
        conn.send(_describe(exc))
    finally:
        conn.close()
        os._exit(0)


async def _run_child(conn: Connection, h, fields: dict) -> tuple:
    loop = asyncio.get_running_loop()

    async def sink(percent: float, stage: str | None, data: dict) -> None:
        conn.send(("progress", percent, stage, data))

    async def usage(values: dict) -> None:
        conn.send(("usage", values))

    answers: asyncio.Queue = asyncio.Queue()
    one_at_a_time = asyncio.Lock()

    async def spawn(steps: list) -> dict:
        async with one_at_a_time:
            conn.send(("add_steps", steps))
            answer = await answers.get()
        if answer[0] == "added":
            return answer[1]
        if answer[0] == "add_rejected":
            raise StepsRejected(answer[1], answer[2])
        if answer[0] == "add_retry":
            raise Retry(after=answer[1], reason=answer[2])
        raise type(answer[1], (Exception,), {})(answer[2])

    ctx = JobContext(**fields, _sink=sink, _usage_sink=usage, _spawn=spawn)

    def on_message() -> None:
        try:
            msg = conn.recv()
        except EOFError:  # the worker died: nobody can take our answer, and its lease runs out
            os._exit(70)
        if msg[0] == "cancel":
            ctx.cancelled.set()
        else:  # the answer to an add_steps
            answers.put_nowait(msg)

    loop.add_reader(conn.fileno(), on_message)
    try:
        return ("ok", await h.fn(ctx))
    except BaseException as exc:  # noqa: BLE001
        return _describe(exc)


def _describe(exc: BaseException) -> tuple:
    if isinstance(exc, RateLimited):
        return ("ratelimited", exc.retry_after, exc.key, exc.reason)
    if isinstance(exc, Retry):
        return ("retry", exc.after, exc.reason)
    if isinstance(exc, PermanentError):
        return ("permanent", exc.code, exc.message)
    return ("error", type(exc).__name__, str(exc))
