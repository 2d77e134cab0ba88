"""Password hashing (argon2id) off the event loop, with a bound on how much of the machine it takes.

argon2 is made to be expensive: each hash or check takes tens of milliseconds of CPU and 64 MiB.
They run on a few threads of their own (argon2 releases the GIL), at most ``workers`` at once,
with at most ``queue`` more waiting; past that a sign-in or sign-up is refused at once with a 503
instead of piling up, so a flood of them leaves the rest of the API its share of the CPU.
"""

import asyncio
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from chatgate.errors import Unavailable

T = TypeVar("T")


class PasswordHashing:
    def __init__(self, *, workers: int, queue: int) -> None:
        self._hasher = PasswordHasher()  # argon2id: memory-hard
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password-hash")
        self._capacity = workers + queue
        self._pending = 0  # running and waiting
        self._lock = threading.Lock()  # the count drops on a worker thread
        self._dummy: str | None = None

    @property
    def pending(self) -> int:
        return self._pending

    async def _run(self, work: Callable[..., T], *args: object) -> T:
        with self._lock:
            if self._pending >= self._capacity:
                raise Unavailable(
                    "The server is busy checking passwords; try again in a moment.",
                    retry_after=1,
                    code="server_busy",
                )
            self._pending += 1
        try:
            future = self._pool.submit(work, *args)
        except BaseException:
            self._done()
            raise
        future.add_done_callback(lambda _: self._done())  # run, failed, or cancelled while waiting
        return await asyncio.wrap_future(future)

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``. With nothing stored (an unknown user, or one
        without a password) a dummy hash is checked instead, so the answer takes as long."""
        against = stored or await self._dummy_hash()
        try:
            matched = await self._run(self._hasher.verify, against, password)
        except (VerificationError, InvalidHashError):
            return False
        return bool(matched) and bool(stored)

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        return self._dummy

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
