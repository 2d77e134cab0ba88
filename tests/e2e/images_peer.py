"""An OpenAI-compatible images API for the drawing tests (no real one runs here; it is the backend's peer).

``POST /v1/images/generations`` and ``POST /v1/images/edits`` answer one PNG of the requested size as
``b64_json``, drawn from the prompt; edits paste the first input image in. Requests need the bearer
key given on the command line. ``GET /stats`` tells what was asked.
"""

import argparse
import base64
import hashlib
import io
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, ImageDraw

calls: list[dict[str, Any]] = []


def picture(prompt: str, size: str, paste: bytes | None = None) -> str:
    width, height = (int(v) for v in size.split("x"))
    colour = tuple(hashlib.sha256(prompt.encode()).digest()[:3])
    image = Image.new("RGB", (width, height), colour)  # type: ignore[arg-type]
    if paste is not None:
        with Image.open(io.BytesIO(paste)) as given:
            image.paste(given.convert("RGB").resize((width // 2, height // 2)), (0, 0))
    ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill="white")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def create(key: str) -> FastAPI:
    app = FastAPI()

    def refused(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {key}":
            error = {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
            return JSONResponse({"error": error}, status_code=401)
        return None

    def answer(prompt: str, size: str, paste: bytes | None = None) -> JSONResponse:
        if size not in ("256x256", "512x384", "1024x1024"):
            error = {"message": f"Invalid size {size!r}", "type": "invalid_request_error", "param": "size"}
            return JSONResponse({"error": error}, status_code=400)
        data = [{"b64_json": picture(prompt, size, paste), "revised_prompt": prompt}]
        return JSONResponse({"created": int(time.time()), "data": data})

    @app.post("/v1/images/generations")
    async def generations(request: Request) -> JSONResponse:
        body = await request.json()
        calls.append(
            {"endpoint": "generations", "prompt": body.get("prompt"), "size": body.get("size"), "images": 0}
        )
        return refused(request) or answer(str(body.get("prompt")), str(body.get("size")))

    @app.post("/v1/images/edits")
    async def edits(request: Request) -> JSONResponse:
        form = await request.form()
        images = [await f.read() for f in form.getlist("image[]") if not isinstance(f, str)]
        calls.append(
            {
                "endpoint": "edits",
                "prompt": form.get("prompt"),
                "size": form.get("size"),
                "images": len(images),
            }
        )
        return refused(request) or answer(
            str(form.get("prompt")), str(form.get("size")), images[0] if images else None
        )

    @app.get("/stats")
    async def stats() -> list[dict[str, Any]]:
        return calls

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    uvicorn.run(create(args.key), host="127.0.0.1", port=args.port, log_level="warning")
