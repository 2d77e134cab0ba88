"""One request's generation on an engine thread: fill the KV cache with the prompt, then sample token by token."""

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import llama_cpp
import numpy as np

from chatgate.protocol.responses import FinishReason, TokenLogprob, TopLogprob
from chatgate.providers.base import Finished, ProviderEvent, TextDelta, ToolCallDelta
from chatgate.providers.local.decoding import TextAssembler
from chatgate.providers.local.sampling import Sampling, sampler_chain
from chatgate.providers.local.tools import FENCE, OPEN, CallStream, ToolPlan

Emit = Callable[[ProviderEvent], None]


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    sampling: Sampling
    n: int = 1
    grammar: str | None = None  # response_format's grammar
    tools: ToolPlan | None = None


# Prompt tokens evaluated between checks for a cancelled request and a new thread share. Smaller
# steps prefill more slowly: 64-token steps took a 1,200-token prompt 9% longer.
PREFILL_STEP = 256


def prefill(
    llama: Any,
    prompt: list[int],
    cancel: threading.Event | None = None,
    rebalance: Callable[[], None] | None = None,
) -> bool:
    """Evaluate the prompt, reusing whatever prefix of it the instance's KV cache already holds.

    False if ``cancel`` was set before it was all in.
    """
    cached = 0
    for have, want in zip(llama.input_ids[: llama.n_tokens], prompt, strict=False):
        if have != want:
            break
        cached += 1
    cached = min(cached, len(prompt) - 1)  # re-evaluate at least one token, for fresh logits
    if cached <= 0 or not llama._ctx.kv_cache_seq_rm(-1, cached, -1):
        llama.reset()
        cached = 0
    llama.n_tokens = cached
    for start in range(cached, len(prompt), PREFILL_STEP):
        if cancel is not None and cancel.is_set():
            return False  # the client left while the prompt was going in
        if rebalance is not None:
            rebalance()
        llama.eval(prompt[start : start + PREFILL_STEP])
    return True


def _token_logprob(llama: Any, token: int, top_n: int) -> TokenLogprob:
    logits = np.ctypeslib.as_array(llama._ctx.get_logits_ith(-1), shape=(llama.n_vocab(),))
    peak = float(logits.max())
    log_total = peak + math.log(float(np.exp(logits - peak).sum()))

    def entry(tok: int) -> tuple[str, float, list[int]]:
        piece = llama._model.detokenize([tok], special=False)
        return piece.decode("utf-8", errors="replace"), float(logits[tok]) - log_total, list(piece)

    text, logprob, raw = entry(token)
    top: list[TopLogprob] = []
    if top_n > 0:
        best = np.argpartition(-logits, top_n)[:top_n]
        for tok in sorted(best.tolist(), key=lambda t: -float(logits[t])):
            t_text, t_lp, t_raw = entry(tok)
            top.append(TopLogprob(token=t_text, logprob=t_lp, bytes=t_raw))
    return TokenLogprob(token=text, logprob=logprob, bytes=raw, top_logprobs=top)


class Generation:
    """Runs a Job's choices one after another on one model instance."""

    def __init__(
        self, llama: Any, job: Job, rebalance: Callable[[], None], cancel: threading.Event, emit: Emit
    ):
        self.llama = llama
        self.job = job
        self.rebalance = rebalance
        self.cancel = cancel
        self.emit = emit

    def run(self) -> bool:
        """Generate every choice; False if cancelled part-way."""
        for index in range(self.job.n):
            sampling = replace(self.job.sampling, seed=(self.job.sampling.seed + index) & 0xFFFFFFFF)
            if not self._choice(index, sampling):
                return False
        return True

    def _choice(self, index: int, s: Sampling) -> bool:
        llama, tools = self.llama, self.job.tools
        vocab = llama._model.vocab
        if not prefill(llama, self.job.prompt, self.cancel, self.rebalance):
            return False
        constrained_tools = tools is not None and tools.required
        grammar = tools.grammar_from_start if tools is not None and tools.required else self.job.grammar
        chain = sampler_chain(llama, s, grammar)
        text = TextAssembler(s.stops + ([OPEN, FENCE] if tools is not None and not tools.required else []))
        calls = CallStream(start_between=True) if constrained_tools else None
        call_text = TextAssembler([])
        pending: list[TokenLogprob] = []
        produced, reason = 0, "length"
        self._unreported = 0
        while True:
            if self.cancel.is_set():
                return False
            token = chain.sample(llama._ctx, -1)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                reason = "stop"  # the end-of-turn token is not part of the answer, nor of its logprobs
                break
            if s.top_logprobs is not None and calls is None:
                pending.append(_token_logprob(llama, token, s.top_logprobs))
            produced += 1
            self._unreported += 1
            piece = llama._model.detokenize([token], special=False)
            if calls is not None:
                self._emit_calls(index, calls, call_text.feed(piece))
            else:
                out = text.feed(piece)
                if out:
                    self.emit(TextDelta(out, index, pending or None, self._take()))
                    pending = []
                if text.matcher.stopped:
                    if text.matcher.matched not in (OPEN, FENCE) or tools is None:
                        reason = "stop"
                        break
                    # The model opened a tool call: from here the grammar holds it to the declared schemas.
                    after = (
                        tools.grammar_after_open
                        if text.matcher.matched == OPEN
                        else tools.grammar_after_fence
                    )
                    chain = sampler_chain(llama, s, after)
                    calls = CallStream()
                    self._emit_calls(index, calls, text.matcher.remainder)
            if produced >= s.max_tokens:
                break
            llama.eval([token])
            self.rebalance()
        if calls is None:
            tail = text.finish()
            if tail or pending:
                self.emit(TextDelta(tail, index, pending or None, self._take()))
        else:
            self._emit_calls(index, calls, call_text.finish())
            if reason == "stop" and calls.count and tools is not None:
                reason = "stop" if tools.forced_name else "tool_calls"
        final: FinishReason = "length" if reason == "length" else reason  # type: ignore[assignment]
        self.emit(Finished(final, len(self.job.prompt), produced, index))
        return True

    def _take(self) -> int:
        """Tokens generated since the last delta went out (how much a delta cost)."""
        taken, self._unreported = self._unreported, 0
        return taken

    def _emit_calls(self, index: int, calls: CallStream, text: str) -> None:
        for piece in calls.feed(text):
            self.emit(
                ToolCallDelta(
                    piece.call_index, piece.arguments, piece.call_id, piece.name, index, self._take()
                )
            )
