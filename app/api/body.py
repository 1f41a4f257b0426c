"""What a request body must be before any route sees it (ASGI middleware, `BodyGuard`):

- at most `SWITCHYARD_MAX_BODY_BYTES`, whether or not it declares its length: 413. The
  body is read here, up to the cap, so a chunked body over the cap gets 413 like a
  declared one (a route reading it would turn the failure into FastAPI's generic 400);
- JSON bodies are UTF-8 and hold no lone UTF-16 surrogate (JSON's `"\\udfff"`), in a key
  or a value, at any depth: 422 naming where. Python's `json` decodes such an escape into a
  string that no UTF-8 encoder (BSON's, or our JSON answers') accepts, so it must never
  reach a route.

A refused body is answered here; the app never runs, so it changes nothing.
"""

from __future__ import annotations

import json
import re

from ..domain.userjson import field_path

# A `\uD800`-`\uDFFF` escape: only then can the decoded JSON hold a lone surrogate (a
# valid pair decodes to one character), so only then is the body parsed here.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate_at(value) -> list | None:
    """The path to the first key or string holding a lone surrogate, or None."""
    todo = [(value, [])]
    while todo:
        v, path = todo.pop()
        if isinstance(v, dict):
            for k, child in v.items():
                if not _encodes(k):
                    return [*path, k]
                todo.append((child, [*path, k]))
        elif isinstance(v, list):
            todo.extend((child, [*path, i]) for i, child in enumerate(v))
        elif isinstance(v, str) and not _encodes(v):
            return path
    return None


def _encodes(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _is_json(scope) -> bool:
    for name, value in scope.get("headers", []):
        if name == b"content-type":
            return b"json" in value.lower()
    return True  # no content type: FastAPI may still read it as JSON


def problem(scope, body: bytes) -> tuple[str, str] | None:
    """`(field, reason)` when a JSON body may not reach the routes."""
    if not body or not _is_json(scope):
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "body", "not valid UTF-8"
    if not _SURROGATE_ESCAPE.search(body):
        return None
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route answers that, naming the position
    path = lone_surrogate_at(value)
    if path is None:
        return None
    return field_path(path) or "body", "a string or key may not hold a lone UTF-16 surrogate (\\ud800-\\udfff)"


class BodyGuard:
    """ASGI middleware; see the module's docstring."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        bad = problem(scope, body)
        if bad is not None:
            field, reason = bad
            return await _reply(
                send,
                422,
                {
                    "code": "validation_error",
                    "message": f"{field}: {reason}",
                    "field": field,
                    "errors": [{"field": field, "reason": reason, "type": "lone_surrogate"}],
                },
            )
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnects, for streaming answers

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        await _reply(
            send,
            413,
            {"code": "payload_too_large", "message": f"request body is over {self.max_bytes} bytes", "field": "body"},
        )


async def _reply(send, status: int, error: dict) -> None:
    body = json.dumps({"error": error}, ensure_ascii=True).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
