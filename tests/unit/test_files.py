"""The file store: unguessable ids, expiry, a cap on each file, each owner and the whole directory."""

import os
import time
from pathlib import Path

import pytest

from chatgate.errors import StorageFull
from chatgate.storage.files import FileStore, FileTooLarge


def store(root: Path, **overrides: int) -> FileStore:
    limits = {"max_file_bytes": 1000, "max_total_bytes": 2500, "retention_seconds": 3600, **overrides}
    return FileStore(root, public_url="http://gate.example", **limits)


async def test_a_stored_file_comes_back_with_its_type(tmp_path: Path) -> None:
    files = store(tmp_path)
    meta = await files.put(b"\x89PNG...", content_type="image/png", extension="png")
    assert meta.id.startswith("file-") and len(meta.id) >= 37
    found = await files.get(meta.id)
    assert (
        found is not None and found[0].content_type == "image/png" and found[0].filename == f"{meta.id}.png"
    )
    assert await files.read(meta.id) == b"\x89PNG..."
    assert await files.get("file-../../etc/passwd") is None
    assert await files.get("../" + meta.id) is None


async def test_files_over_the_cap_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileTooLarge):
        await store(tmp_path).put(b"x" * 1001, content_type="image/png", extension="png")


async def test_the_oldest_files_make_room(tmp_path: Path) -> None:
    files = store(tmp_path)
    first = await files.put(b"1" * 1000, content_type="image/png", extension="png")
    os.utime(tmp_path / first.id, (time.time() - 10, time.time() - 10))
    second = await files.put(b"2" * 1000, content_type="image/png", extension="png")
    third = await files.put(b"3" * 1000, content_type="image/png", extension="png")
    assert await files.get(first.id) is None
    assert await files.read(second.id) == b"2" * 1000 and await files.read(third.id) == b"3" * 1000


async def test_expired_files_are_gone_and_swept(tmp_path: Path) -> None:
    files = store(tmp_path, retention_seconds=1)
    meta = await files.put(b"x", content_type="image/png", extension="png")
    files.retention_seconds = -1
    assert await files.get(meta.id) is None
    assert await files.sweep() == 1
    assert list(tmp_path.iterdir()) == []


async def test_an_owners_uploads_make_room_only_among_its_own(tmp_path: Path) -> None:
    files = store(tmp_path, max_total_bytes=10_000, owner_quota_bytes=2000)
    alice = [
        await files.put(b"a" * 1000, content_type="image/png", extension="png", owner="user:1")
        for _ in range(2)
    ]
    bob = await files.put(b"b" * 1000, content_type="image/png", extension="png", owner="user:2")
    generated = await files.put(b"g" * 1000, content_type="image/png", extension="png")
    third = await files.put(b"a" * 1000, content_type="image/png", extension="png", owner="user:1")
    assert await files.get(alice[0].id) is None  # alice's oldest made room for her third
    for kept in (alice[1], third, bob, generated):
        assert await files.get(kept.id) is not None
    assert [m.id for m in await files.owned("user:1")] == [alice[1].id, third.id]
    assert [m.id for m in await files.owned("user:2")] == [bob.id]


async def test_a_full_directory_refuses_rather_than_evict_another_owners_files(tmp_path: Path) -> None:
    files = store(tmp_path, max_total_bytes=2000, owner_quota_bytes=2000)
    bob = [
        await files.put(b"b" * 1000, content_type="image/png", extension="png", owner="user:2")
        for _ in range(2)
    ]
    with pytest.raises(StorageFull):
        await files.put(b"a" * 1000, content_type="image/png", extension="png", owner="user:1")
    with pytest.raises(StorageFull):
        await files.put(b"g" * 1000, content_type="image/png", extension="png")  # generated images too
    assert all([await files.get(meta.id) is not None for meta in bob])


async def test_an_owner_deletes_its_own_files_only(tmp_path: Path) -> None:
    files = store(tmp_path)
    meta = await files.put(b"x", content_type="image/png", extension="png", owner="user:1")
    assert not await files.delete(meta.id, owner="user:2")
    assert await files.get(meta.id) is not None
    assert await files.delete(meta.id, owner="user:1")
    assert await files.get(meta.id) is None
    assert not await files.delete(meta.id, owner="user:1")
    assert list(tmp_path.iterdir()) == []
