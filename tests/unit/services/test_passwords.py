"""Password hashing: off the event loop, a bounded number at once, a bounded queue, then refusals."""

import asyncio
import threading
import time

import pytest

from chatgate.errors import Unavailable
from chatgate.services.passwords import PasswordHashing


class SlowHasher:
    """Stands in for argon2 to count how many hashes run at once (each takes a little while, or,
    given a ``gate``, until it opens)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()
        self._gate = gate

    def hash(self, password: str) -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        if self._gate is not None:
            self._gate.wait(30)
        else:
            time.sleep(0.05)
        with self._lock:
            self.running -= 1
        return "hashed:" + password

    def verify(self, stored: str, password: str) -> bool:
        return stored == self.hash(password)


async def test_at_most_the_workers_hash_at_once_and_the_queue_past_them_is_refused() -> None:
    hashing = PasswordHashing(workers=2, queue=3)
    gate = threading.Event()  # no hash ends before all eight have asked (however loaded the machine)
    fake = SlowHasher(gate)
    hashing._hasher = fake  # type: ignore[assignment]
    try:
        asked = [asyncio.ensure_future(hashing.hash(f"pw{i}")) for i in range(8)]
        await asyncio.sleep(0)  # each has been admitted or refused
        assert hashing.pending == 5
        gate.set()
        results = await asyncio.gather(*asked, return_exceptions=True)
        refused = [r for r in results if isinstance(r, Unavailable)]
        assert len(refused) == 3 and all(r.code == "server_busy" and r.retry_after == 1 for r in refused)
        assert [r for r in results if isinstance(r, str)] == [f"hashed:pw{i}" for i in range(5)]
        assert fake.most == 2
        assert hashing.pending == 0  # every slot given back
        assert await hashing.hash("again") == "hashed:again"
    finally:
        hashing.close()


async def test_a_waiter_that_is_cancelled_gives_its_place_back() -> None:
    hashing = PasswordHashing(workers=1, queue=1)
    hashing._hasher = SlowHasher()  # type: ignore[assignment]
    try:
        running = asyncio.create_task(hashing.hash("first"))
        waiting = asyncio.create_task(hashing.hash("second"))
        await asyncio.sleep(0)
        with pytest.raises(Unavailable):
            await hashing.hash("third")
        waiting.cancel()
        await running
        await asyncio.sleep(0.01)
        assert hashing.pending == 0
    finally:
        hashing.close()


async def test_real_argon2_verifies_and_unknown_users_cost_a_check_too() -> None:
    hashing = PasswordHashing(workers=1, queue=4)
    try:
        stored = await hashing.hash("correct horse")
        assert await hashing.verify(stored, "correct horse")
        assert not await hashing.verify(stored, "wrong horse")
        assert not await hashing.verify(None, "anything")  # checked against a dummy hash: as slow
    finally:
        hashing.close()
