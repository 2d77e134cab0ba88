"""A model's sequences: one llama.cpp context holding a KV cache stream for each, filled on a schedule that never depends on history.

llama.cpp's CPU kernels round differently depending on how many tokens one call evaluates and where
a token sits among them. Measured with Qwen2.5-Coder-0.5B Q4_K_M: the last prompt token's logits
differ by up to 0.3 between one 37-token call and 36 tokens then 1, and the KV cache's bytes differ
between 64- and 256-token calls. The thread count, on the other hand, changes nothing (1 to 4
threads give the same bytes), so it may change from one call to the next.

So a prompt always goes in as the same calls of its sequence alone, whatever the cache already
holds: chunks of ``CHUNK`` tokens starting at multiples of ``CHUNK``, the last one as long as what
remains. A cached prefix is kept only up to a chunk boundary that the prompt which filled it also
evaluated as a whole chunk, which gives the very bytes a cold cache would.

Generated tokens go in one of two ways. ``decode`` evaluates one sequence's token in a call of its
own: the result is a function of the model file, the llama.cpp build and the tokens alone, not of
which sequence serves the request, what it served before, how many threads it got, or what the
other sequences hold (each has a stream of its own in the KV cache, ``kv_unified`` off). That is
how a seeded request's tokens go in. ``decode_together`` evaluates the staged tokens of several
sequences in one call, which costs much less than one call each (``bench/ceiling.py``: 4 tokens in
one call on 2 threads, about 2.5 times one token) but rounds a token's numbers by where it sits in
the call: a request without a seed may take that.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from llama_cpp import _internals as internals

# Tokens per prompt call. Smaller chunks reuse a cached prefix more finely but prefill more slowly
# (64-token calls took a 1,200-token prompt 9% longer than 256-token ones); at most n_ubatch (512).
CHUNK = 256


class SharedContext:
    """The llama.cpp context of a model's sequences: a KV cache stream each, one call at a time."""

    def __init__(self, model: Any, params: Any, sequences: int) -> None:
        self.context = internals.LlamaContext(model=model, params=params, verbose=False)
        self.threads = 0
        self._batch = internals.LlamaBatch(n_tokens=max(CHUNK, sequences), embd=0, n_seq_max=1, verbose=False)

    def set_threads(self, threads: int) -> None:
        if threads != self.threads:
            self.context.set_n_threads(threads, threads)
            self.threads = threads

    def evaluate(self, rows: list[tuple[int, int, int, bool]], sequences: list["Sequence"]) -> None:
        """One call of ``rows`` (token, position, sequence id, logits wanted); on failure every
        sequence in ``sequences`` forgets its cache, since nothing of what the call left is reused."""
        batch = self._batch.batch
        batch.n_tokens = len(rows)
        for i, (token, position, seq_id, logits) in enumerate(rows):
            batch.token[i] = token
            batch.pos[i] = position
            batch.seq_id[i][0] = seq_id
            batch.n_seq_id[i] = 1
            batch.logits[i] = logits
        try:
            self.context.decode(self._batch)
        except Exception:
            for sequence in sequences:
                sequence.forget()
            raise

    def close(self) -> None:
        self._batch.close()
        self.context.close()


class Sequence:
    """One sequence (``tokens``, position by position) in its stream of the shared context's KV cache."""

    def __init__(self, model: Any, shared: SharedContext, seq_id: int) -> None:
        self.model = model  # llama_cpp._internals.LlamaModel, shared by every sequence of the pool
        self.shared = shared
        self.context = shared.context
        self.seq_id = seq_id
        self.n_vocab: int = model.n_vocab()
        self.tokens: list[int] = []
        self.staged: int | None = None  # a sampled token waiting for a call that decodes several
        self.row = -1  # where this sequence's logits are in the context's last call
        self.cached = 0  # prompt tokens taken from the cache instead of evaluated, over its life
        self._whole = 0  # leading tokens that went in as whole chunks of a prompt

    def reusable(self, prompt: list[int]) -> int:
        """How many leading tokens of ``prompt`` the cache already holds exactly as a cold start makes them.

        Whole chunks only, and never the chunk that holds the prompt's last token: its logits are needed.
        """
        same = 0
        for have, want in zip(self.tokens[: self._whole], prompt, strict=False):
            if have != want:
                break
            same += 1
        return max(0, min(same, len(prompt) - 1)) // CHUNK * CHUNK

    def prefill(self, prompt: list[int]) -> Iterator[int]:
        """Evaluate ``prompt`` a chunk per step, reusing what the cache holds exactly; yields the tokens left."""
        start = self.reusable(prompt)
        self.rewind(start)
        self.cached += start
        self.staged = None
        for begin in range(start, len(prompt), CHUNK):
            chunk = prompt[begin : begin + CHUNK]
            last = begin + len(chunk) == len(prompt)
            # logits for the prompt's last token only
            rows = [
                (token, begin + i, self.seq_id, last and i == len(chunk) - 1) for i, token in enumerate(chunk)
            ]
            self.shared.evaluate(rows, [self])
            self.row = len(chunk) - 1
            self.tokens += chunk
            if len(chunk) == CHUNK:
                self._whole = begin + CHUNK
            yield len(prompt) - begin - len(chunk)

    def stage(self, token: int) -> None:
        """Hold a generated token for the next call that decodes several sequences (``decode_together``)."""
        self.staged = token

    def decode(self, token: int) -> None:
        """Evaluate one generated token after what the cache holds, in a call of its own."""
        self.stage(token)
        decode_together([self])

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        if length >= len(self.tokens):
            return
        if length == 0 or not self.context.kv_cache_seq_rm(self.seq_id, length, -1):
            self.forget()
            return
        del self.tokens[length:]
        self._whole = min(self._whole, length)

    def forget(self) -> None:
        """Empty this sequence's stream of the cache (and only it)."""
        self.context.kv_cache_seq_rm(self.seq_id, -1, -1)
        self.tokens.clear()
        self._whole = 0
        self.staged = None

    def logits(self) -> npt.NDArray[np.float32]:
        """This sequence's logits from the context's last call: a view of its buffer, valid until the next call."""
        return np.ctypeslib.as_array(self.context.get_logits_ith(self.row), shape=(self.n_vocab,))


def decode_together(sequences: list[Sequence]) -> None:
    """Evaluate each sequence's staged token in one call, a row each, in the order of their ids.

    llama.cpp computes a call as one pass only over rows whose KV streams come in order and with
    consecutive ids; otherwise it splits it into a pass per such run, each costing about what a call
    of its own would (measured, 4 sequences on 2 threads: 54-56 ms a call in order, 91 ms in
    reverse order, the cost of four one-token calls). So the rows are sorted here, and the pool
    hands out the lowest free sequence, which keeps the ids at work consecutive as far as it can.
    """
    sequences.sort(key=lambda sequence: sequence.seq_id)
    tokens = [sequence.staged for sequence in sequences if sequence.staged is not None]
    assert len(tokens) == len(sequences), "every sequence in the call has a staged token"
    rows = [(token, len(seq.tokens), seq.seq_id, True) for token, seq in zip(tokens, sequences, strict=True)]
    sequences[0].shared.evaluate(rows, sequences)
    for row, (token, sequence) in enumerate(zip(tokens, sequences, strict=True)):
        sequence.tokens.append(token)
        sequence.staged = None
        sequence.row = row
