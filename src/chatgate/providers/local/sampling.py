"""Sampling settings for one request, and the llama.cpp sampler chain built from them."""

from dataclasses import dataclass, field
from typing import Any

import llama_cpp
from llama_cpp import _internals as internals

ROOT = b"root"  # the rule a grammar starts from


class GrammarRefused(ValueError):
    """llama.cpp could not parse a grammar (it gives back no sampler)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    frequency_penalty: float
    presence_penalty: float
    seed: int
    max_tokens: int
    stops: list[str]
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_logprobs: int | None = None  # None: no logprobs; 0..20: that many alternatives per token
    penalty_window: int = 64


def sampler_chain(model: Any, s: Sampling, grammar: str | None) -> Any:
    """A fresh sampler chain for ``model`` (llama-cpp-python's LlamaModel): bias, grammar, penalties,
    then greedy or top-k/top-p/min-p/temperature."""
    chain = internals.LlamaSampler()
    n_vocab = model.n_vocab()
    if s.logit_bias:
        chain.add_logit_bias(n_vocab, s.logit_bias)
    if grammar is not None:
        # llama.cpp answers a grammar it cannot parse with a null sampler; added to the chain, that
        # null is called at the next sample and the whole process dies (segfault in
        # llama_sampler_apply). So it is checked here and refused as this request's error.
        sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), ROOT)
        if not sampler:
            raise GrammarRefused("the engine could not parse the grammar built for this request")
        llama_cpp.llama_sampler_chain_add(chain.sampler, sampler)
    if s.repeat_penalty != 1.0 or s.frequency_penalty or s.presence_penalty:
        chain.add_penalties(
            n_vocab=n_vocab,
            penalty_last_n=s.penalty_window,
            penalty_repeat=s.repeat_penalty,
            penalty_freq=s.frequency_penalty,
            penalty_present=s.presence_penalty,
        )
    if s.temperature == 0.0:
        chain.add_greedy()
    else:
        chain.add_top_k(s.top_k if s.top_k > 0 else n_vocab)
        chain.add_top_p(s.top_p, 1)
        chain.add_min_p(s.min_p, 1)
        chain.add_temp(s.temperature)
        chain.add_dist(s.seed)
    return chain
