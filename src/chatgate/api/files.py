"""Files: ``GET /files/{id}`` serves generated and uploaded images (the unguessable id is the capability,
no token is needed); ``POST /v1/files`` uploads an image to refer to by URL, within the caller's
storage quota; ``GET /v1/files`` lists the caller's uploads and ``DELETE /v1/files/{id}`` removes one."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from chatgate.api.deps import CallerDep, FilesDep
from chatgate.api.openapi import described, links, raises
from chatgate.errors import EngineBusy, InvalidImage, InvalidRequest, NotFound, StorageFull
from chatgate.protocol.files import DeletedFile, FileList, FileObject, FileUpload
from chatgate.services.files import IMAGE_TYPES
from chatgate.storage.files import StoredFile

router = APIRouter()
api_router = APIRouter()


@router.get(
    "/files/{file_id}",
    response_class=FileResponse,
    response_description="The file, as an image.",
    responses={
        200: {"content": {kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES}},
        **raises(NotFound),
    },
)
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


def _file(stored: StoredFile, url: str, filename: str | None = None) -> dict[str, Any]:
    return {
        "id": stored.id,
        "object": "file",
        "bytes": stored.bytes,
        "created_at": stored.created,
        "filename": filename or stored.filename,
        "purpose": "vision",
        "status": "processed",
        "url": url,
    }


@api_router.post(
    "/files",
    response_model=FileObject,
    responses={
        200: links(GetFile=("get_file", {"file_id": "$response.body#/id"})),
        **raises(InvalidImage, EngineBusy, StorageFull),
    },
    # Multipart, read by hand so an oversized upload is refused before it is spooled (below).
    openapi_extra=described(body=FileUpload, media_type="multipart/form-data"),
)
async def upload_file(request: Request, caller: CallerDep, files: FilesDep) -> JSONResponse:
    """An image uploaded to refer to by URL in chat: ``{"type": "image_url", "image_url": {"url": <url>}}``.

    Multipart, as the SDK's ``files.create`` sends it. The size is checked from Content-Length before
    anything is read, so an oversized upload is refused without being spooled to disk. It counts
    against the caller's storage quota: the caller's own oldest uploads make room.
    """
    limit = files.max_upload_bytes + 64 * 1024  # the file and the multipart framing around it
    length = request.headers.get("content-length", "")
    if not (length.isascii() and length.isdigit()):
        raise InvalidRequest("Uploads need a Content-Length header.", param="file")
    if int(length) > limit:
        raise InvalidRequest(f"Files are limited to {files.max_upload_bytes} bytes.", param="file")
    try:
        async with request.form(max_files=1, max_fields=4) as form:
            file, purpose = form.get("file"), form.get("purpose", "vision")
            if not isinstance(file, UploadFile):
                raise InvalidRequest("The form needs a 'file' part holding the image.", param="file")
            data = await file.read(files.max_upload_bytes + 1)
            filename = file.filename or "upload"
    except (MultiPartException, ValueError) as exc:
        raise InvalidRequest(f"The upload is not valid multipart form data: {exc}", param="file") from exc
    except HTTPException as exc:  # the form parser's refusals (too many fields or files) come as this
        raise InvalidRequest(
            f"The upload is not valid multipart form data: {exc.detail}", param="file"
        ) from exc
    stored = await files.upload(caller.principal, data, filename)
    return JSONResponse({**_file(stored, files.store.url(stored.id), filename), "purpose": str(purpose)[:64]})


@api_router.get("/files", response_model=FileList)
async def list_files(caller: CallerDep, files: FilesDep) -> JSONResponse:
    """The caller's uploads, oldest first, and what they hold of the caller's storage quota."""
    owned = await files.owned(caller.principal)
    return JSONResponse(
        {
            "object": "list",
            "data": [_file(stored, files.store.url(stored.id)) for stored in owned],
            "has_more": False,
            "bytes": sum(stored.bytes for stored in owned),
            "quota_bytes": files.store.owner_quota_bytes,
        }
    )


@api_router.delete("/files/{file_id}", response_model=DeletedFile, responses=raises(NotFound))
async def delete_file(file_id: str, caller: CallerDep, files: FilesDep) -> JSONResponse:
    """Delete one of the caller's files; another's answers 404, as a missing one does."""
    await files.delete(caller.principal, file_id)
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})
