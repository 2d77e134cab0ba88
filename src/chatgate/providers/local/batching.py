"""One model's running generations, stepped one llama.cpp call at a time on the context they share.

A step is one call, chosen in this order:

1. the prompt of a generation that has not started: its first chunk goes in at once, alone, so a
   new request's first token never waits for the others' answers;
2. the next chunk of a long prompt, every other step while other sequences decode, so it slows
   them by a chunk at a time and never stops them;
3. otherwise the tokens the decoding generations staged. Those of requests without a seed go in
   one call together (llama.cpp makes it one pass where their sequences' ids are consecutive, which
   the pool keeps them as far as it can): on these 2 cores, 4 tokens in one call on both threads cost about 2.5 times
   one token, where two one-thread calls side by side cost twice one (``bench/ceiling.py``). A
   seeded request's token goes in a call of its own, so its numbers never depend on what runs
   beside it (``sequence.py``); it takes its turn among the calls.

Every generation in a call is resumed right after it, before the next call, so each samples from
its own row of that call's logits. A generation whose client left is resumed without a call and
ends itself. The batcher is a ``scheduler.Task`` on the thread budget's lanes while it has
generations, and ends in the step that ends the last one (a new one submits it again).
"""

import logging
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass

from chatgate.providers.local.generation import Generation
from chatgate.providers.local.scheduler import Outcome, Task, ThreadBudget
from chatgate.providers.local.sequence import SharedContext, decode_together

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Running:
    generation: Generation
    steps: Generator[None, None, bool]
    done: Callable[[Outcome], None]  # called once, on the lane, with how it ended


class Batcher:
    """Steps a model's generations on its shared context (see the module's docstring)."""

    def __init__(self, shared: SharedContext, budget: ThreadBudget) -> None:
        self.shared = shared
        self.budget = budget
        self.calls = 0  # llama.cpp calls for generated tokens, and the tokens they evaluated
        self.decoded = 0
        self._lock = threading.Lock()
        self._new: deque[Running] = deque()  # added on the event loop, taken on a lane
        self._prompting: deque[Running] = deque()  # mid-prompt: the next resume makes the next chunk's call
        self._decoding: deque[Running] = deque()  # a token staged, waiting for a call
        self._submitted = False
        self._chunk_last = False

    def add(self, generation: Generation, done: Callable[[Outcome], None]) -> None:
        with self._lock:
            self._new.append(Running(generation, generation.steps(), done))
            if self._submitted:
                return
            self._submitted = True
        self.budget.submit(Task(self._steps(), self.shared, self._ended))

    def _ended(self, outcome: Outcome) -> None:
        if isinstance(outcome, BaseException):  # a fault of the batcher itself: nothing may hang on it
            log.error("the engine's batcher failed", exc_info=outcome)
            with self._lock:
                stranded = [*self._new, *self._prompting, *self._decoding]
                self._new.clear()
                self._prompting.clear()
                self._decoding.clear()
                self._submitted = False
            for running in stranded:
                running.steps.close()
                self._finish(running, outcome)

    def _steps(self) -> Generator[None, None, bool]:
        """One call a step; it ends in the step whose call finished the last generation, so no step
        (nor the thread count set before it) comes after the last generation's end."""
        while True:
            self._step()
            with self._lock:
                if not (self._new or self._prompting or self._decoding):
                    self._submitted = False
                    return True
            yield

    @property
    def idle(self) -> bool:
        """No generation, and no step on a lane or queued for one."""
        with self._lock:
            return not self._submitted

    def _step(self) -> None:
        with self._lock:
            new = self._new.popleft() if self._new else None
        if new is not None:
            self._advance(new)  # its first step: the prompt's first chunk, or its end if cancelled
            self._chunk_last = True
        elif self._prompting and (not self._chunk_last or not self._decoding):
            self._advance(self._prompting.popleft())
            self._chunk_last = True
        else:
            self._decode()
            self._chunk_last = False

    def _decode(self) -> None:
        """One call for staged tokens: every unseeded one together, or the seeded one whose turn it is."""
        gone = [running for running in self._decoding if running.generation.cancel.is_set()]
        live = [running for running in self._decoding if running not in gone]
        if live and live[0].generation.exact:
            group = live[:1]
        else:
            group = [running for running in live if not running.generation.exact]
        self._decoding = deque(running for running in live if running not in group)
        for running in gone:
            self._advance(running)  # no call: it sees its cancel and ends
        if not group:
            return
        try:
            decode_together([running.generation.sequence for running in group])  # a seeded one: a row alone
        except Exception as exc:
            for running in group:
                running.steps.close()
                self._finish(running, exc)
            return
        self.calls += 1
        self.decoded += len(group)
        for running in group:
            self._advance(running)

    def _advance(self, running: Running) -> None:
        """Resume a generation once, and file it by what it needs next."""
        try:
            next(running.steps)
        except StopIteration as stop:
            self._finish(running, bool(stop.value))
        except Exception as exc:
            self._finish(running, exc)
        else:
            queue = self._decoding if running.generation.sequence.staged is not None else self._prompting
            queue.append(running)

    def _finish(self, running: Running, outcome: Outcome) -> None:
        try:
            running.done(outcome)
        except Exception:  # the batcher must go on serving the others
            log.exception("a generation's completion callback failed")
