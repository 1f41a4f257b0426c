"""The browser dashboard: `GET /` (the page) and `GET /static/...` (its ES modules, CSS and
icon, shipped inside the package under `app/static`). No build step, no Node.js.

The page holds no token of its own: it asks for one and keeps it in the tab's session
storage, and talks to the REST API and the WebSocket like any other client (docs/dashboard.md).

Every response of these routes carries the dashboard's security headers: a Content Security
Policy that allows scripts, styles and connections from this origin only (so no inline
script can run, and the page cannot be framed), `X-Content-Type-Options: nosniff` and a
strict referrer policy. The headers are set here, on these routes only; the API's own
responses are JSON and are left alone.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from ..errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",  # same-origin fetch, and ws:/wss: to this host (CSP Level 3)
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # for browsers that predate frame-ancestors
    "Cross-Origin-Opener-Policy": "same-origin",
}

router = APIRouter(include_in_schema=False)
_files = StaticFiles(directory=STATIC_DIR, check_dir=False)


def _secured(response: Response, cache: str) -> Response:
    for name, value in HEADERS.items():
        response.headers[name] = value
    response.headers["Cache-Control"] = cache
    return response


@router.get("/")
async def index() -> Response:
    """The dashboard's single page; routes are in the URL's fragment (`#/jobs/{id}`)."""
    return _secured(FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8"), "no-cache")


@router.get("/static/{path:path}")
async def static(path: str, request: Request) -> Response:
    """A file under `app/static`; StaticFiles refuses paths outside it and answers
    conditional requests with 304. Revalidated on every load (`no-cache`), so an upgrade
    never leaves a browser with a stale mix of modules."""
    try:
        response = await _files.get_response(path, request.scope)
    except HTTPException as exc:  # missing, a directory, or outside the folder
        if exc.status_code == 404:
            raise NotFound(f"no dashboard file {path!r}", field="path") from None
        raise
    return _secured(response, "no-cache")
