"""Serves the built console at ``/``; the sources are in ``console/`` at the repository root."""

from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

STATIC = Path(__file__).parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
NOT_BUILT = """<!doctype html><title>chatgate</title>
<p>The console is not built. Run <code>make run</code> (or <code>cd console && npm ci && npm run build</code>).</p>"""

router = APIRouter()


def headers(request: Request) -> dict[str, str]:
    """The console loads nothing from anywhere else: its own script and styles, images from chatgate
    itself (generated images and uploads, at its public URL too) and data URLs; no inline script or
    style, no framing."""
    public = urlsplit(request.app.state.settings.base_url)
    images = f"'self' data: {public.scheme}://{public.netloc}"
    policy = (
        f"default-src 'self'; script-src 'self'; style-src 'self'; img-src {images}; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-frame-options": "DENY",
        "x-content-type-options": "nosniff",
        "referrer-policy": "same-origin",
    }


@router.get("/", include_in_schema=False)
async def index(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT, headers=headers(request))
    return FileResponse(
        page, media_type="text/html", headers={"cache-control": "no-cache", **headers(request)}
    )


@router.get("/assets/{name}", include_in_schema=False)
async def asset(name: str, request: Request) -> Response:
    path = (STATIC / "assets" / name).resolve()
    if path.parent != (STATIC / "assets").resolve() or not path.is_file():
        return Response(status_code=404)
    return FileResponse(
        path, media_type=TYPES.get(path.suffix, "application/octet-stream"), headers=headers(request)
    )
