"""Generated and uploaded files, kept in a directory: ``<id>`` beside ``<id>.json`` holding its metadata.

Ids are unguessable (192 random bits), so a file's URL is its capability. Files expire after the
retention time; each file and the directory as a whole are capped in size. Replicas share files
by pointing ``CHATGATE_FILES_DIR`` at shared storage.
"""

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

_ID = re.compile(r"^file-[A-Za-z0-9_-]{20,64}$")


class FileTooLarge(Exception):
    pass


@dataclass(frozen=True)
class StoredFile:
    id: str
    content_type: str
    bytes: int
    created: int
    filename: str
    owner: str | None = None


class FileStore:
    def __init__(
        self,
        root: Path,
        *,
        public_url: str,
        max_file_bytes: int,
        max_total_bytes: int,
        retention_seconds: int,
    ) -> None:
        self.root = root
        self.url_prefix = public_url.rstrip("/") + "/files/"  # how clients reach a file: prefix + id
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.retention_seconds = retention_seconds

    def url(self, file_id: str) -> str:
        return self.url_prefix + file_id

    def _paths(self, file_id: str) -> tuple[Path, Path] | None:
        if not _ID.match(file_id):
            return None
        return self.root / file_id, self.root / f"{file_id}.json"

    async def put(
        self, data: bytes, *, content_type: str, extension: str, owner: str | None = None
    ) -> StoredFile:
        if len(data) > self.max_file_bytes:
            raise FileTooLarge(f"a file of {len(data)} bytes is over the {self.max_file_bytes}-byte cap")
        file_id = "file-" + secrets.token_urlsafe(24)
        meta = StoredFile(file_id, content_type, len(data), int(time.time()), f"{file_id}.{extension}", owner)
        await anyio.to_thread.run_sync(self._write, meta, data)
        return meta

    def _write(self, meta: StoredFile, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_room(len(data))
        paths = self._paths(meta.id)
        assert paths is not None
        body, sidecar = paths
        partial = body.with_suffix(".part")
        partial.write_bytes(data)
        sidecar.write_text(json.dumps(asdict(meta)))
        os.replace(partial, body)  # the body appears last: a reader never sees half a file

    async def get(self, file_id: str) -> tuple[StoredFile, Path] | None:
        """A live file's metadata and path, or None (unknown, malformed or expired id)."""
        return await anyio.to_thread.run_sync(self._get, file_id)

    def _get(self, file_id: str) -> tuple[StoredFile, Path] | None:
        paths = self._paths(file_id)
        if paths is None:
            return None
        body, sidecar = paths
        try:
            meta = StoredFile(**json.loads(sidecar.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if not body.is_file() or meta.created + self.retention_seconds < time.time():
            return None
        return meta, body

    async def read(self, file_id: str) -> bytes | None:
        found = await self.get(file_id)
        if found is None:
            return None
        return await anyio.Path(found[1]).read_bytes()

    async def sweep(self) -> int:
        """Delete expired files; how many went."""
        return await anyio.to_thread.run_sync(self._sweep)

    def _sweep(self) -> int:
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - self.retention_seconds
        removed = 0
        for sidecar in self.root.glob("file-*.json"):
            try:
                created = json.loads(sidecar.read_text())["created"]
            except (OSError, ValueError, KeyError):
                created = sidecar.stat().st_mtime
            if created < cutoff:
                self._remove(sidecar.name.removesuffix(".json"))
                removed += 1
        return removed

    def _remove(self, file_id: str) -> None:
        paths = self._paths(file_id)
        if paths is not None:
            for path in paths:
                path.unlink(missing_ok=True)

    def _make_room(self, incoming: int) -> None:
        """Drop the oldest files until the new one fits under the directory's cap."""
        bodies = sorted(
            (p for p in self.root.glob("file-*") if not p.name.endswith((".json", ".part"))),
            key=lambda p: p.stat().st_mtime,
        )
        total = sum(p.stat().st_size for p in bodies)
        for body in bodies:
            if total + incoming <= self.max_total_bytes:
                break
            total -= body.stat().st_size
            self._remove(body.name)
