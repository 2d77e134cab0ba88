"""The engine's lanes: every generation stepped in turn, at most one lane per thread, new prompts first."""

import threading
from collections.abc import Generator

from chatgate.providers.local.scheduler import Outcome, Task, ThreadBudget

WAIT = 30  # seconds: only a bound on a hang, never a measurement


class Recorder:
    """Fake generations that log each step; a gate holds the first step until every task is queued."""

    def __init__(self, budget: ThreadBudget) -> None:
        self.budget = budget
        self.log: list[str] = []
        self.threads: list[int] = []
        self.outcomes: dict[str, Outcome] = {}
        self.finished = threading.Semaphore(0)
        self.entered = threading.Semaphore(0)  # a step has begun
        self.gate = threading.Event()
        self._lock = threading.Lock()
        self._stepping = 0
        self.most_at_once = 0
        self._granted = threading.local()  # the share the lane set before this thread's step
        self._threads_in_use = 0
        self.most_threads_at_once = 0

    def set_threads(self, threads: int) -> None:
        self.threads.append(threads)
        self._granted.threads = threads

    def steps(self, name: str, count: int, fail_at: int | None = None) -> Generator[None, None, bool]:
        for step in range(count):
            threads = self._granted.threads
            with self._lock:
                self._stepping += 1
                self.most_at_once = max(self.most_at_once, self._stepping)
                self._threads_in_use += threads
                self.most_threads_at_once = max(self.most_threads_at_once, self._threads_in_use)
            self.entered.release()
            assert self.gate.wait(WAIT)
            with self._lock:
                self.log.append(f"{name}{step}")
                self._stepping -= 1
                self._threads_in_use -= threads
            if step == fail_at:
                raise RuntimeError(f"{name} failed")
            if step < count - 1:
                yield
        return True

    def submit(self, name: str, count: int, fail_at: int | None = None) -> None:
        def done(outcome: Outcome) -> None:
            self.outcomes[name] = outcome
            self.finished.release()

        self.budget.submit(Task(self.steps(name, count, fail_at), self, done))

    def wait(self, tasks: int) -> None:
        for _ in range(tasks):
            assert self.finished.acquire(timeout=WAIT)

    def stepping(self, steps: int) -> None:
        """Wait until ``steps`` steps have begun (and are held at the gate, if it is shut)."""
        for _ in range(steps):
            assert self.entered.acquire(timeout=WAIT)


def test_a_lone_generation_runs_to_its_end_on_every_thread() -> None:
    budget = ThreadBudget(2)
    run = Recorder(budget)
    run.gate.set()
    budget.begin()
    run.submit("a", 5)
    run.wait(1)
    budget.end()
    assert run.log == ["a0", "a1", "a2", "a3", "a4"]
    assert run.outcomes == {"a": True}
    assert set(run.threads) == {2}


def test_generations_take_turns_and_none_waits_for_another_to_finish() -> None:
    budget = ThreadBudget(1)  # one lane: the order is exact
    run = Recorder(budget)
    for _ in range(3):
        budget.begin()
    run.submit("a", 3)
    run.stepping(1)  # a is on the lane
    run.submit("b", 3)
    run.submit("c", 3)
    run.gate.set()
    run.wait(3)
    # b and c came while a stepped: their first steps before a's next, then each in turn.
    assert run.log == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"]
    assert set(run.outcomes.values()) == {True}


def test_no_more_lanes_than_threads_and_each_step_gets_its_share() -> None:
    budget = ThreadBudget(2)
    run = Recorder(budget)
    for _ in range(4):
        budget.begin()
    for name in "abcd":
        run.submit(name, 4)
    run.stepping(2)  # two lanes, each held in a step
    run.gate.set()
    run.wait(4)
    assert run.most_at_once == 2
    assert sorted(run.log) == sorted(f"{name}{step}" for name in "abcd" for step in range(4))
    assert set(run.threads) == {1}  # four sequences taken on two threads: one thread a step


def test_a_second_stream_waits_for_a_step_on_every_thread_to_end_before_stepping_beside_it() -> None:
    """A lone stream's step holds both threads; a request that comes meanwhile gets a lane, which
    steps only once that step is over, and then on one thread of two, as the first does."""
    budget = ThreadBudget(2)
    run = Recorder(budget)
    budget.begin()
    run.submit("a", 3)
    run.stepping(1)  # a's first step, on both threads, held at the gate
    budget.begin()
    run.submit("b", 3)  # a second lane starts now
    assert not run.entered.acquire(timeout=0.2)  # b's first step has not begun beside a's
    run.gate.set()
    run.wait(2)
    assert run.most_threads_at_once == 2
    assert run.threads[0] == 2 and set(run.threads[1:]) == {1}
    assert run.log.index("b0") > run.log.index("a0")


def test_a_failing_generation_reports_its_error_and_the_others_go_on() -> None:
    budget = ThreadBudget(1)
    run = Recorder(budget)
    run.submit("a", 4, fail_at=1)
    run.submit("b", 3)
    run.gate.set()
    run.wait(2)
    assert isinstance(run.outcomes["a"], RuntimeError)
    assert run.outcomes["b"] is True
    assert [entry for entry in run.log if entry.startswith("b")] == ["b0", "b1", "b2"]


def test_lanes_end_when_there_is_nothing_to_step() -> None:
    budget = ThreadBudget(2)
    run = Recorder(budget)
    run.gate.set()
    run.submit("a", 2)
    run.submit("b", 2)
    run.wait(2)
    for thread in threading.enumerate():
        if thread.name == "llama-lane":
            thread.join(WAIT)
    assert budget.lanes == 0
