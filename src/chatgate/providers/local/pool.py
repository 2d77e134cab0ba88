"""A pool of llama.cpp model instances: bounded admission, and threads shared fairly among active streams."""

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp

from chatgate.errors import EngineBusy


class ThreadBudget:
    """The machine's compute threads, shared by every engine instance that is generating, in every pool."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._active = 0
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            self._active += 1

    def end(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active(self) -> int:
        return self._active

    def share(self) -> int:
        return max(1, self.total // max(1, self._active))


@dataclass(eq=False)
class Slot:
    """One model instance; it serves one sequence at a time."""

    index: int
    llama: Any  # llama_cpp.Llama (untyped library)
    threads: int
    started: float = field(default=0.0)
    generating: bool = False
    held: bool = False  # acquired by a request, and counted in the thread budget
    worker: threading.Thread | None = None


class EnginePool:
    """Hands out model instances to requests.

    Requests beyond the free instances wait in a queue of at most ``max_queue``; past that,
    ``acquire`` raises EngineBusy at once. The machine's threads are split among the instances
    that are generating (in every pool sharing the budget), re-checked before every token, so a lone stream uses every core and
    several streams share them without oversubscription.
    """

    def __init__(
        self, *, path: Path, context_length: int, instances: int, budget: ThreadBudget, max_queue: int
    ) -> None:
        self.path = path
        self.context_length = context_length
        self.instances = instances
        self.budget = budget
        self.max_queue = max_queue
        self.slots: list[Slot] = []
        self.cancelled = 0
        self._free: list[Slot] = []
        self._waiters: deque[asyncio.Future[Slot]] = deque()
        self._mean_seconds = 5.0

    def load(self) -> None:
        for i in range(self.instances):
            llama = llama_cpp.Llama(
                model_path=str(self.path),
                n_ctx=self.context_length,
                n_threads=self.budget.total,
                n_threads_batch=self.budget.total,
                verbose=False,
            )
            slot = Slot(index=i, llama=llama, threads=self.budget.total)
            self.slots.append(slot)
            self._free.append(slot)

    @property
    def tokenizer(self) -> Any:
        return self.slots[0].llama

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return len(self.slots) - len(self._free)

    async def acquire(self) -> Slot:
        """A free instance now, or after the requests already waiting (first come, first served)."""
        if self._free:
            slot = self._free.pop()
        else:
            if len(self._waiters) >= self.max_queue:
                raise EngineBusy(
                    f"All {self.instances} engine slots are busy and {len(self._waiters)} requests are waiting; "
                    "retry after a moment.",
                    retry_after=max(
                        1, math.ceil(self._mean_seconds * (len(self._waiters) + 1) / self.instances)
                    ),
                )
            waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                slot = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self.release(waiter.result())  # handed over just as the caller gave up: pass it on
                else:
                    self._waiters.remove(waiter)
                raise
        slot.started = time.monotonic()
        slot.held = True
        self.budget.begin()  # counted from now, so a generation starting alone sees it coming
        return slot

    def release(self, slot: Slot) -> None:
        """Return an instance: straight to the longest waiter, if any. Call on the event loop."""
        if slot.held:
            slot.held = False
            self.budget.end()
        elapsed = time.monotonic() - slot.started
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        self._free.append(slot)

    def stats(self) -> dict[str, int]:
        return {
            "instances": self.instances,
            "busy": self.busy,
            "queued": self.queued,
            "cancelled": self.cancelled,
            "generating": self.budget.active,
            "threads_in_use": sum(slot.threads for slot in self.slots if slot.generating),
        }

    def rebalance(self, slot: Slot) -> None:
        """Give this instance its fair share of threads for the number of streams now generating."""
        want = self.budget.share()
        if want != slot.threads:
            llama_cpp.llama_set_n_threads(slot.llama.ctx, want, want)
            slot.threads = want

    def run(self, slot: Slot, work: Callable[[], None]) -> None:
        """Run a generation on a new OS thread of its own.

        Not a long-lived pool: llama.cpp's CPU backend uses OpenMP, and libgomp keeps a team of
        worker threads for every thread that ever started a parallel region. Once several long-lived
        threads have teams, libgomp counts more threads than cores and stops spinning between
        tokens, which costs a lone stream a quarter of its speed (measured: 61 -> 47 tok/s). A
        thread that exits takes its team with it.
        """
        slot.worker = threading.Thread(target=work, name=f"llama-{self.path.stem}-{slot.index}", daemon=True)
        slot.worker.start()

    def close(self) -> None:
        for slot in self.slots:
            if slot.worker is not None:
                slot.worker.join()
            slot.llama.close()
        self.slots.clear()
