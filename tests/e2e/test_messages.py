"""Anthropic's Messages API on the local engine, through the official ``anthropic`` client: messages
and stream events validated against Anthropic's shapes, tools, token counts, errors, accounting."""

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.e2e.conftest import SMALL, Spec, typed_events, user_key
from tests.e2e.infra import API_KEY, Server

HI: list[Any] = [{"role": "user", "content": "Say hello."}]
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def client_for(server: Server, key: str = API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def claude(server: Server) -> Iterator[anthropic.Anthropic]:
    with client_for(server) as client:
        yield client


def test_a_message_is_valid_and_says_what_it_used(claude: anthropic.Anthropic, anthropic_spec: Spec) -> None:
    raw = claude.messages.with_raw_response.create(
        model=SMALL, max_tokens=8, system="Answer briefly.", messages=HI, extra_body={"temperature": 0}
    )
    anthropic_spec.validate("Message", raw.http_response.json())
    assert raw.http_response.headers["request-id"] == raw.http_response.headers["x-request-id"]
    message = raw.parse()
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 0 and 0 < message.usage.output_tokens <= 8
    assert message.content and message.content[0].type == "text"


def test_stream_events_come_in_anthropics_order(server: Server, anthropic_spec: Spec) -> None:
    body = {"model": SMALL, "max_tokens": 12, "messages": HI, "stream": True, "temperature": 0}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    with (
        httpx.Client(base_url=server.base_url, timeout=120) as http,
        http.stream("POST", "/v1/messages", json=body, headers=headers) as response,
    ):
        assert response.status_code == 200
        events = typed_events(response)
    for name, payload in events:
        assert name == payload["type"]
        anthropic_spec.validate("PingEvent" if name == "ping" else "RawMessageStreamEvent", payload)
    kinds = [name for name, _ in events]
    assert kinds[:3] == ["message_start", "ping", "content_block_start"]
    assert set(kinds[3:-3]) == {"content_block_delta"}
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    usage = events[-2][1]["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 12


def test_the_sdk_stream_helper_gives_the_final_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model=SMALL, max_tokens=16, messages=HI, extra_body={"temperature": 0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_a_stop_sequence_that_ends_the_message_is_named(
    claude: anthropic.Anthropic, server: Server, anthropic_spec: Spec
) -> None:
    """As Anthropic answers: stop_reason "stop_sequence" and which one matched, in a message and in
    the stream's message_delta; the text stops before it."""
    stops = ["e", "o"]  # a greeting holds one of them within a few tokens
    raw = claude.messages.with_raw_response.create(
        model=SMALL, max_tokens=40, messages=HI, stop_sequences=stops, extra_body={"temperature": 0}
    )
    anthropic_spec.validate("Message", raw.http_response.json())
    message = raw.parse()
    assert message.stop_reason == "stop_sequence" and message.stop_sequence in stops
    text = message.content[0].text if message.content and message.content[0].type == "text" else ""
    assert message.stop_sequence not in text
    body = {"model": SMALL, "max_tokens": 40, "messages": HI, "stream": True, "temperature": 0}
    body["stop_sequences"] = stops
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    with (
        httpx.Client(base_url=server.base_url, timeout=120) as http,
        http.stream("POST", "/v1/messages", json=body, headers=headers) as response,
    ):
        events = typed_events(response)
    delta = next(payload for name, payload in events if name == "message_delta")
    anthropic_spec.validate("RawMessageStreamEvent", delta)
    assert delta["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": message.stop_sequence}


def test_a_forced_tool_use_and_its_result_round_trip(claude: anthropic.Anthropic) -> None:
    asked: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    message = claude.messages.create(
        model=SMALL,
        max_tokens=60,
        messages=asked,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        extra_body={"temperature": 0},
    )
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    reply = claude.messages.create(
        model=SMALL,
        max_tokens=30,
        tools=[WEATHER],
        messages=[
            *asked,
            {"role": "assistant", "content": [u.model_dump() for u in uses]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "21 C"}],
            },
        ],
    )
    assert reply.usage.input_tokens > message.usage.input_tokens
    with claude.messages.stream(
        model=SMALL, max_tokens=60, messages=asked, tools=[WEATHER], tool_choice={"type": "any"}
    ) as stream:
        final = stream.get_final_message()  # the SDK parses the input_json_delta pieces back together
    jsonschema.validate(next(b for b in final.content if b.type == "tool_use").input, WEATHER["input_schema"])


def test_output_config_format_holds_the_answer(claude: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    message = claude.messages.create(
        model=SMALL,
        max_tokens=40,
        messages=[{"role": "user", "content": "Name a colour."}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
        extra_body={"temperature": 0},  # sampled at 1.0, the string could run past max_tokens (seen once)
    )
    assert message.content[0].type == "text"
    jsonschema.validate(json.loads(message.content[0].text), schema)


def test_count_tokens_is_the_prompt_a_message_is_charged_for(
    claude: anthropic.Anthropic, anthropic_spec: Spec
) -> None:
    raw = claude.messages.with_raw_response.count_tokens(model=SMALL, system="Be brief.", messages=HI)
    anthropic_spec.validate("MessageTokensCount", raw.http_response.json())
    message = claude.messages.create(model=SMALL, max_tokens=4, system="Be brief.", messages=HI)
    assert raw.parse().input_tokens == message.usage.input_tokens  # the local engine counts exactly


def test_the_token_comes_in_either_header(server: Server) -> None:
    body = {"model": SMALL, "max_tokens": 2, "messages": HI}
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        bearer = http.post("/v1/messages", json=body, headers={"authorization": f"Bearer {API_KEY}"})
        keyed = http.post("/anthropic/v1/messages", json=body, headers={"x-api-key": API_KEY})
    assert bearer.status_code == keyed.status_code == 200


@pytest.mark.parametrize(
    ("headers", "body", "status", "kind"),
    [
        (
            {"x-api-key": "sk-wrong"},
            {"model": SMALL, "max_tokens": 4, "messages": HI},
            401,
            "authentication_error",
        ),
        ({}, {"model": SMALL, "messages": HI}, 400, "invalid_request_error"),
        ({}, {"model": "no-such-model", "max_tokens": 4, "messages": HI}, 404, "not_found_error"),
        (
            {},
            {
                "model": SMALL,
                "max_tokens": 4,
                "messages": HI,
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            400,
            "invalid_request_error",
        ),
        (
            {},
            {
                "model": SMALL,
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}],
            },
            400,
            "invalid_request_error",
        ),
    ],
)
def test_errors_are_in_anthropics_shape(
    server: Server,
    anthropic_spec: Spec,
    headers: dict[str, str],
    body: dict[str, Any],
    status: int,
    kind: str,
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        response = http.post("/v1/messages", json=body, headers={"x-api-key": API_KEY, **headers})
    assert response.status_code == status, response.text
    error = response.json()
    anthropic_spec.validate("ErrorResponse", error)
    assert error["error"]["type"] == kind
    assert error["request_id"] == response.headers["request-id"] == response.headers["x-request-id"]


def test_the_sdk_raises_its_own_errors(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=HI)
    assert caught.value.request_id and caught.value.request_id.startswith("req_")


def test_usage_is_in_the_ledger_under_its_api(server: Server) -> None:
    key = user_key(server, f"messages-{time.time_ns()}@example.com")
    with (
        httpx.Client(base_url=server.base_url, headers={"authorization": f"Bearer {key}"}) as http,
        client_for(server, key) as claude,
    ):
        message = claude.messages.create(model=SMALL, max_tokens=6, messages=HI)
        with claude.messages.stream(model=SMALL, max_tokens=6, messages=HI) as stream:
            streamed = stream.get_final_message()
        report = http.get("/v1/usage").json()
    apis = {a["api"]: a for a in report["apis"]}
    assert set(apis) == {"messages"} and apis["messages"]["requests"] == 2
    used = message.usage.input_tokens + streamed.usage.input_tokens
    assert apis["messages"]["prompt_tokens"] == used
    assert apis["messages"]["completion_tokens"] == message.usage.output_tokens + streamed.usage.output_tokens
    assert report["credits_used"] + report["credits_left"] == 1_000_000
