"""Structured output, logprobs, n, seed and logit_bias on the local engine, streamed and not."""

import json
from typing import Any

import httpx
import jsonschema
import openai
from pydantic import BaseModel

from tests.e2e.conftest import QWEN, SMALL, Spec, sse_events

HI: list[Any] = [{"role": "user", "content": "Say hello to the world."}]


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    answer = client.chat.completions.parse(
        model=QWEN,
        messages=[{"role": "user", "content": "Alice is 31 years old. Extract the person."}],
        response_format=Person,
        max_tokens=60,
        temperature=0,
    )
    assert answer.choices[0].message.parsed == Person(name="Alice", age=31)


def test_json_schema_output_always_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colours": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3}
        },
        "required": ["colours"],
        "additionalProperties": False,
    }
    for seed in (1, 2):
        answer = client.chat.completions.create(
            model=SMALL,
            messages=[{"role": "user", "content": "List some colours."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "colours", "schema": schema, "strict": True},
            },
            max_tokens=60,
            temperature=1.0,
            seed=seed,
        )
        assert answer.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), schema)


def test_json_object_mode_streams_valid_json(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=QWEN,
        messages=[
            {"role": "user", "content": 'Reply with a JSON object like {"name": ..., "legs": ...} for a cat.'}
        ],
        response_format={"type": "json_object"},
        max_tokens=150,
        temperature=0,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in chunks)), dict)


def test_logprobs_join_to_the_content(client: openai.OpenAI, spec: Spec) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=SMALL, messages=HI, logprobs=True, top_logprobs=3, max_tokens=8, temperature=0
    )
    spec.validate("CreateChatCompletionResponse", raw.http_response.json())
    choice = raw.parse().choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.token == t.top_logprobs[0].token  # greedy picks the most likely token


def test_no_logprob_for_the_end_of_turn_token(client: openai.OpenAI) -> None:
    """An answer that ends by itself has as many logprobs as completion tokens, not one more."""
    answer = client.chat.completions.create(
        model=SMALL,
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        max_tokens=64,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop", "the prompt should make the small model stop early"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    assert answer.usage is not None
    assert len(choice.logprobs.content) == answer.usage.completion_tokens
    assert "".join(t.token for t in choice.logprobs.content) == choice.message.content


def test_logprobs_stream(http: httpx.Client, spec: Spec) -> None:
    body = {
        "model": SMALL,
        "messages": HI,
        "logprobs": True,
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        chunks = [json.loads(e) for e in sse_events(response)[:-1]]
    text, joined = "", ""
    for chunk in chunks:
        spec.validate("CreateChatCompletionStreamResponse", chunk)
        choice = chunk["choices"][0]
        text += choice["delta"].get("content") or ""
        if choice.get("logprobs"):
            joined += "".join(t["token"] for t in choice["logprobs"]["content"])
            assert all(t["top_logprobs"] == [] for t in choice["logprobs"]["content"])
    assert text and joined == text


def test_n_choices_streamed_and_not(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=SMALL, messages=HI, n=3, max_tokens=6, temperature=1.0, seed=7
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.content for c in answer.choices)
    assert answer.usage is not None
    prompt_only = client.chat.completions.create(model=SMALL, messages=HI, max_tokens=1)
    assert prompt_only.usage is not None and answer.usage.prompt_tokens == prompt_only.usage.prompt_tokens
    stream = client.chat.completions.create(
        model=SMALL, messages=HI, n=2, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    texts: dict[int, str] = {}
    finished: list[int] = []
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finished.append(c.index)
    assert sorted(texts) == [0, 1] and finished == [0, 1]
    assert usage is not None and usage.completion_tokens <= 10


def test_seeded_sampling_repeats_and_other_seeds_differ(client: openai.OpenAI) -> None:
    poem: list[Any] = [{"role": "user", "content": "Write a poem about autumn leaves."}]

    def run(seed: int) -> str:
        answer = client.chat.completions.create(
            model=SMALL, messages=poem, max_tokens=24, temperature=1.5, seed=seed
        )
        return answer.choices[0].message.content or ""

    first = run(11)
    assert run(11) == first
    assert any(run(seed) != first for seed in (12, 13, 14))


def test_logit_bias_bans_a_token(client: openai.OpenAI) -> None:
    greedy = client.chat.completions.create(
        model=SMALL, messages=HI, max_tokens=1, temperature=0, logprobs=True
    )
    first = greedy.choices[0].logprobs.content[0].token  # type: ignore[union-attr]
    top = client.chat.completions.create(
        model=SMALL, messages=HI, max_tokens=1, temperature=0, logprobs=True, top_logprobs=1
    )
    assert top.choices[0].logprobs is not None
    token_id = token_id_of(client, first)
    banned = client.chat.completions.create(
        model=SMALL, messages=HI, max_tokens=1, temperature=0, logit_bias={str(token_id): -100}
    )
    assert banned.choices[0].message.content != first


def token_id_of(client: openai.OpenAI, text: str) -> int:
    """The model's token id for a one-token text, from the same GGUF the server loaded."""
    import llama_cpp

    from chatgate.providers.local import assets
    from tests.e2e.conftest import ROOT

    path = assets.ensure(assets.resolve("smollm2-135m-instruct-q4_1"), ROOT / ".chatgate" / "models")
    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
    finally:
        vocab.close()
    assert len(ids) == 1
    return int(ids[0])
