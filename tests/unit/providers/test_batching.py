"""A model's batcher: which calls it makes for its generations, in what order, and how they end.

The sequences are real (``sequence.Sequence``, with ``decode_together``); the context under them is
a recorder of the calls, since what is checked is the schedule, not llama.cpp's numbers (those are
in test_sequence.py, on the real model).
"""

import threading
from collections.abc import Generator

from chatgate.providers.local.batching import Batcher
from chatgate.providers.local.scheduler import Outcome, ThreadBudget
from chatgate.providers.local.sequence import Sequence, decode_together

WAIT = 30  # seconds: only a bound on a hang, never a measurement


class Model:
    def n_vocab(self) -> int:
        return 8


class Context:
    def kv_cache_seq_rm(self, seq_id: int, p0: int, p1: int) -> bool:
        return True


class Recorder:
    """Stands for the shared llama.cpp context: logs each call as the sequence ids in its rows."""

    def __init__(self) -> None:
        self.context = Context()
        self.calls: list[list[int]] = []
        self.events: list[str] = []  # thread counts set, and generations' ends
        self.fail_when: set[int] = set()  # a call with this many rows fails
        self.gate = threading.Event()
        self.gate.set()

    def set_threads(self, threads: int) -> None:
        self.events.append(f"threads {threads}")

    def evaluate(self, rows: list[tuple[int, int, int, bool]], sequences: list[Sequence]) -> None:
        assert self.gate.wait(WAIT)
        self.calls.append([seq_id for _, _, seq_id, _ in rows])
        if len(rows) in self.fail_when and len({seq_id for _, _, seq_id, _ in rows}) > 1:
            for sequence in sequences:
                sequence.forget()
            raise RuntimeError("llama_decode returned 1")


class Fake:
    """A generation: a prompt of ``chunks`` calls, then ``tokens`` staged one at a time."""

    def __init__(
        self,
        shared: Recorder,
        seq_id: int,
        *,
        chunks: int = 1,
        tokens: int = 3,
        exact: bool = False,
        leave_after: int | None = None,  # its client leaves once it has staged this many tokens
    ):
        self.leave_after = leave_after
        self.sequence = Sequence(Model(), shared, seq_id)  # type: ignore[arg-type]
        self.shared = shared
        self.chunks = chunks
        self.tokens = tokens
        self.exact = exact
        self.cancel = threading.Event()
        self.sampled = 0

    def steps(self) -> Generator[None, None, bool]:
        if self.cancel.is_set():
            return False
        for chunk in range(self.chunks):
            self.shared.evaluate([(1, chunk, self.sequence.seq_id, True)], [self.sequence])
            self.sequence.tokens.append(1)
            if chunk < self.chunks - 1:
                yield
                if self.cancel.is_set():
                    return False
        for token in range(self.tokens):
            self.sampled += 1
            if token == self.tokens - 1:
                break
            self.sequence.stage(100 + token)
            if token + 1 == self.leave_after:
                self.cancel.set()
            yield
            if self.cancel.is_set():
                return False
        return True


class Run:
    def __init__(self, threads: int = 1) -> None:
        self.shared = Recorder()
        self.batcher = Batcher(self.shared, ThreadBudget(threads))  # type: ignore[arg-type]
        self.outcomes: dict[int, Outcome] = {}
        self.finished = threading.Semaphore(0)

    def add(self, fake: Fake) -> Fake:
        def done(outcome: Outcome) -> None:
            self.shared.events.append(f"done {fake.sequence.seq_id}")
            self.outcomes[fake.sequence.seq_id] = outcome
            self.finished.release()

        self.batcher.add(fake, done)  # type: ignore[arg-type]
        return fake

    def wait(self, count: int) -> None:
        for _ in range(count):
            assert self.finished.acquire(timeout=WAIT)


def start_together(run: Run, *fakes: Fake) -> None:
    """Add them all while the first prompt's call is held, so the batcher sees them at once."""
    run.shared.gate.clear()
    for fake in fakes:
        run.add(fake)
    run.shared.gate.set()


def test_new_prompts_go_first_then_the_unseeded_tokens_go_in_one_call() -> None:
    run = Run()
    fakes = [Fake(run.shared, i, tokens=4) for i in range(4)]
    start_together(run, *fakes)
    run.wait(4)
    assert run.outcomes == dict.fromkeys(range(4), True)
    # each prompt alone, first come first served; then 3 calls of the 4 staged tokens together
    assert run.shared.calls == [[0], [1], [2], [3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert run.batcher.calls == 3 and run.batcher.decoded == 12
    assert all(fake.sequence.tokens == [1, 100, 101, 102] for fake in fakes)


def test_a_seeded_generation_s_tokens_go_in_calls_of_their_own_taking_turns() -> None:
    run = Run()
    loose = [Fake(run.shared, i, tokens=3) for i in range(2)]
    exact = Fake(run.shared, 2, tokens=3, exact=True)
    start_together(run, loose[0], exact, loose[1])
    run.wait(3)
    assert run.shared.calls == [[0], [2], [1], [0, 1], [2], [0, 1], [2]]
    assert set(run.outcomes.values()) == {True}


def test_a_long_prompt_s_chunks_take_turns_with_the_others_decoding() -> None:
    run = Run()
    start_together(run, Fake(run.shared, 0, tokens=5), Fake(run.shared, 1, chunks=3, tokens=2))
    run.wait(2)
    # 1's first chunk at once (a new prompt), then its other chunks every other call
    assert run.shared.calls == [[0], [1], [0], [1], [0], [1], [0, 1], [0]]


def test_a_cancelled_generation_ends_without_another_call_and_the_others_go_on() -> None:
    run = Run()
    stays, leaves = Fake(run.shared, 0, tokens=4), Fake(run.shared, 1, tokens=50, leave_after=1)
    start_together(run, stays, leaves)
    run.wait(2)
    assert run.outcomes == {0: True, 1: False}
    assert run.shared.calls == [[0], [1], [0], [0], [0]]  # its staged token never went in
    late = Fake(run.shared, 2)
    late.cancel.set()  # gone before its first step
    run.add(late)
    run.wait(1)
    assert run.outcomes[2] is False and len(run.shared.calls) == 5


def test_a_failed_call_fails_the_generations_in_it_and_their_sequences_forget_their_caches() -> None:
    run = Run()
    run.shared.fail_when = {2}
    seeded = Fake(run.shared, 2, tokens=3, exact=True)
    a, b = Fake(run.shared, 0), Fake(run.shared, 1)
    start_together(run, a, b, seeded)
    run.wait(3)
    assert isinstance(run.outcomes[0], RuntimeError) and isinstance(run.outcomes[1], RuntimeError)
    assert run.outcomes[2] is True  # its tokens went in calls of its own
    assert a.sequence.tokens == [] and b.sequence.tokens == []
    assert seeded.sequence.tokens == [1, 100, 101]


def test_the_batcher_leaves_the_lanes_when_idle_and_comes_back_for_new_work() -> None:
    run = Run(threads=2)
    run.add(Fake(run.shared, 0))
    run.wait(1)
    for _ in range(600):  # a bound on a hang only
        if run.batcher.idle:
            break
        threading.Event().wait(0.05)
    assert run.batcher.idle
    # no step after the last generation's end: the pool may free the context once the batcher is idle
    assert run.shared.events[-1] == "done 0"
    for thread in threading.enumerate():
        if thread.name == "llama-lane":
            thread.join(WAIT)
    assert run.batcher.budget.lanes == 0
    run.add(Fake(run.shared, 1))
    run.wait(1)
    assert run.outcomes == {0: True, 1: True}


def test_a_call_s_rows_go_in_the_order_of_the_sequences_ids_and_each_knows_its_row() -> None:
    """llama.cpp splits a call whose rows are out of stream order into one call per run of them."""
    shared = Recorder()
    first, second, third = (Sequence(Model(), shared, i) for i in (5, 3, 4))  # type: ignore[arg-type]
    for token, sequence in enumerate((first, second, third)):
        sequence.stage(7 + token)
    decode_together([first, second, third])
    assert shared.calls == [[3, 4, 5]]
    assert (first.row, second.row, third.row) == (2, 0, 1)
    assert (first.tokens, second.tokens, third.tokens) == ([7], [8], [9])
    assert first.staged is None and second.staged is None and third.staged is None
