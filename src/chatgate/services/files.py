"""Uploaded files: images a caller stores to refer to by URL (``image_url`` or ``file_url`` parts),
held within the caller's storage quota, listed and deleted by their owner."""

from chatgate.errors import InvalidRequest, NotFound
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.images.decode import MIME, decode
from chatgate.services.auth import Principal
from chatgate.storage.files import FileStore, StoredFile

IMAGE_TYPES = tuple(MIME.values())  # what files are served as: every image uploaded or drawn is one


def owner_of(principal: Principal) -> str:
    return f"user:{principal.user_id}" if principal.user_id is not None else "master"


class FileService:
    def __init__(self, store: FileStore, *, max_pixels: int, heavy: HeavyWork | None = None) -> None:
        self.store = store
        self._max_pixels = max_pixels
        self._heavy = heavy or HeavyWork(None, slots=1)

    @property
    def max_upload_bytes(self) -> int:
        return min(self.store.max_file_bytes, self.store.owner_quota_bytes)

    async def upload(self, principal: Principal, data: bytes, filename: str) -> StoredFile:
        """Store an uploaded image as sent, once it is known to decode; anything else is a 400.

        It counts against the caller's storage quota: the caller's own oldest uploads make room.
        """
        if not data:
            raise InvalidRequest("The uploaded file is empty.", param="file")
        if len(data) > self.max_upload_bytes:
            raise InvalidRequest(f"Files are limited to {self.max_upload_bytes} bytes.", param="file")
        picture = await self._heavy.run(
            decode, data, max_pixels=self._max_pixels, max_side=1_000_000, param="file"
        )
        return await self.store.put(
            data, content_type=MIME[picture.format], extension=picture.format, owner=owner_of(principal)
        )

    async def delete(self, principal: Principal, file_id: str) -> None:
        """Delete one of the caller's files (the master key: anyone's); another's is as good as missing."""
        owner = None if principal.user_id is None else owner_of(principal)
        if not await self.store.delete(file_id, owner=owner):
            raise NotFound("No such file.", param="file_id")

    async def owned(self, principal: Principal) -> list[StoredFile]:
        return await self.store.owned(owner_of(principal))
