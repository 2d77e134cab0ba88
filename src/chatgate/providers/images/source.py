"""Where an image part's bytes come from: a data URL, chatgate's own file store, or the web (guarded)."""

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Protocol

from chatgate.errors import InvalidImage
from chatgate.providers.web.fetch import FetchError, FetchRefused, FetchTooLarge, GuardedFetcher

_DATA_URL = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*?(;base64)?,", re.IGNORECASE)
FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{20,64}$")


class FileReader(Protocol):
    """Reads a stored file by id: its bytes, or None if there is no such file (or it expired)."""

    url_prefix: str  # the files' public URLs are this prefix and the id

    async def read(self, file_id: str) -> bytes | None: ...


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20_000_000  # one image
    max_pixels: int = 40_000_000  # one image, as its header declares it
    request_bytes: int = 20_000_000  # every image of a request together
    request_pixels: int = 50_000_000
    fetch_timeout: float = 10.0


class ImageSource:
    def __init__(self, fetcher: GuardedFetcher, files: FileReader, *, limits: ImageLimits) -> None:
        self._fetcher = fetcher
        self._files = files
        self.limits = limits

    def own_file_id(self, url: str) -> str | None:
        """The id of one of chatgate's own files that ``url`` names, if it does."""
        for prefix in (self._files.url_prefix, "/files/"):
            if url.startswith(prefix):
                file_id = url[len(prefix) :].split("?", 1)[0]
                if FILE_ID.match(file_id):
                    return file_id
        return None

    async def read(self, url: str, *, param: str, max_bytes: int | None = None) -> bytes:
        """The bytes behind an image URL, within the size cap (``max_bytes``, or the limits' for one
        image); InvalidImage if they can't be had."""
        url = url.strip()
        limit = self.limits.max_bytes if max_bytes is None else min(max_bytes, self.limits.max_bytes)
        if url[:5].lower() == "data:":
            return self._data_url(url, param, limit)
        file_id = self.own_file_id(url)
        if file_id is not None:
            data = await self._files.read(file_id)
            if data is None:
                raise InvalidImage(f"The file {file_id} does not exist or has expired.", param=param)
            if len(data) > limit:
                raise InvalidImage(f"The image is larger than {limit} bytes.", param=param)
            return data
        if not re.match(r"^https?://", url, re.IGNORECASE):
            raise InvalidImage("Image URLs must be http(s) URLs or base64 data URLs.", param=param)
        try:
            fetched = await self._fetcher.fetch(url, max_bytes=limit, timeout=self.limits.fetch_timeout)
        except FetchRefused as exc:
            raise InvalidImage(f"The image URL is not allowed: {exc}", param=param) from exc
        except FetchTooLarge as exc:
            raise InvalidImage(f"The image at that URL is larger than {limit} bytes.", param=param) from exc
        except FetchError as exc:
            raise InvalidImage(f"The image could not be downloaded: {exc}", param=param) from exc
        return fetched.body

    def _data_url(self, url: str, param: str, limit: int) -> bytes:
        match = _DATA_URL.match(url)
        if match is None or match.group(3) is None:
            raise InvalidImage("Image data URLs must be base64: data:image/png;base64,...", param=param)
        payload = url[match.end() :]
        if len(payload) > limit * 4 // 3 + 4:
            raise InvalidImage(f"The image is larger than {limit} bytes.", param=param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImage("The image data URL is not valid base64.", param=param) from exc
