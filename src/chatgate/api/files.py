"""``GET /files/{id}``: generated images. The unguessable id is the capability; no token is needed."""

from fastapi import APIRouter
from fastapi.responses import FileResponse

from chatgate.api.deps import FilesDep
from chatgate.errors import NotFound

router = APIRouter()


@router.get("/files/{file_id}")
async def get_file(file_id: str, files: FilesDep, download: bool = False) -> FileResponse:
    found = await files.get(file_id)
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
