import json
from typing import Any

import pytest

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.local.provider import refuse_unsupported
from chatgate.providers.local.tools import CLOSE, OPEN, CallPiece, CallStream, plan

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def request(**extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], **extra}
    )


def collect(stream: CallStream, text: str, step: int) -> list[CallPiece]:
    pieces: list[CallPiece] = []
    for i in range(0, len(text), step):
        pieces.extend(stream.feed(text[i : i + step]))
    return pieces


def calls_of(pieces: list[CallPiece]) -> list[tuple[str, str]]:
    calls: list[list[str]] = []
    for piece in pieces:
        if piece.call_id is not None:
            calls.append([piece.name or "", ""])
        calls[piece.call_index][1] += piece.arguments
    return [(name, args) for name, args in calls]


@pytest.mark.parametrize("step", [1, 2, 5, 1000])
def test_calls_split_at_any_point_reassemble(step: int) -> None:
    text = (
        f'{OPEN}\n{{"name": "get_weather", "arguments": {{"city": "Paris {{x}}", "n": [1, {{"a": "\\"}}"}}]}}}}\n{CLOSE}'
        f'\n{OPEN}{{"name":"get_time","arguments":{{}}}}{CLOSE}'
    )
    pieces = collect(CallStream(start_between=True), text, step)
    calls = calls_of(pieces)
    assert [name for name, _ in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0][1]) == {"city": "Paris {x}", "n": [1, {"a": '"}'}]}
    assert json.loads(calls[1][1]) == {}
    assert all(p.call_id is None or p.call_id.startswith("call_") for p in pieces)


def test_no_call_means_no_pieces() -> None:
    assert list(CallStream(start_between=True).feed("just some text")) == []


def test_tool_choice_none_and_no_tools_mean_no_plan() -> None:
    assert plan(request(tool_choice="none")) is None
    assert (
        plan(
            ChatCompletionRequest.model_validate(
                {"model": "m", "messages": [{"role": "user", "content": "x"}]}
            )
        )
        is None
    )


def test_named_choice_must_be_declared() -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan(request(tool_choice={"type": "function", "function": {"name": "other"}}))
    assert caught.value.param == "tool_choice"


def test_plans() -> None:
    auto = plan(request())
    assert auto is not None and not auto.required and auto.parallel
    named = plan(request(tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert named is not None and named.required and named.forced_name == "get_weather" and not named.parallel
    single = plan(request(tool_choice="required", parallel_tool_calls=False))
    assert single is not None and single.required and not single.parallel
    assert single.grammar_from_start.startswith(f'root ::= "{OPEN}" tc-after')


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"audio": {"voice": "alloy", "format": "mp3"}}, "audio"),
        ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"store": True}, "store"),
    ],
)
def test_the_local_engine_refuses_what_it_cannot_honour(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(NotImplementedFeature) as caught:
        refuse_unsupported(request(**extra))
    assert caught.value.param == param
