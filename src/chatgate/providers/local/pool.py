"""A model's sequences: one set of weights, one llama.cpp context with a KV cache stream per sequence, and bounded admission to them."""

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp

from chatgate.errors import EngineBusy
from chatgate.providers.local.batching import Batcher
from chatgate.providers.local.generation import Generation
from chatgate.providers.local.scheduler import Outcome, ThreadBudget
from chatgate.providers.local.sequence import CHUNK, Sequence, SharedContext

__all__ = ["EnginePool", "Slot", "ThreadBudget"]


@dataclass(eq=False)
class Slot:
    """One sequence of the model: a KV cache stream of its own in the model's context; it serves one request at a time."""

    index: int
    sequence: Any  # Sequence; None in tests of admission alone
    started: float = field(default=0.0)
    generating: bool = False
    held: bool = False  # acquired by a request, and counted in the thread budget


class EnginePool:
    """Hands out a model's sequences to requests.

    The weights are loaded once, with one llama.cpp context for the model, in which each of the
    ``instances`` sequences has a KV cache stream of its own (about 50 MB at 4,096 tokens for a
    0.5B model), so that many requests generate at once, stepped by the model's batcher on the
    budget's lanes. Requests beyond them wait in a queue of at most ``max_queue``; past that,
    ``acquire`` raises EngineBusy at once.
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
        # llama_cpp.Llama, once loaded: the weights and the tokenizer (its own context is a small unused one).
        self.llama: Any = None
        self.shared: SharedContext | None = None
        self.batcher: Batcher | None = None
        self._held = 0  # sequences taken by requests: the model counts in the thread budget while any is
        self._free: list[Slot] = []
        self._waiters: deque[asyncio.Future[Slot]] = deque()
        self._mean_seconds = 5.0

    def load_vocabulary(self) -> None:
        """Only the model's vocabulary (no weights, no instance): enough to tokenize and plan requests
        that an engine elsewhere runs (a worker of ``chatgate serve --workers N``)."""
        self.llama = llama_cpp.Llama(
            model_path=str(self.path), vocab_only=True, n_ctx=8, n_threads=1, verbose=False
        )

    def load(self) -> None:
        self.llama = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=CHUNK,
            n_batch=CHUNK,
            n_threads=self.budget.total,
            n_threads_batch=self.budget.total,
            verbose=False,
        )
        params = type(self.llama.context_params).from_buffer_copy(self.llama.context_params)
        params.n_seq_max = self.instances
        params.n_ctx = self.context_length * self.instances  # each stream gets n_ctx / n_seq_max
        params.kv_unified = False  # a stream per sequence: no sequence changes another's attention
        params.n_batch = params.n_ubatch = 512
        self.shared = SharedContext(self.llama._model, params, self.instances)
        self.batcher = Batcher(self.shared, self.budget)
        for index in range(self.instances):
            slot = Slot(index=index, sequence=Sequence(self.llama._model, self.shared, index))
            self.slots.append(slot)
            self._free.append(slot)

    @property
    def tokenizer(self) -> Any:
        return self.llama

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def busy(self) -> int:
        return len(self.slots) - len(self._free)

    async def acquire(self, prompt: list[int] | None = None, *, exact: bool = False) -> Slot:
        """A free sequence now (the one whose cache holds most of ``prompt``), or after the requests
        already waiting (first come, first served). An ``exact`` (seeded) request's tokens go in calls
        of their own, so it takes the highest free sequence, out of the way of the others' run."""
        if self._free:
            slot = self._closest(prompt, exact)
            self._free.remove(slot)
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
        if not slot.held:  # (a slot handed straight from one request to the next stays held)
            slot.held = True
            self._held += 1
            if self._held == 1:
                self.budget.begin()  # the model's steps share the threads with other models' from now
        return slot

    def _closest(self, prompt: list[int] | None, exact: bool) -> Slot:
        """The free slot whose cache can give most of ``prompt``; among equals the lowest-numbered
        (the highest for ``exact``), so the sequences whose tokens share calls keep consecutive ids
        (``sequence.decode_together``)."""
        sign = 1 if exact else -1
        if prompt is None or self._free[0].sequence is None:
            return max(self._free, key=lambda slot: sign * slot.index)
        return max(self._free, key=lambda slot: (slot.sequence.reusable(prompt), sign * slot.index))

    def release(self, slot: Slot) -> None:
        """Return a sequence: straight to the longest waiter, if any (still held, so the model stays
        counted in the thread budget). Call on the event loop."""
        elapsed = time.monotonic() - slot.started
        self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * elapsed
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(slot)
                return
        if slot.held:
            slot.held = False
            self._held -= 1
            if self._held == 0:
                self.budget.end()
        self._free.append(slot)

    def stats(self) -> dict[str, int]:
        return {
            "instances": self.instances,
            "busy": self.busy,
            "queued": self.queued,
            "cancelled": self.cancelled,
            "generating": sum(slot.generating for slot in self.slots),
            "cached_prompt_tokens": sum(slot.sequence.cached for slot in self.slots if slot.sequence),
            "lanes": self.budget.lanes,  # compute threads stepping generations now, for every local model
            "threads_per_step": self.budget.share(),
            "decode_calls": self.batcher.calls if self.batcher else 0,  # calls for generated tokens...
            "decoded_tokens": self.batcher.decoded if self.batcher else 0,  # ...and the tokens they evaluated
        }

    def run(self, slot: Slot, generation: Generation, done: Callable[[Outcome], None]) -> None:
        """Hand a generation to the model's batcher; ``done`` is called on a lane with how it ended."""
        assert self.batcher is not None, "the model is not loaded"
        slot.generating = True

        def finished(outcome: Outcome) -> None:
            slot.generating = False
            self.cancelled += outcome is False
            done(outcome)

        self.batcher.add(generation, finished)

    def close(self) -> None:
        """Free the contexts and the weights; every generation has ended (they end when their requests do)."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            any(slot.generating for slot in self.slots)
            or (self.batcher is not None and not self.batcher.idle)
        ):
            time.sleep(0.01)
        if self.shared is not None:
            self.shared.close()  # the context before the weights it uses
            self.shared = None
        self.slots.clear()
        if self.llama is not None:
            self.llama.close()
