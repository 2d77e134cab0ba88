"""One request's generation, a step at a time: its prompt into the sequence's KV cache a chunk per step, then a token per step.

A prompt chunk is a llama.cpp call the generation makes itself, alone. A generated token is staged
on the sequence before the generation yields; whoever steps it (``batching.Batcher``) evaluates the
staged tokens before resuming it, one call for several sequences or, for an ``exact`` job, alone.
"""

import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace

import llama_cpp
import numpy as np

from chatgate.protocol.responses import FinishReason, TokenLogprob, TopLogprob
from chatgate.providers.base import Finished, ProviderEvent, TextDelta, ToolCallDelta
from chatgate.providers.local.decoding import TextAssembler
from chatgate.providers.local.sampling import Sampling, sampler_chain
from chatgate.providers.local.sequence import Sequence
from chatgate.providers.local.tools import FENCE, OPEN, CallStream, ToolPlan

Emit = Callable[[ProviderEvent], None]


@dataclass(frozen=True)
class Job:
    prompt: list[int]
    sampling: Sampling
    n: int = 1
    grammar: str | None = None  # response_format's grammar
    tools: ToolPlan | None = None
    exact: bool = False  # seeded: every token in a call of its own, so its numbers never depend on the others


def _token_logprob(sequence: Sequence, token: int, top_n: int) -> TokenLogprob:
    logits = sequence.logits()
    peak = float(logits.max())
    log_total = peak + math.log(float(np.exp(logits - peak).sum()))

    def entry(tok: int) -> tuple[str, float, list[int]]:
        piece = sequence.model.detokenize([tok], special=False)
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
    """Runs a Job's choices one after another on one sequence, a step at a time (see ``steps``)."""

    def __init__(self, sequence: Sequence, job: Job, cancel: threading.Event, emit: Emit):
        self.sequence = sequence
        self.job = job
        self.cancel = cancel
        self.emit = emit

    @property
    def exact(self) -> bool:
        return self.job.exact

    def steps(self) -> Generator[None, None, bool]:
        """Each step ends after one llama.cpp call (a prompt chunk it makes, or the token it staged,
        which the stepper evaluates before resuming it) and emits what it samples next; returns
        False if cancelled part-way.

        Choice ``i`` samples with seed + ``i`` from the very state choice 0 started from: the cache
        rewound to the prompt and the prompt's logits put back, as a request of its own would find it.
        """
        if self.cancel.is_set():
            return False
        for left in self.sequence.prefill(self.job.prompt):
            if left:
                yield
                if self.cancel.is_set():
                    return False  # the client left while the prompt was going in
        prompt_logits = self.sequence.logits().copy() if self.job.n > 1 else None
        for index in range(self.job.n):
            if index and prompt_logits is not None:
                self.sequence.rewind(len(self.job.prompt))
                self.sequence.logits()[:] = prompt_logits
            sampling = replace(self.job.sampling, seed=(self.job.sampling.seed + index) & 0xFFFFFFFF)
            if not (yield from self._choice(index, sampling)):
                return False
        return True

    def _choice(self, index: int, s: Sampling) -> Generator[None, None, bool]:
        sequence, tools = self.sequence, self.job.tools
        vocab = sequence.model.vocab
        constrained_tools = tools is not None and tools.required
        grammar = tools.grammar_from_start if tools is not None and tools.required else self.job.grammar
        chain = sampler_chain(sequence.model, s, grammar)
        text = TextAssembler(s.stops + ([OPEN, FENCE] if tools is not None and not tools.required else []))
        calls = CallStream(start_between=True) if constrained_tools else None
        call_text = TextAssembler([])
        pending: list[TokenLogprob] = []
        produced, reason = 0, "length"
        matched: str | None = None  # the request's stop sequence that ended the answer
        self._unreported = 0
        while True:
            token = chain.sample(sequence.context, sequence.row)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                reason = "stop"  # the end-of-turn token is not part of the answer, nor of its logprobs
                break
            if s.top_logprobs is not None and calls is None:
                pending.append(_token_logprob(sequence, token, s.top_logprobs))
            produced += 1
            self._unreported += 1
            piece = sequence.model.detokenize([token], special=False)
            if calls is not None:
                self._emit_calls(index, calls, call_text.feed(piece))
            else:
                out = text.feed(piece)
                if out:
                    self.emit(TextDelta(out, index, pending or None, self._take()))
                    pending = []
                if text.matcher.stopped:
                    if text.matcher.matched not in (OPEN, FENCE) or tools is None:
                        reason, matched = "stop", text.matcher.matched
                        break
                    # The model opened a tool call: from here the grammar holds it to the declared schemas.
                    after = (
                        tools.grammar_after_open
                        if text.matcher.matched == OPEN
                        else tools.grammar_after_fence
                    )
                    chain = sampler_chain(sequence.model, s, after)
                    calls = CallStream()
                    self._emit_calls(index, calls, text.matcher.remainder)
            if produced >= s.max_tokens:
                break
            sequence.stage(token)
            yield  # the stepper evaluates the staged token before resuming
            if self.cancel.is_set():
                return False
        if calls is None:
            tail = text.finish()
            if tail or pending:
                self.emit(TextDelta(tail, index, pending or None, self._take()))
        else:
            self._emit_calls(index, calls, call_text.finish())
            if reason == "stop" and calls.count and tools is not None:
                reason = "stop" if tools.forced_name else "tool_calls"
        final: FinishReason = "length" if reason == "length" else reason  # type: ignore[assignment]
        self.emit(
            Finished(final, len(self.job.prompt), produced, index, matched if final == "stop" else None)
        )
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
