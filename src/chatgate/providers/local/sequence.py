"""One sequence's llama.cpp context: its KV cache, always filled on the same schedule, so its numbers never depend on history.

llama.cpp's CPU kernels round differently depending on how many tokens one call evaluates and where
a token sits among them. Measured with Qwen2.5-Coder-0.5B Q4_K_M: the last prompt token's logits
differ by up to 0.3 between one 37-token call and 36 tokens then 1, and the KV cache's bytes differ
between 64- and 256-token calls. The thread count, on the other hand, changes nothing (1 to 4
threads give the same bytes), so it may change from one call to the next.

So a prompt always goes in as the same calls, whatever the cache already holds: chunks of ``CHUNK``
tokens starting at multiples of ``CHUNK``, the last one as long as what remains. A cached prefix is
kept only up to a chunk boundary that the prompt which filled it also evaluated as a whole chunk,
which gives the very bytes a cold cache would. Generated tokens go in one call each. The result is a
function of the model file, the llama.cpp build and the tokens alone: not of which context serves
the request, what it served before, how many threads it got, or what else ran at the same time.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
from llama_cpp import _internals as internals

# Tokens per prompt call. Smaller chunks reuse a cached prefix more finely but prefill more slowly
# (64-token calls took a 1,200-token prompt 9% longer than 256-token ones); at most n_ubatch (512).
CHUNK = 256


class Sequence:
    """A llama.cpp context holding one sequence (``tokens``, position by position)."""

    def __init__(self, model: Any, context: Any) -> None:
        self.model = model  # llama_cpp._internals.LlamaModel, shared by every sequence of the pool
        self.context = context  # llama_cpp._internals.LlamaContext: this sequence's own KV cache
        self.n_vocab: int = model.n_vocab()
        self.tokens: list[int] = []
        self.threads = 0
        self.cached = 0  # prompt tokens taken from the cache instead of evaluated, over its life
        self._whole = 0  # leading tokens that went in as whole chunks of a prompt
        self._batch = internals.LlamaBatch(n_tokens=CHUNK, embd=0, n_seq_max=1, verbose=False)

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
        for begin in range(start, len(prompt), CHUNK):
            chunk = prompt[begin : begin + CHUNK]
            self._evaluate(chunk, begin, last=begin + len(chunk) == len(prompt))
            self.tokens += chunk
            if len(chunk) == CHUNK:
                self._whole = begin + CHUNK
            yield len(prompt) - begin - len(chunk)

    def decode(self, token: int) -> None:
        """Evaluate one generated token after what the cache holds."""
        self._evaluate([token], len(self.tokens), last=True)
        self.tokens.append(token)

    def rewind(self, length: int) -> None:
        """Forget every position from ``length`` on."""
        if length >= len(self.tokens):
            return
        if length == 0 or not self.context.kv_cache_seq_rm(0, length, -1):
            self.context.kv_cache_clear()
            length = 0
        del self.tokens[length:]
        self._whole = min(self._whole, length)

    def logits(self) -> npt.NDArray[np.float32]:
        """The last evaluated position's logits: a view of the context's own buffer, valid until the next call."""
        return np.ctypeslib.as_array(self.context.get_logits_ith(-1), shape=(self.n_vocab,))

    def set_threads(self, threads: int) -> None:
        if threads != self.threads:
            self.context.set_n_threads(threads, threads)
            self.threads = threads

    def close(self) -> None:
        self._batch.close()
        self.context.close()

    def _evaluate(self, tokens: list[int], position: int, *, last: bool) -> None:
        batch = self._batch.batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = position + i
            batch.seq_id[i][0] = 0
            batch.n_seq_id[i] = 1
            batch.logits[i] = False
        batch.logits[len(tokens) - 1] = (
            last  # logits for the prompt's last token only, and for each generated one
        )
        try:
            self.context.decode(self._batch)
        except Exception:
            self.context.kv_cache_clear()  # whatever the failed call left, nothing of it is reused
            self.tokens.clear()
            self._whole = 0
            raise
