"""The sampler chain: a grammar llama.cpp cannot parse is this request's error, never a crash."""

from pathlib import Path

import pytest
from llama_cpp import Llama

from chatgate.providers.local import assets
from chatgate.providers.local.sampling import GrammarRefused, Sampling, sampler_chain

ROOT = Path(__file__).resolve().parents[3]
SETTINGS = Sampling(
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    min_p=0.0,
    repeat_penalty=1.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    seed=7,
    max_tokens=8,
    stops=[],
)


def test_a_grammar_the_engine_cannot_parse_is_refused_and_a_good_one_is_taken() -> None:
    path = assets.ensure(assets.resolve("smollm2-135m-instruct-q4_1"), ROOT / ".chatgate" / "models")
    vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
    model = vocab._model
    with pytest.raises(GrammarRefused):  # before: a null sampler in the chain, a segfault at the next sample
        sampler_chain(model, SETTINGS, 'root ::= ( "a" ')
    assert sampler_chain(model, SETTINGS, 'root ::= "a" | "b"') is not None
