"""The API's reference: ``GET /openapi.json`` (the OpenAPI 3.1 document, built from the app's own
routes on first use) and ``GET /docs`` (a page of the console's build that renders it)."""

import functools
import json
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from chatgate import __version__
from chatgate.api import document
from chatgate.console.pages import NOT_BUILT, STATIC

# The page loads its script, style and the document from this server, and nothing from anywhere else.
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter()


@router.get(
    "/openapi.json",
    response_model=dict[str, Any],
    response_description="The OpenAPI 3.1 document of this server's API.",
)
async def openapi_document(request: Request) -> Response:
    state = request.app.state
    body: bytes | None = getattr(state, "openapi_json", None)
    if body is None:  # built once, off the event loop (it takes a few hundred milliseconds)
        built = await anyio.to_thread.run_sync(
            functools.partial(document.build, request.app, title="chatgate", version=__version__)
        )
        body = state.openapi_json = json.dumps(built).encode()
    return Response(body, media_type="application/json")


@router.get("/docs", response_class=HTMLResponse, response_description="The API reference, as a page.")
async def docs() -> Response:
    page = STATIC / "docs.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT)
    headers = {"cache-control": "no-cache", "content-security-policy": DOCS_POLICY}
    return FileResponse(page, media_type="text/html", headers=headers)
