"""The interactive API reference, `GET /docs` (Swagger UI), served without internet access:
its script, stylesheet and icon come from the `fastapi-offline` package, under
`/docs/assets/...`, never from a CDN. ReDoc is not offered (`redoc_url=None` in app/main.py).

The page carries its own security headers, like the dashboard's (app/api/dashboard.py) but
with the one inline script Swagger UI needs allowed by its hash, and inline styles (Swagger
UI sets `style` attributes as it renders); everything else is this origin only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

from ..errors import NotFound

ASSETS = Path(str(files("fastapi_offline") / "static"))
ASSET_URL = "/docs/assets"

router = APIRouter(include_in_schema=False)
_files = StaticFiles(directory=ASSETS, check_dir=False)


def _csp(html: str) -> str:
    inline = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline)
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {hashes}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",  # the page reads /openapi.json, and "Try it out" calls the API
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def _secured(response: Response, csp: str) -> Response:
    response.headers.update(
        {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        }
    )
    return response


@router.get("/docs")
async def swagger_ui(request: Request) -> Response:
    app = request.app
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - API reference",
        swagger_js_url=f"{root}{ASSET_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSET_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSET_URL}/favicon.png",
    )
    page.headers["Cache-Control"] = "no-cache"
    return _secured(page, _csp(page.body.decode()))


@router.get(ASSET_URL + "/{path:path}")
async def asset(path: str, request: Request) -> Response:
    """Swagger UI's files, from the installed package; revalidated like the dashboard's."""
    try:
        response = await _files.get_response(path, request.scope)
    except HTTPException as exc:
        if exc.status_code == 404:
            raise NotFound(f"no API reference file {path!r}", field="path") from None
        raise
    response.headers["Cache-Control"] = "no-cache"
    return _secured(response, "default-src 'none'")
