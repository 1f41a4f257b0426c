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

from app.domain.userjson import field_path
from app.errors import SwitchyardError


class ErrorResponse(JSONResponse):
    """ASCII JSON: an error that names a client's key holding a lone surrogate still renders."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _loc(loc) -> list:
    loc = list(loc)
    return loc[1:] if loc[:1] == ["body"] else loc


def _entry(e: dict) -> dict:
    """One pydantic error as `{field, reason, type}` (plus `path` for user JSON)."""
    loc, ctx, kind = _loc(e.get("loc", ())), e.get("ctx") or {}, e.get("type")
    reason = str(e.get("msg", "invalid"))
    out = {"field": field_path(loc) or "body", "reason": reason, "type": kind}
    if kind == "user_json":  # app/domain/userjson.py: where inside the value, below the field
        out["path"] = field_path(loc + list(ctx.get("path", [])))
        out["reason"] = f"{ctx.get('reason', reason)}, at {out['path']}"
    elif kind == "json_invalid":
        at = loc[-1] if loc else 0
        out.update(field="body", reason=f"not valid JSON ({ctx.get('error', 'decode error')}) at character {at}")
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(SwitchyardError)
    async def _ours(_: Request, exc: SwitchyardError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 429 and "retry_after" in exc.details:
            headers = {"Retry-After": str(exc.details["retry_after"])}
        return ErrorResponse({"error": exc.to_dict()}, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_entry(e) for e in exc.errors()]
        first = errors[0] if errors else {"field": "body", "reason": "invalid"}
        return ErrorResponse(
            {"error": {"code": "validation_error", "message": f"{first['field']}: {first['reason']}",
                       "field": first["field"], "errors": errors}},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        body = {"code": f"http_{exc.status_code}", "message": str(exc.detail)}
        if exc.status_code == 400:  # FastAPI could not read the body (e.g. JSON nested too deeply)
            body["field"] = "body"
        return ErrorResponse({"error": body}, status_code=exc.status_code, headers=getattr(exc, "headers", None))
