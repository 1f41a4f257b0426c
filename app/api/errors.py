"""Maps errors to HTTP in one place.

Every error body has the shape `{"error": {"code", "message", "field"?, ...}}`. Messages name
the field and the rule it broke, never the submitted value: pydantic's `input` is dropped,
and field paths (which may hold a client's dict keys) are made printable and cut short.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..domain.userjson import field_path
from ..errors import SwitchyardError


class ErrorResponse(JSONResponse):
    """ASCII JSON: an error that names a client's key holding a lone surrogate still renders."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _loc(loc) -> list:
    loc = list(loc)
    return loc[1:] if loc[:1] == ["body"] else loc


def _position(body: str | None, at: int) -> dict:
    """Where a JSON decode error is, as 1-based line and column of the body's text."""
    if body is None:
        return {"character": at}
    line_start = body.rfind("\n", 0, at) + 1
    return {"line": body.count("\n", 0, at) + 1, "column": at - line_start + 1, "character": at}


def _entry(e: dict, body: str | None = None) -> dict:
    """One pydantic error as `{field, reason, type}` (plus `path` for user JSON, `position`
    for a body that is not JSON)."""
    loc, ctx, kind = _loc(e.get("loc", ())), e.get("ctx") or {}, e.get("type")
    reason = str(e.get("msg", "invalid"))
    out = {"field": field_path(loc) or "body", "reason": reason, "type": kind}
    if kind == "user_json":  # app/domain/userjson.py: where inside the value, below the field
        out["path"] = field_path(loc + list(ctx.get("path", [])))
        out["reason"] = f"{ctx.get('reason', reason)}, at {out['path']}"
    elif kind == "json_invalid":
        at = loc[-1] if loc and isinstance(loc[-1], int) else 0
        pos = _position(body, at)
        where = f"line {pos['line']}, column {pos['column']}" if "line" in pos else f"character {at}"
        out.update(field="body", position=pos, reason=f"not valid JSON ({ctx.get('error', 'decode error')}) at {where}")
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(SwitchyardError)
    async def _ours(_: Request, exc: SwitchyardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 429 and "retry_after" in exc.details:
            headers = {"Retry-After": str(exc.details["retry_after"])}
        return ErrorResponse({"error": {"field": None, **exc.to_dict()}}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        body = await _text(request) if any(e.get("type") == "json_invalid" for e in exc.errors()) else None
        errors = [_entry(e, body) for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "reason": "invalid"}
        out = {"code": "validation_error", "message": f"{first['field']}: {first['reason']}", "field": first["field"]}
        if "position" in first:
            out["position"] = first["position"]
        return ErrorResponse({"error": {**out, "errors": errors}}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400: FastAPI could not read the body (e.g. JSON nested too deeply); 404: no such
        # route; 405: the route exists, not with this method
        field = {400: "body", 404: "path", 405: "method"}.get(exc.status_code)
        body = {"code": f"http_{exc.status_code}", "message": _message(request, exc), "field": field}
        return ErrorResponse({"error": body}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _message(request: Request, exc: StarletteHTTPException) -> str:
    if exc.status_code == 404 and exc.detail == "Not Found":
        return "no such route"
    if exc.status_code == 405:
        return f"method {request.method} is not allowed here"
    return str(exc.detail)


async def _text(request: Request) -> str | None:
    """The request's body as text, when it can still be read (it was, to be parsed)."""
    try:
        return (await request.body()).decode("utf-8", errors="replace")
    except Exception:
        return None
