"""Files: ``GET /files/{id}`` serves generated and uploaded images (the unguessable id is the capability,
no token is needed); ``POST /v1/files`` uploads an image to refer to by URL."""

from typing import Annotated

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse, JSONResponse

from chatgate.api.deps import CallerDep, FilesDep
from chatgate.errors import NotFound

router = APIRouter()
api_router = APIRouter()


@router.get("/files/{file_id}")
async def get_file(file_id: str, files: FilesDep, download: bool = False) -> FileResponse:
    found = await files.store.get(file_id)
    if found is None:
        raise NotFound(f"No file {file_id!r} (it may have expired).", param="file_id")
    meta, path = found
    return FileResponse(
        path,
        media_type=meta.content_type,
        filename=meta.filename,
        content_disposition_type="attachment" if download else "inline",
        headers={"cache-control": "private, max-age=86400", "x-content-type-options": "nosniff"},
    )


@api_router.post("/files")
async def upload_file(
    caller: CallerDep,
    files: FilesDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()] = "vision",
) -> JSONResponse:
    """An image uploaded to refer to by URL in chat: ``{"type": "image_url", "image_url": {"url": <url>}}``."""
    data = await file.read(files.store.max_file_bytes + 1)
    stored = await files.upload(caller.principal, data, file.filename or "upload")
    url = f"{files.public_url}/files/{stored.id}"
    return JSONResponse(
        {
            "id": stored.id,
            "object": "file",
            "bytes": stored.bytes,
            "created_at": stored.created,
            "filename": file.filename or stored.filename,
            "purpose": purpose,
            "status": "processed",
            "url": url,
        }
    )
