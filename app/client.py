"""Python client for Switchyard's REST API, for other services: `SwitchyardClient` (sync)
and `AsyncSwitchyardClient` (async), both on httpx. See docs/client.md.

Owns: how each call maps to an HTTP request (`_req`, shared by both clients), turning the
API's error body `{"error": {"code", "message", "field"}}` into `SwitchyardAPIError`,
waiting for a job or workflow to finish (polling with back-off), and reading the
Server-Sent Events streams, resuming with `Last-Event-ID` after a dropped connection.
It imports nothing else of Switchyard, so it can be copied into another project.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
FINISHED = frozenset({"completed", "failed", "cancelled"})
API = "/api/v1/jobs"


class SwitchyardAPIError(Exception):
    """The API answered with an error. `status` is the HTTP status; `code`, `message`,
    `field` and `details` come from its error body."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, details: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.field, self.details = status, code, message, field, details or {}


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event: `id` is the event's seq (None for `connected` and `final`),
    `type` e.g. `job.running`, `job.progress`, `workflow.completed`, `final`; `data` its JSON."""

    id: int | None
    type: str
    data: Any


class SSEParser:
    """Feeds on the lines of a `text/event-stream`; returns an `Event` at each blank line."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._type = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                self._id, self._type = None, "message"
                return None
            raw = "\n".join(self._data)
            try:
                data = json.loads(raw)
            except ValueError:
                data = raw
            ev = Event(int(self._id) if self._id and self._id.isdigit() else None, self._type, data)
            self._id, self._type, self._data = None, "message", []
            return ev
        if line.startswith(":"):
            return None  # a comment: keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            self._id = value
        return None


def _error(resp: httpx.Response) -> SwitchyardAPIError:
    try:
        err = resp.json().get("error") or {}
    except ValueError:
        err = {}
    details = dict(err["details"]) if isinstance(err.get("details"), dict) else {}
    if "errors" in err:  # a validation error lists every field
        details["errors"] = err["errors"]
    return SwitchyardAPIError(
        resp.status_code,
        err.get("code") or f"http_{resp.status_code}",
        err.get("message") or resp.text[:500] or resp.reason_phrase,
        err.get("field"),
        details,
    )


def _body(obj: Any) -> Any:
    """A dict as is; a pydantic model (e.g. `app.domain.models.JobSpec`) as its JSON."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True)
    return obj


def _clean(params: dict) -> dict:
    return {k: v for k, v in params.items() if v is not None}


class _Stream:
    """What one events stream is about, and when it has ended."""

    def __init__(self, job_id: str | None, workflow_id: str | None, last: int | None, reconnects: int) -> None:
        if (job_id is None) == (workflow_id is None):
            raise ValueError("give job_id or workflow_id")
        self.job_id, self.workflow_id, self.last, self.reconnects = job_id, workflow_id, last, reconnects
        self.path = f"{API}/{job_id}/events" if job_id else f"{API}/workflows/{workflow_id}/events"
        self.ended, self.failures = False, 0

    def headers(self) -> dict:
        return {"Accept": "text/event-stream", **({"Last-Event-ID": str(self.last)} if self.last is not None else {})}

    def dropped(self) -> float:
        """The connection ended early: seconds to wait before resuming, or raise."""
        self.failures += 1
        if self.failures > self.reconnects:
            raise ConnectionError(f"events stream {self.path} kept dropping; last event {self.last}")
        return min(0.2 * 2**self.failures, 5.0)

    def saw(self, ev: Event) -> bool:
        """Record `ev`; True when nothing more will come (the `final` event)."""
        self.failures = 0
        self.last = ev.id if ev.id is not None else self.last
        kind, _, status = ev.type.partition(".")
        data = ev.data if isinstance(ev.data, dict) else {}
        if status in FINISHED and (
            (kind == "job" and self.job_id and data.get("job_id") == self.job_id)
            or (kind == "workflow" and self.workflow_id)
        ):
            self.ended = True
        if ev.type == "final":
            self.ended = True
            return True
        return False


class _Base:
    def __init__(self, url: str | None, token: str | None, timeout: float) -> None:
        self.url = (url or os.environ.get("SWITCHYARD_URL") or DEFAULT_URL).rstrip("/")
        token = token or os.environ.get("SWITCHYARD_TOKEN")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    @staticmethod
    def _result(resp: httpx.Response) -> Any:
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json() if resp.content else None


def _req(name: str, *args, **kw) -> tuple[str, str, dict]:
    """(method, path, httpx keyword arguments) for each call of both clients."""
    a = args[0] if args else None
    return {
        "submit": lambda: ("POST", f"{API}/submit", {"json": _body(a)}),
        "submit_many": lambda: ("POST", f"{API}/submit/batch", {"json": {"jobs": [_body(j) for j in a]}}),
        "submit_workflow": lambda: ("POST", f"{API}/workflows", {"json": _body(a)}),
        "status": lambda: ("GET", f"{API}/{a}/status", {}),
        "workflow_status": lambda: ("GET", f"{API}/workflows/{a}/status", {}),
        "cancel": lambda: ("POST", f"{API}/{a}/cancel", {}),
        "cancel_workflow": lambda: ("POST", f"{API}/workflows/{a}/cancel", {}),
        "retry": lambda: ("POST", f"{API}/{a}/retry", {}),
        "retry_workflow": lambda: ("POST", f"{API}/workflows/{a}/retry", {}),
        "jobs": lambda: ("GET", f"{API}/", {"params": _clean(kw)}),
        "dead_letter": lambda: ("GET", f"{API}/dead-letter", {"params": _clean(kw)}),
        "retry_failed": lambda: ("POST", f"{API}/retry", {"json": _clean(kw)}),
        "reset_stuck": lambda: ("POST", "/api/v1/admin/jobs/reset-stuck", {"json": _clean(kw)}),
        "queues": lambda: ("GET", f"{API}/queue/status", {}),
        "workers": lambda: ("GET", f"{API}/workers", {"params": _clean(kw)}),
    }[name]()


class _Waiter:
    """Poll delays for `wait`: from `poll` up to `max_poll` seconds, until `timeout`."""

    def __init__(self, what: str, timeout: float | None, poll: float, max_poll: float) -> None:
        self.what, self.poll, self.max_poll = what, poll, max_poll
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def next(self, body: dict) -> float:
        if self.deadline is not None and time.monotonic() + self.poll > self.deadline:
            raise TimeoutError(f"{self.what} is still {body['status']}")
        delay, self.poll = self.poll, min(self.poll * 1.5, self.max_poll)
        return delay


class SwitchyardClient(_Base):
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout)
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    def __enter__(self) -> SwitchyardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, name: str, *args, **kw) -> Any:
        method, path, options = _req(name, *args, **kw)
        return self._result(self.http.request(method, path, **options))

    def submit(self, job) -> dict:
        return self._call("submit", job)  # noqa: E704

    def submit_many(self, jobs) -> dict:
        """Many jobs in one request, all or none: `{jobs: [{id, status, deduplicated}], ...}`."""
        return self._call("submit_many", list(jobs))  # noqa: E704

    def submit_workflow(self, spec) -> dict:
        return self._call("submit_workflow", spec)  # noqa: E704

    def status(self, job_id: str) -> dict:
        return self._call("status", job_id)  # noqa: E704

    def workflow_status(self, workflow_id: str) -> dict:
        return self._call("workflow_status", workflow_id)  # noqa: E704

    def cancel(self, job_id: str) -> dict:
        return self._call("cancel", job_id)  # noqa: E704

    def cancel_workflow(self, workflow_id: str) -> dict:
        return self._call("cancel_workflow", workflow_id)  # noqa: E704

    def retry(self, job_id: str) -> dict:
        return self._call("retry", job_id)  # noqa: E704

    def retry_workflow(self, workflow_id: str) -> dict:
        return self._call("retry_workflow", workflow_id)  # noqa: E704

    def jobs(self, **filters) -> dict:
        return self._call("jobs", **filters)  # noqa: E704

    def dead_letter(self, **filters) -> dict:
        return self._call("dead_letter", **filters)  # noqa: E704

    def retry_failed(self, **filters) -> dict:
        return self._call("retry_failed", **filters)  # noqa: E704

    def reset_stuck(self, **body) -> dict:
        return self._call("reset_stuck", **body)  # noqa: E704

    def queues(self) -> list[dict]:
        return self._call("queues")["queues"]  # noqa: E704

    def workers(self, **filters) -> list[dict]:
        return self._call("workers", **filters)["workers"]  # noqa: E704

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll: float = 0.1,
        max_poll: float = 2.0,
        workflow: bool = False,
    ) -> dict:
        """Poll the status, backing off from `poll` to `max_poll` seconds, until the job (or
        with `workflow=True` the workflow) finishes. Returns its last status; raises
        `TimeoutError` after `timeout` seconds."""
        w = _Waiter(f"{'workflow' if workflow else 'job'} {job_id}", timeout, poll, max_poll)
        while (body := self.workflow_status(job_id) if workflow else self.status(job_id))["status"] not in FINISHED:
            time.sleep(w.next(body))
        return body

    def wait_workflow(self, workflow_id: str, timeout: float | None = None, **kw) -> dict:
        return self.wait(workflow_id, timeout, workflow=True, **kw)

    def stream_events(
        self,
        job_id: str | None = None,
        workflow_id: str | None = None,
        *,
        last_event_id: int | None = None,
        reconnects: int = 5,
        idle_timeout: float = 60.0,
    ) -> Iterator[Event]:
        """The events of a job or a workflow as they happen (after `last_event_id`, if
        given), ending after its `final` event. A dropped connection is resumed from the
        last event seen, up to `reconnects` times in a row."""
        st = _Stream(job_id, workflow_id, last_event_id, reconnects)
        while True:
            try:
                with self.http.stream(
                    "GET", st.path, headers=st.headers(), timeout=httpx.Timeout(self.timeout, read=idle_timeout)
                ) as resp:
                    if resp.status_code >= 400:
                        resp.read()
                        raise _error(resp)
                    parser = SSEParser()
                    for line in resp.iter_lines():
                        if (ev := parser.feed(line)) is not None:
                            yield ev
                            if st.saw(ev):
                                return
                if st.ended:
                    return
            except httpx.TransportError:
                pass
            time.sleep(st.dropped())


class AsyncSwitchyardClient(_Base):
    """The same calls as `SwitchyardClient`, as coroutines (and an async iterator of events)."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, token, timeout)
        self.http = httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncSwitchyardClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, name: str, *args, **kw) -> Any:
        method, path, options = _req(name, *args, **kw)
        return self._result(await self.http.request(method, path, **options))

    async def submit(self, job) -> dict:
        return await self._call("submit", job)  # noqa: E704

    async def submit_many(self, jobs) -> dict:
        """Many jobs in one request, all or none: `{jobs: [{id, status, deduplicated}], ...}`."""
        return await self._call("submit_many", list(jobs))  # noqa: E704

    async def submit_workflow(self, spec) -> dict:
        return await self._call("submit_workflow", spec)  # noqa: E704

    async def status(self, job_id: str) -> dict:
        return await self._call("status", job_id)  # noqa: E704

    async def workflow_status(self, workflow_id: str) -> dict:
        return await self._call("workflow_status", workflow_id)  # noqa: E704

    async def cancel(self, job_id: str) -> dict:
        return await self._call("cancel", job_id)  # noqa: E704

    async def cancel_workflow(self, workflow_id: str) -> dict:
        return await self._call("cancel_workflow", workflow_id)  # noqa: E704

    async def retry(self, job_id: str) -> dict:
        return await self._call("retry", job_id)  # noqa: E704

    async def retry_workflow(self, workflow_id: str) -> dict:
        return await self._call("retry_workflow", workflow_id)  # noqa: E704

    async def jobs(self, **filters) -> dict:
        return await self._call("jobs", **filters)  # noqa: E704

    async def dead_letter(self, **filters) -> dict:
        return await self._call("dead_letter", **filters)  # noqa: E704

    async def retry_failed(self, **filters) -> dict:
        return await self._call("retry_failed", **filters)  # noqa: E704

    async def reset_stuck(self, **body) -> dict:
        return await self._call("reset_stuck", **body)  # noqa: E704

    async def queues(self) -> list[dict]:
        return (await self._call("queues"))["queues"]  # noqa: E704

    async def workers(self, **filters) -> list[dict]:
        return (await self._call("workers", **filters))["workers"]  # noqa: E704

    async def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        poll: float = 0.1,
        max_poll: float = 2.0,
        workflow: bool = False,
    ) -> dict:
        """See `SwitchyardClient.wait`."""
        w = _Waiter(f"{'workflow' if workflow else 'job'} {job_id}", timeout, poll, max_poll)
        while (body := await (self.workflow_status(job_id) if workflow else self.status(job_id)))[
            "status"
        ] not in FINISHED:
            await asyncio.sleep(w.next(body))
        return body

    async def wait_workflow(self, workflow_id: str, timeout: float | None = None, **kw) -> dict:
        return await self.wait(workflow_id, timeout, workflow=True, **kw)

    async def stream_events(
        self,
        job_id: str | None = None,
        workflow_id: str | None = None,
        *,
        last_event_id: int | None = None,
        reconnects: int = 5,
        idle_timeout: float = 60.0,
    ) -> AsyncIterator[Event]:
        """See `SwitchyardClient.stream_events`."""
        st = _Stream(job_id, workflow_id, last_event_id, reconnects)
        while True:
            try:
                async with self.http.stream(
                    "GET", st.path, headers=st.headers(), timeout=httpx.Timeout(self.timeout, read=idle_timeout)
                ) as resp:
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise _error(resp)
                    parser = SSEParser()
                    async for line in resp.aiter_lines():
                        if (ev := parser.feed(line)) is not None:
                            yield ev
                            if st.saw(ev):
                                return
                if st.ended:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(st.dropped())
