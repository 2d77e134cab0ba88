"""The engine's numbers, to the bit: the same tokens give the same logits whatever the cache, sequence, threads or other streams.

Runs the real Qwen2.5-Coder-0.5B Q4_K_M (the kernels whose rounding depends on how many tokens one
call evaluates) in-process, without a server.
"""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from chatgate.providers.local import assets
from chatgate.providers.local.pool import EnginePool, ThreadBudget
from chatgate.providers.local.sequence import CHUNK, Sequence, decode_together

ROOT = Path(__file__).resolve().parents[3]
TEXT = " ".join(f"Fact {i}: a tower of {i} floors has {i * 12} windows." for i in range(1, 21))


@pytest.fixture(scope="module")
def pool() -> Iterator[EnginePool]:
    path = assets.ensure(assets.resolve("qwen2.5-coder-0.5b-instruct-q4_k_m"), ROOT / ".chatgate" / "models")
    pool = EnginePool(path=path, context_length=1024, instances=2, budget=ThreadBudget(2), max_queue=0)
    pool.load()
    yield pool
    pool.close()


def evaluate(sequence: Sequence, prompt: list[int], threads: int, generate: int = 0) -> list[bytes]:
    """The prompt's logits, then those after each of ``generate`` greedy tokens, as raw bytes."""
    sequence.shared.set_threads(threads)
    for _ in sequence.prefill(prompt):
        pass
    seen = [sequence.logits().tobytes()]
    for _ in range(generate):
        sequence.decode(int(np.argmax(sequence.logits())))
        seen.append(sequence.logits().tobytes())
    return seen


def test_a_warm_cache_another_sequence_and_other_thread_counts_give_the_same_bits(pool: EnginePool) -> None:
    first, second = (slot.sequence for slot in pool.slots)
    prompt = pool.tokenizer.tokenize(TEXT.encode(), add_bos=False, special=False)
    assert CHUNK < len(prompt) < 2 * CHUNK
    cold = evaluate(first, prompt, threads=2, generate=4)

    assert evaluate(second, prompt, threads=1, generate=4) == cold  # another context, one thread
    assert first.reusable(prompt) == CHUNK  # its first chunk is cached, as a cold start made it
    other = [*prompt[: CHUNK + 20], *pool.tokenizer.tokenize(b" And a shed.", add_bos=False, special=False)]
    cached = first.cached
    evaluate(first, other, threads=2)  # the same first chunk, another ending: kept
    assert first.cached == cached + CHUNK
    assert evaluate(first, prompt, threads=2, generate=4) == cold  # back again, from the cache
    assert first.cached == cached + 2 * CHUNK


def test_rewinding_to_the_prompt_and_restoring_its_logits_is_a_fresh_start(pool: EnginePool) -> None:
    sequence = pool.slots[0].sequence
    prompt = pool.tokenizer.tokenize(b"Name three colours.", add_bos=False, special=False)
    fresh = evaluate(sequence, prompt, threads=2, generate=3)
    sequence.rewind(len(prompt))
    sequence.logits()[:] = np.frombuffer(fresh[0], dtype=np.float32)
    again = [sequence.logits().tobytes()]
    for _ in range(3):  # what the second of n choices does
        sequence.decode(int(np.argmax(sequence.logits())))
        again.append(sequence.logits().tobytes())
    assert again == fresh


def test_a_sequence_s_own_calls_give_the_same_bits_whatever_the_other_streams_hold(pool: EnginePool) -> None:
    first, second = (slot.sequence for slot in pool.slots)
    prompt = pool.tokenizer.tokenize(b"Name three rivers.", add_bos=False, special=False)
    other = pool.tokenizer.tokenize(TEXT.encode(), add_bos=False, special=False)
    second.rewind(0)
    alone = evaluate(first, prompt, threads=2, generate=4)  # the other stream empty
    evaluate(second, other, threads=1, generate=3)  # the other stream full
    first.rewind(0)
    assert evaluate(first, prompt, threads=1, generate=4) == alone


def test_tokens_decoded_together_each_come_back_in_their_own_sequence_s_row(pool: EnginePool) -> None:
    """One call for both sequences' tokens: each samples from its own row, and what it gets is its
    own answer (the call's rounding may differ from a call of its own, so not compared to the bit)."""
    first, second = (slot.sequence for slot in pool.slots)
    prompts = [
        pool.tokenizer.tokenize(text, add_bos=False, special=False) for text in (b"Count: 1, 2, 3,", b"def")
    ]
    alone = []
    for sequence, prompt in zip((first, second), prompts, strict=True):
        sequence.rewind(0)
        alone.append(
            [
                np.frombuffer(raw, dtype=np.float32)
                for raw in evaluate(sequence, prompt, threads=2, generate=4)
            ]
        )
    together: list[list[npt.NDArray[np.float32]]] = []
    for sequence, prompt in zip((first, second), prompts, strict=True):
        sequence.rewind(0)
        for _ in sequence.prefill(prompt):
            pass
        together.append([sequence.logits().copy()])  # valid until the next call, whoever makes it
    first.shared.set_threads(2)
    for _ in range(4):
        for sequence, seen in zip((first, second), together, strict=True):
            sequence.stage(int(np.argmax(seen[-1])))
        decode_together([first, second])
        together[0].append(first.logits().copy())
        together[1].append(second.logits().copy())
    for mine, theirs in zip(together, alone, strict=True):
        assert [int(np.argmax(row)) for row in mine] == [int(np.argmax(row)) for row in theirs]
        assert max(float(np.abs(a - b).max()) for a, b in zip(mine, theirs, strict=True)) < 1.0
    assert float(np.abs(together[0][-1] - together[1][-1]).max()) > 1.0  # two answers, not one twice
