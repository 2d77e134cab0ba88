"""The sampler chain: a grammar llama.cpp cannot parse is this request's error, never a crash."""

from pathlib import Path

import pytest
from llama_cpp import Llama

from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.local import assets
from chatgate.providers.local.sampling import GrammarRefused, Sampling, sampler_chain
from chatgate.providers.local.tools import plan

ROOT = Path(__file__).resolve().parents[3]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
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


@pytest.mark.parametrize(
    "choice", ["auto", "required", {"type": "function", "function": {"name": "get_weather"}}]
)
@pytest.mark.parametrize("parallel", [True, False])
def test_every_grammar_a_tool_plan_hands_the_engine_parses(choice: object, parallel: bool) -> None:
    """From the first token, after a ``<tool_call>`` the model opened, after a fenced JSON block: the
    one after ``<tool_call>`` had no root rule, so ``auto`` failed (before: crashed) the moment a
    model opened a call on its own."""
    path = assets.ensure(assets.resolve("smollm2-135m-instruct-q4_1"), ROOT / ".chatgate" / "models")
    model = Llama(model_path=str(path), vocab_only=True, verbose=False)._model
    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER],
            "tool_choice": choice,
            "parallel_tool_calls": parallel,
        }
    )
    tools = plan(request)
    assert tools is not None
    for grammar in (tools.grammar_from_start, tools.grammar_after_open, tools.grammar_after_fence):
        assert sampler_chain(model, SETTINGS, grammar) is not None
