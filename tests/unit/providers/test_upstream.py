"""The upstream relay's pure parts: the prompt bound and estimate, the body sent, chunks read, names shown."""

import json
from typing import Any

import pytest

from chatgate.config import UpstreamDeployment
from chatgate.errors import UnsupportedParameter
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses_api import CreateResponse
from chatgate.providers.base import Finished, TextDelta, UsageReport
from chatgate.providers.relay import RelaySession
from chatgate.providers.upstream import (
    BYTES_PER_TOKEN,
    IMAGE_PART_TOKENS,
    UpstreamProvider,
    _chunk_events,
    _fingerprint,
    _reported,
    display_url,
    prompt_size,
)
from chatgate.services.responses_chat import to_chat

BIG = "x" * 10_000


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", **fields})


def bound(**fields: Any) -> int:
    return prompt_size(request(**fields)).bound


ASK = [{"role": "user", "content": "hi"}]


def test_the_bound_counts_tool_calls_their_ids_and_tool_messages() -> None:
    call = {"id": "call_" + "i" * 500, "type": "function", "function": {"name": "f", "arguments": BIG}}
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_" + "t" * 500, "content": "ok"},
    ]
    assert bound(messages=messages) >= len(BIG) + 1000


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [{"type": "function", "function": {"name": "f", "description": BIG}}]},
        {"functions": [{"name": "f", "description": BIG}]},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"d": BIG}}}},
        {"messages": [{"role": "assistant", "content": None, "refusal": BIG}]},
        {"messages": [{"role": "user", "content": "hi", "name": BIG}]},
    ],
)
def test_the_bound_counts_what_is_sent_beside_the_text(fields: dict[str, Any]) -> None:
    assert bound(**{"messages": ASK, **fields}) > len(BIG)


def test_an_image_part_counts_a_fixed_bound_not_its_bytes() -> None:
    url = "data:image/png;base64," + "A" * 100_000
    parts = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": url}}]
    size = prompt_size(request(messages=[{"role": "user", "content": parts}]))
    assert size.media_parts == 1
    assert IMAGE_PART_TOKENS <= size.bound < IMAGE_PART_TOKENS + 100


def test_the_estimate_is_the_text_at_three_bytes_a_token_and_never_above_the_bound() -> None:
    text = "hello world " * 100 + "日本語" * 100
    size = prompt_size(request(messages=[{"role": "user", "content": text}]))
    assert size.text_bytes == len(text.encode()) + 8
    assert size.estimate == -(-size.text_bytes // BYTES_PER_TOKEN)
    assert size.estimate <= size.bound


def provider(**fields: Any) -> UpstreamProvider:
    base = {"kind": "openai_compatible", "base_url": "http://u:p@up.example/v1?key=k", "model": "up"}
    return UpstreamProvider(UpstreamDeployment.model_validate({**base, **fields}), RelaySession())


def sent(upstream: UpstreamProvider, request: ChatCompletionRequest) -> dict[str, Any]:
    """The body ``upstream`` would send for ``request``, after its checks."""
    return upstream._body(request, upstream.prepare(request).limit)


def test_the_reserved_output_bound_is_sent_when_the_client_sets_none() -> None:
    body = sent(provider(max_tokens=10), request(messages=ASK))
    assert body["max_tokens"] == 10 and "max_completion_tokens" not in body
    assert sent(provider(max_tokens=10), request(messages=ASK, max_tokens=5)) == {
        "messages": ASK,
        "model": "up",
        "max_tokens": 5,
    }


@pytest.mark.parametrize("given", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_the_limit_goes_in_the_field_the_upstream_reads(given: str, field: str) -> None:
    body = sent(provider(max_tokens=10, limit_field=field), request(messages=ASK, **{given: 7}))
    assert body[field] == 7 and len({"max_tokens", "max_completion_tokens"} & body.keys()) == 1
    assert sent(provider(max_tokens=10, limit_field=field), request(messages=ASK))[field] == 10


GATED_AND_EXTENDED: dict[str, Any] = {
    "service_tier": "priority",
    "store": True,
    "metadata": {"k": "v"},
    "prediction": {"type": "content", "content": "x"},
    "web_search_options": {},
    "audio": {"voice": "alloy", "format": "wav"},
    "top_k": 20,
    "min_p": 0.1,
    "repetition_penalty": 1.1,
    "chat_template_kwargs": {"enable_thinking": False},
}


@pytest.mark.parametrize("field", GATED_AND_EXTENDED)
def test_a_field_the_deployment_does_not_take_is_refused_naming_it(field: str) -> None:
    with pytest.raises(UnsupportedParameter) as caught:
        provider().prepare(request(messages=ASK, **{field: GATED_AND_EXTENDED[field]}))
    assert caught.value.param == field and caught.value.code == "unsupported_parameter"


@pytest.mark.parametrize("field", GATED_AND_EXTENDED)
def test_a_field_the_catalogue_enables_is_forwarded(field: str) -> None:
    value = GATED_AND_EXTENDED[field]
    assert sent(provider(extra_fields=[field]), request(messages=ASK, **{field: value}))[field] == value


def test_openai_fields_go_as_they_are_and_a_false_store_is_no_request_to_store() -> None:
    body = sent(provider(), request(messages=ASK, temperature=0.5, seed=3, user="u", store=False))
    assert (body["temperature"], body["seed"], body["user"]) == (0.5, 3, "u")
    assert "store" not in body


def test_the_catalogue_names_only_fields_it_can_forward() -> None:
    with pytest.raises(ValueError, match="extra_fields"):
        provider(extra_fields=["temperature_boost"])


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://admin:hunter2@127.0.0.1:9311/v1", "http://127.0.0.1:9311/v1"),
        ("https://key@api.example.com/v1?api-key=secret#x", "https://api.example.com/v1"),
        ("http://u:p@[::1]:8000/v1", "http://[::1]:8000/v1"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
    ],
)
def test_a_displayed_url_has_no_credentials(url: str, shown: str) -> None:
    assert display_url(url) == shown


def test_a_provider_name_has_no_credentials() -> None:
    assert provider().name == "http://up.example/v1#up"
    assert provider().health()[0]["deployment"] == "http://up.example/v1#up"


@pytest.mark.parametrize(
    "usage",
    [None, {}, {"prompt_tokens": None, "completion_tokens": 1}, {"prompt_tokens": True, "completion_tokens": 1},
     {"prompt_tokens": "3", "completion_tokens": 1}, {"prompt_tokens": -1, "completion_tokens": 1}, [1, 2]],
)  # fmt: skip
def test_a_usage_that_is_not_two_counts_is_absent(usage: Any) -> None:
    assert _reported(usage) is None


@pytest.mark.parametrize(
    ("answer", "fingerprint"),
    [({"system_fingerprint": "fp_up"}, "fp_up"), ({}, None), ({"system_fingerprint": None}, None),
     ({"system_fingerprint": 7}, None), ([], None)],
)  # fmt: skip
def test_the_upstreams_fingerprint_is_passed_on_as_sent_or_none(answer: Any, fingerprint: str | None) -> None:
    assert _fingerprint(answer) == fingerprint


def test_a_usage_of_two_counts_is_exact() -> None:
    assert _reported({"prompt_tokens": 3, "completion_tokens": 0}) == UsageReport(3, 0)


def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}], **extra}


def test_a_chunk_with_null_usage_has_no_usage_report() -> None:
    events = _chunk_events(chunk({"content": "a"}, usage={"prompt_tokens": None, "completion_tokens": 1}))
    assert events == [TextDelta("a", 0, None, tokens=1)]


def test_a_refusal_chunk_is_a_refusal_delta() -> None:
    assert _chunk_events(chunk({"refusal": "No."})) == [TextDelta("No.", 0, tokens=1, refusal=True)]


def test_a_chunk_whose_text_is_not_a_string_is_malformed() -> None:
    with pytest.raises(TypeError):
        _chunk_events(chunk({"content": {"text": "a"}}))


def test_a_finish_chunk_counts_nothing_itself() -> None:
    finished = {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]}
    assert _chunk_events(json.loads(json.dumps(finished))) == [Finished("length", 0, 0, 1)]


async def test_a_responses_request_is_planned_as_it_came_for_a_deployment_that_speaks_it() -> None:
    ask = CreateResponse.model_validate(
        {"model": "alias", "input": [{"role": "user", "content": "hi"}], "max_output_tokens": 9}
    )
    chat = to_chat(ask, list(ask.input), stream=False)  # type: ignore[arg-type]
    plan = provider(responses_api=True).prepare(chat)
    assert plan.native is not None
    assert (plan.native["model"], plan.native["max_output_tokens"], plan.native["store"]) == ("up", 9, False)
    assert plan.bound.completion_tokens == 9
    assert provider().prepare(chat).native is None  # translated to Chat Completions instead
    assert provider(responses_api=True).prepare(request(messages=ASK)).native is None  # a chat request
    assert await provider().count_prompt(plan) == plan.prompt_estimate
