"""The machine's compute threads: lanes that step every busy local model in turn, one llama.cpp call at a time.

Each local model with running generations is one task here: its batcher (``batching.Batcher``),
a generator of steps that each make one llama.cpp call on the model's context (a prompt chunk, or
the tokens its generations staged) and resume the generations in it. At most ``total`` lanes (OS
threads) run steps. Each lane takes the task at the head of one shared queue, steps it once and
puts it at the back. A step runs on ``share()`` threads: all of them for one busy model (as many as
other work leaves cores idle for), split when several compete. A model's steps never run two at
once: its context takes one call at a time.

The threads of the steps running at once never add up to more than ``total``: a lane that starts
while another lane's step runs on every thread waits for that step to end before it steps on what
is left. Two steps on three threads on two cores had one of the first step's threads parked by the
kernel at every layer's barrier.

A new task's first step comes before the others' next ones. A lane that finds the queue empty
exits: llama.cpp's OpenMP runtime keeps a team of worker threads for every thread that ever ran a
parallel region, and once more such threads exist than cores it stops spinning between tokens,
which costs a lone stream a quarter of its speed (measured: 61 -> 47 tok/s). A lane that exits
takes its team with it.
"""

import logging
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

# What a generation's steps end with: True when it finished, False when it was cancelled part-way.
Outcome = bool | BaseException


class Threaded(Protocol):
    def set_threads(self, threads: int) -> None: ...


@dataclass(eq=False)
class Task:
    steps: Generator[None, None, bool]
    context: Threaded  # what the steps call: set to the step's thread share before each step
    done: Callable[[Outcome], None]  # called once, on the lane, with how it ended


class ThreadBudget:
    """The machine's compute threads, shared by every local model with requests.

    ``free`` says how many cores other work leaves idle (cores.FreeCores); without it, the
    ``total`` threads are taken to be the engine's own.
    """

    def __init__(self, total: int, *, free: Callable[[], int] | None = None) -> None:
        self.total = total
        self._free = free
        self._active = 0
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a step ended: its threads are free again
        self._in_use = 0  # threads of the steps running now
        self._new: deque[Task] = deque()  # not stepped yet: first come, first stepped, before the others
        self._ready: deque[Task] = deque()
        self._tasks = 0  # submitted and not yet done, queued or on a lane
        self._lanes = 0

    def begin(self) -> None:
        """A model takes its first request: count it in the share from now on (until ``end``)."""
        with self._lock:
            self._active += 1

    def end(self) -> None:
        with self._lock:
            self._active -= 1

    @property
    def active(self) -> int:
        return self._active

    @property
    def lanes(self) -> int:
        return self._lanes

    def share(self) -> int:
        """Threads for one step: the total split among the models with requests (counted from when a
        request takes a sequence, so a model starting alone sees the others coming), and no more than the cores
        other work leaves idle: a step's threads wait for each other at every layer, so one whose
        core is taken stalls them all (cores.py)."""
        threads = max(1, self.total // max(1, self._active))
        if self._free is not None and threads > 1:
            threads = max(1, min(threads, self._free()))
        return threads

    def submit(self, task: Task) -> None:
        """Queue a generation's steps; a new lane starts while there are fewer lanes than work and threads."""
        with self._lock:
            self._new.append(task)
            self._tasks += 1
            if self._lanes >= min(self.total, self._tasks):
                return
            self._lanes += 1
        threading.Thread(target=self._lane, name="llama-lane", daemon=True).start()

    def _lane(self) -> None:
        while True:
            with self._lock:
                if not (self._new or self._ready):
                    self._lanes -= 1
                    return
                task = (self._new or self._ready).popleft()
                while self._in_use >= self.total:  # another lane's step holds every thread
                    self._freed.wait()
                threads = min(self.share(), self.total - self._in_use)
                self._in_use += threads
            try:
                self._step(task, threads)
            finally:
                with self._lock:
                    self._in_use -= threads
                    self._freed.notify_all()

    def _step(self, task: Task, threads: int) -> None:
        task.context.set_threads(threads)
        outcome: Outcome | None = None
        try:
            next(task.steps)
        except StopIteration as stop:
            outcome = bool(stop.value)
        except Exception as exc:
            outcome = exc
        with self._lock:
            if outcome is None:
                self._ready.append(task)
            else:
                self._tasks -= 1
        if outcome is not None:
            try:
                task.done(outcome)
            except Exception:  # the lane must go on serving the others
                log.exception("a generation's completion callback failed")
