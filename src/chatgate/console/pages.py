"""Serves the built console at ``/``; the sources are in ``console/`` at the repository root."""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

STATIC = Path(__file__).parent / "static"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
NOT_BUILT = """<!doctype html><title>chatgate</title>
<p>The console is not built. Run <code>make run</code> (or <code>cd console && npm ci && npm run build</code>).</p>"""

router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return HTMLResponse(NOT_BUILT)
    return FileResponse(page, media_type="text/html", headers={"cache-control": "no-cache"})


@router.get("/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    path = (STATIC / "assets" / name).resolve()
    if path.parent != (STATIC / "assets").resolve() or not path.is_file():
        return Response(status_code=404)
    return FileResponse(path, media_type=TYPES.get(path.suffix, "application/octet-stream"))
