"""Uploaded files: images a caller stores to refer to by URL (``image_url`` or ``file_url`` parts)."""

from chatgate.errors import InvalidRequest
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.images.decode import MIME, decode
from chatgate.services.auth import Principal
from chatgate.storage.files import FileStore, StoredFile

IMAGE_TYPES = tuple(MIME.values())  # what files are served as: every image uploaded or drawn is one


class FileService:
    def __init__(self, store: FileStore, *, max_pixels: int, heavy: HeavyWork | None = None) -> None:
        self.store = store
        self._max_pixels = max_pixels
        self._heavy = heavy or HeavyWork(None, slots=1)

    async def upload(self, principal: Principal, data: bytes, filename: str) -> StoredFile:
        """Store an uploaded image as sent, once it is known to decode; anything else is a 400."""
        if not data:
            raise InvalidRequest("The uploaded file is empty.", param="file")
        if len(data) > self.store.max_file_bytes:
            raise InvalidRequest(f"Files are limited to {self.store.max_file_bytes} bytes.", param="file")
        picture = await self._heavy.run(
            decode, data, max_pixels=self._max_pixels, max_side=1_000_000, param="file"
        )
        owner = f"user:{principal.user_id}" if principal.user_id is not None else "master"
        return await self.store.put(
            data, content_type=MIME[picture.format], extension=picture.format, owner=owner
        )
