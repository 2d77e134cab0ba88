"""Heavy work (decoding and analysing images, converting a JSON schema to a grammar, reading a PDF)
under one bound for the whole host, shared by every chatgate process that uses the same directory.

The bound is ``slots`` lock files in that directory (``heavy-0.lock`` ...). A job runs on a worker
thread while its process holds one of them with ``flock``; a process that dies lets go of its
locks with it, so a crash never leaks a slot. A job waits for a free slot (polling, so a waiting
request holds no thread) up to ``wait_seconds``, then is refused as busy. Without a directory
the bound holds within the process only.
"""

import asyncio
import contextlib
import fcntl
import functools
import os
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from chatgate.aio import to_the_end
from chatgate.errors import EngineBusy

P = ParamSpec("P")
T = TypeVar("T")
POLL_SECONDS = 0.02


class HeavyWork:
    def __init__(self, directory: Path | None, *, slots: int, wait_seconds: float = 30.0) -> None:
        self.slots = slots
        self._wait = wait_seconds
        self._files: list[int | None] = [None] * slots
        self._directory = directory
        self._held: set[int] = set()  # slots this process holds (flock does not exclude its own fds)
        self.running = 0  # jobs of this process running now (for health checks and tests)

    def _fd(self, slot: int) -> int:
        fd = self._files[slot]
        if fd is None:
            assert self._directory is not None
            self._directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._directory / f"heavy-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            self._files[slot] = fd
        return fd

    def _try(self) -> int | None:
        start = random.randrange(self.slots)
        for step in range(self.slots):
            slot = (start + step) % self.slots
            if slot in self._held:
                continue
            if self._directory is not None:
                try:
                    fcntl.flock(self._fd(slot), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
            self._held.add(slot)
            return slot
        return None

    def _release(self, slot: int) -> None:
        if self._directory is not None:
            fcntl.flock(self._fd(slot), fcntl.LOCK_UN)
        self._held.discard(slot)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the host's slots for the duration of the block."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while (slot := self._try()) is None:
            if loop.time() > deadline:
                raise EngineBusy(
                    "The server is busy with other images and documents; try again.", retry_after=1
                )
            await asyncio.sleep(POLL_SECONDS * (0.5 + random.random()))
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._release(slot)

    async def run(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(*args, **kwargs)`` on a worker thread while holding a slot. If the request is
        cancelled meanwhile, the slot is still held until the thread is done with it."""
        async with self.slot():
            loop = asyncio.get_running_loop()
            return await to_the_end(loop.run_in_executor(None, functools.partial(work, *args, **kwargs)))

    def close(self) -> None:
        for slot, fd in enumerate(self._files):
            if fd is not None:
                os.close(fd)
                self._files[slot] = None
