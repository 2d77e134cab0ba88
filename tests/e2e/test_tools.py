"""Function calling on the local engine through the official client: forced, named, auto, streamed, round trips."""

import json
from typing import Any

import jsonschema
import openai
import pytest

from tests.e2e.conftest import QWEN, SMALL, Spec

WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": WEATHER_PARAMS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Current local time in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
]
PARIS: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]


def assert_valid_calls(calls: list[Any]) -> None:
    assert calls
    declared = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), declared[call.function.name])
    assert len({c.id for c in calls}) == len(calls)


@pytest.mark.parametrize("model", [SMALL, QWEN])
def test_required_tool_call_always_parses_and_matches(client: openai.OpenAI, spec: Spec, model: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=PARIS, tools=TOOLS, tool_choice="required", max_tokens=80, temperature=0
    )
    spec.validate("CreateChatCompletionResponse", raw.http_response.json())
    choice = raw.parse().choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls or [])


def test_named_function_is_called_and_finishes_with_stop(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=SMALL,
        messages=PARIS,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        temperature=0.7,
        seed=3,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "stop"  # as OpenAI does for a forced named function
    calls = choice.message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    assert_valid_calls(calls)


def test_auto_lets_the_model_call_a_tool(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=QWEN, messages=PARIS, tools=TOOLS, max_tokens=80, temperature=0
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert_valid_calls(choice.message.tool_calls or [])
    assert choice.message.tool_calls and choice.message.tool_calls[0].function.name == "get_weather"


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=SMALL, messages=PARIS, tools=TOOLS, tool_choice="none", max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.tool_calls is None
    assert answer.choices[0].message.content


def test_parallel_calls_stream_through_the_sdk_helper(client: openai.OpenAI, spec: Spec) -> None:
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris and in Rome?"}]
    with client.chat.completions.stream(
        model=QWEN, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    for event in events:
        if event.type == "chunk":
            spec.validate(
                "CreateChatCompletionStreamResponse", event.chunk.model_dump(mode="json", exclude_unset=True)
            )
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 2
    assert_valid_calls(calls)
    assert {json.loads(c.function.arguments)["city"] for c in calls} == {"Paris", "Rome"}
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert [e.index for e in done] == [0, 1]
    assert [json.loads(e.arguments) for e in done] == [json.loads(c.function.arguments) for c in calls]


def test_parallel_tool_calls_false_allows_one_call(client: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris and in Rome?"}]
    answer = client.chat.completions.create(
        model=QWEN,
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0,
    )
    assert len(answer.choices[0].message.tool_calls or []) == 1


def test_two_step_round_trip(client: openai.OpenAI) -> None:
    messages: list[Any] = list(PARIS)
    first = client.chat.completions.create(
        model=QWEN, messages=messages, tools=TOOLS[:1], tool_choice="required", max_tokens=80, temperature=0
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees Celsius."})
    second = client.chat.completions.create(
        model=QWEN, messages=messages, tools=TOOLS[:1], tool_choice="none", max_tokens=60, temperature=0
    )
    assert second.choices[0].finish_reason == "stop"
    assert "21" in (second.choices[0].message.content or "")
