"""Generated and uploaded files, kept in a directory: ``<id>`` beside ``<id>.json`` holding its metadata.

Ids are unguessable (192 random bits), so a file's URL is its capability. Files expire after the
retention time; each file is capped in size. Each owner (the uploads of one user) holds at most
``owner_quota_bytes``: a new upload makes room by removing that owner's own oldest files, never
anyone else's. Generated images have no owner: a new one makes room under the directory's cap by
removing the oldest generated images only. When the directory as a whole has no room left that
way, a new file is refused (``StorageFull``). Replicas share files by pointing ``CHATGATE_FILES_DIR`` at
shared storage (their checks of the caps can then overlap by a file or so).
"""

import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

from chatgate.errors import StorageFull

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
        owner_quota_bytes: int | None = None,
    ) -> None:
        self.root = root
        self.url_prefix = public_url.rstrip("/") + "/files/"  # how clients reach a file: prefix + id
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.owner_quota_bytes = owner_quota_bytes if owner_quota_bytes is not None else max_total_bytes
        self.retention_seconds = retention_seconds
        self._room = threading.Lock()  # one file at a time makes room and is written, in this process

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
        with self._room:
            self._make_room(meta.owner, len(data))
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

    def _inventory(self) -> list[StoredFile]:
        """Every whole file in the directory, oldest first."""
        found: list[tuple[int, int, StoredFile]] = []
        for sidecar in self.root.glob("file-*.json"):
            try:
                meta = StoredFile(**json.loads(sidecar.read_text()))
                written = (self.root / meta.id).stat().st_mtime_ns
            except (OSError, ValueError, TypeError):
                continue  # half written, or just removed
            found.append((meta.created, written, meta))
        return [meta for *_, meta in sorted(found, key=lambda f: f[:2])]

    def _make_room(self, owner: str | None, incoming: int) -> None:
        """Drop the owner's own oldest files (the oldest generated images, for one) until the new
        one fits; StorageFull if the directory as a whole still has no room for it."""
        files = self._inventory()
        owned = [m for m in files if m.owner == owner]
        held = sum(m.bytes for m in owned)
        total = sum(m.bytes for m in files)
        quota = self.owner_quota_bytes if owner is not None else self.max_total_bytes
        for meta in owned:
            if held + incoming <= quota and total + incoming <= self.max_total_bytes:
                break
            self._remove(meta.id)
            held -= meta.bytes
            total -= meta.bytes
        if total + incoming > self.max_total_bytes:
            raise StorageFull("The file store is full; try again later or delete files you no longer need.")

    async def delete(self, file_id: str, *, owner: str | None) -> bool:
        """Remove a file of ``owner``'s (None: anyone's); False if there is no such live file."""
        found = await self.get(file_id)
        if found is None or (owner is not None and found[0].owner != owner):
            return False
        await anyio.to_thread.run_sync(self._remove, file_id)
        return True

    async def owned(self, owner: str) -> list[StoredFile]:
        """An owner's live files, oldest first."""
        cutoff = time.time() - self.retention_seconds
        files = await anyio.to_thread.run_sync(self._inventory)
        return [m for m in files if m.owner == owner and m.created >= cutoff]
