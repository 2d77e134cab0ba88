"""The Responses and Messages APIs over ChatService with a scripted provider: event order, usage
rows under each API, requests translated to chat, and unread streams settled."""

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from chatgate.api.body import parse
from chatgate.errors import InsufficientQuota, InvalidRequest, NotImplementedFeature
from chatgate.protocol.messages import AssistantMessage, ToolMessage, UserMessage
from chatgate.protocol.messages_api import CountTokensRequest, CreateMessage
from chatgate.protocol.responses_api import CreateResponse
from chatgate.providers.base import Accepted, Finished, ProviderEvent, TextDelta, ToolCallDelta
from chatgate.services import messages_chat, responses_chat
from chatgate.services.auth import Principal
from chatgate.services.chat import Caller, ChatService
from chatgate.services.messages import MessagesService
from chatgate.services.responses import ResponsesService
from chatgate.services.stored_responses import ResponseStore
from chatgate.storage.database import Database
from chatgate.storage.usage import UsageRow
from tests.unit.fakes import CountingLimiter, FakeStore, Refusals, ScriptedProvider
from tests.unit.services.test_chat import CALLER, service

DATA = Path(__file__).resolve().parents[2] / "data"
SCRIPT: list[ProviderEvent | Exception] = [
    Accepted(5),
    TextDelta("Let me", tokens=1),
    TextDelta(" look.", tokens=1),
    ToolCallDelta(0, "", call_id="call_1", name="get_weather", tokens=1),
    ToolCallDelta(0, '{"city": ', tokens=1),
    ToolCallDelta(0, '"Paris"}', tokens=1),
    Finished("tool_calls", 5, 5),
]
TOOL: dict[str, Any] = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def validator(path: Path, definition: str) -> jsonschema.Draft202012Validator:
    document = json.loads(path.read_text())
    return jsonschema.Draft202012Validator({**document, "$ref": f"#/$defs/{definition}"})


UNUSED_DB = Database("sqlite+aiosqlite:///:memory:")  # never connected to: the tests store nothing


def responses_service(provider: ScriptedProvider) -> tuple[ResponsesService, ChatService]:
    chat = service(provider)
    return ResponsesService(chat, ResponseStore(UNUSED_DB, retention_seconds=60)), chat


def usage_rows(chat: ChatService) -> list[UsageRow]:
    store = chat.metering._store
    assert isinstance(store, FakeStore)
    return store.usage


async def test_a_responses_stream_is_in_the_specs_order_and_logged_under_its_api() -> None:
    responses, chat = responses_service(ScriptedProvider(SCRIPT))
    request = CreateResponse.model_validate(
        {"model": "alias", "input": "Weather?", "tools": [TOOL], "stream": True, "store": False}
    )
    events, _ = await responses.stream(CALLER, request)
    payloads = [json.loads(e.model_dump_json()) async for e in events]
    check = validator(DATA / "openai-spec" / "responses_schemas.json", "ResponseStreamEvent")
    for payload in payloads:
        check.validate(payload)
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = payloads[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert final["output"][1]["arguments"] == '{"city": "Paris"}'
    assert final["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 10,
    }
    assert [(row.api, row.status) for row in usage_rows(chat)] == [("responses", "ok")]


async def test_a_whole_response_holds_the_message_then_the_call() -> None:
    responses, _ = responses_service(ScriptedProvider(SCRIPT))
    request = CreateResponse.model_validate(
        {"model": "alias", "input": "Weather?", "tools": [TOOL], "store": False}
    )
    response, _ = await responses.create(CALLER, request)
    validator(DATA / "openai-spec" / "responses_schemas.json", "Response").validate(
        json.loads(response.model_dump_json(by_alias=True))
    )
    assert response.status == "completed" and response.model == "m"
    assert [item.type for item in response.output] == ["message", "function_call"]


async def test_an_unread_stream_is_settled_and_its_engine_released() -> None:
    provider = ScriptedProvider(SCRIPT)
    responses, chat = responses_service(provider)
    request = CreateResponse.model_validate({"model": "alias", "input": "hi", "stream": True, "store": False})
    events, _ = await responses.stream(CALLER, request)
    await events.aclose()  # type: ignore[attr-defined]
    assert provider.closed
    assert [(row.api, row.status) for row in usage_rows(chat)] == [("responses", "cancelled")]


async def test_a_messages_stream_is_in_anthropics_order() -> None:
    chat = service(ScriptedProvider(SCRIPT))
    request = CreateMessage.model_validate(
        {
            "model": "alias",
            "max_tokens": 16,
            "stream": True,
            "messages": [{"role": "user", "content": "Weather?"}],
        }
    )
    events, _ = await MessagesService(chat).stream(CALLER, request)
    payloads = [json.loads(e.model_dump_json()) async for e in events]
    shapes = DATA / "anthropic-spec" / "messages_schemas.json"
    for payload in payloads:
        validator(shapes, "PingEvent" if payload["type"] == "ping" else "RawMessageStreamEvent").validate(
            payload
        )
    assert [p["type"] for p in payloads] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert payloads[6]["content_block"] == {
        "type": "tool_use",
        "id": "call_1",
        "name": "get_weather",
        "input": {},
    }
    assert "".join(p["delta"].get("partial_json", "") for p in payloads[7:9]) == '{"city": "Paris"}'
    assert payloads[-2]["delta"]["stop_reason"] == "tool_use"
    assert payloads[-2]["usage"] == {"input_tokens": 5, "output_tokens": 5}
    assert [(row.api, row.status) for row in usage_rows(chat)] == [("messages", "ok")]


async def test_a_whole_message_has_its_tool_use_input_as_an_object() -> None:
    request = CreateMessage.model_validate(
        {"model": "alias", "max_tokens": 16, "messages": [{"role": "user", "content": "Weather?"}]}
    )
    message, _ = await MessagesService(service(ScriptedProvider(SCRIPT))).create(CALLER, request)
    validator(DATA / "anthropic-spec" / "messages_schemas.json", "Message").validate(
        json.loads(message.model_dump_json())
    )
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 5


def test_responses_items_become_chat_messages() -> None:
    request = CreateResponse.model_validate(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "user", "content": "Weather?"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": "Looking."}],
                },
                {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "21 C"},
            ],
        }
    )
    chat = responses_chat.to_chat(request, list(request.input), stream=False)  # type: ignore[arg-type]
    roles = [m.role for m in chat.messages]
    assert roles == ["system", "user", "assistant", "tool"]  # the call joined the assistant's message
    assistant = chat.messages[2]
    assert isinstance(assistant, AssistantMessage) and assistant.tool_calls
    assert assistant.tool_calls[0].id == "c1"
    assert chat.native is not None and chat.native["store"] is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0]"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input[0].content[0].file_id",
        ),
        ({"input": "x", "tools": [{"type": "file_search"}]}, "tools[0].type"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
    ],
)
def test_what_no_deployment_can_do_is_refused_by_name(body: dict[str, Any], param: str) -> None:
    request = CreateResponse.model_validate({"model": "m", **body})
    items = [request.input] if isinstance(request.input, str) else list(request.input)
    with pytest.raises(NotImplementedFeature) as caught:
        responses_chat.to_chat(request, items, stream=False)  # type: ignore[arg-type]
    assert caught.value.param == param


def test_anthropic_blocks_become_chat_messages_with_results_first() -> None:
    request = CreateMessage.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "system": [{"type": "text", "text": "Be brief."}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "Weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hm", "signature": "s"},
                        {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "t1", "content": "21 C", "is_error": False},
                        {"type": "text", "text": "And tomorrow?", "cache_control": {"type": "ephemeral"}},
                    ],
                },
            ],
        }
    )
    chat = messages_chat.to_chat(request, stream=False)
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assert isinstance(chat.messages[3], ToolMessage) and chat.messages[3].tool_call_id == "t1"
    assert isinstance(chat.messages[4], UserMessage)
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    assert chat.max_tokens == 5


@pytest.mark.parametrize(
    ("extra", "param", "error"),
    [
        (
            {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
            "tools[0].type",
            NotImplementedFeature,
        ),
        ({"tools": [{"name": "has space"}]}, "tools[0].name", InvalidRequest),
        ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences", InvalidRequest),
        ({"mcp_servers": [{"url": "x"}]}, "mcp_servers", NotImplementedFeature),
        # Found by the fuzzer (each was a 500): a user turn without blocks, and a block whose type
        # is no string.
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", InvalidRequest),
        (
            {"messages": [{"role": "user", "content": [{"type": {}}]}]},
            "messages[0].content[0].type",
            InvalidRequest,
        ),
    ],
)
def test_anthropic_features_no_deployment_has_are_refused_by_name(
    extra: dict[str, Any], param: str, error: type[Exception]
) -> None:
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **extra}
    with pytest.raises(error) as caught:
        messages_chat.to_chat(parse(CreateMessage, json.dumps(body).encode()), stream=False)
    assert getattr(caught.value, "param", None) == param


def test_images_are_image_parts_in_both_apis() -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    responses = CreateResponse.model_validate(
        {
            "model": "m",
            "input": [
                {"role": "user", "content": [{"type": "input_image", "image_url": url, "detail": "low"}]}
            ],
        }
    )
    chat = responses_chat.to_chat(responses, list(responses.input), stream=False)  # type: ignore[arg-type]
    (part,) = chat.messages[0].content  # type: ignore[union-attr]
    assert part.type == "image_url" and part.image_url.url == url and part.image_url.detail == "low"  # type: ignore[union-attr]
    assert chat.native is None  # the gateway checks and inlines images: no relay as is
    message = CreateMessage.model_validate(
        {
            "model": "m",
            "max_tokens": 5,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                        }
                    ],
                }
            ],
        }
    )
    (part,) = messages_chat.to_chat(message, stream=False).messages[0].content  # type: ignore[union-attr]
    assert part.image_url.url == url  # type: ignore[union-attr]


def test_a_claude_code_request_is_read_and_translated() -> None:
    """The shape of Claude Code 2.1's requests (recorded; the prose here is ours): a system turn among
    the messages, adaptive thinking, effort, context management, cache marks, a JSON user id."""
    request = CreateMessage.model_validate_json(
        json.dumps(
            {
                "model": "claude-opus-4-8",
                "max_tokens": 64000,
                "stream": True,
                "system": [
                    {
                        "type": "text",
                        "text": "You are a coding agent.",
                        "cache_control": {"type": "ephemeral"},
                    }
                ],
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Say hi", "cache_control": {"type": "ephemeral"}}
                        ],
                    },
                    {"role": "system", "content": "Agents you can start: general."},
                ],
                "tools": [
                    {"name": "Bash", "description": "Runs a command.", "input_schema": {"type": "object"}}
                ],
                "metadata": {"user_id": '{"device_id": "d", "session_id": "s"}'},
                "thinking": {"type": "adaptive"},
                "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                "output_config": {"effort": "high"},
            }
        ),
        strict=True,
    )
    chat = messages_chat.to_chat(request, stream=True)
    assert [m.role for m in chat.messages] == ["system", "user", "system"]
    assert chat.tools is not None and chat.tools[0].function.name == "Bash"
    assert chat.max_tokens == 64000 and chat.response_format is None


class UnwritableStore(ResponseStore):
    async def save(self, *args: Any, **kwargs: Any) -> None:
        raise OSError("the database is gone")


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_paid_for_is_given_even_when_it_cannot_be_kept(stream: bool) -> None:
    chat = service(ScriptedProvider(SCRIPT))
    responses = ResponsesService(chat, UnwritableStore(UNUSED_DB, retention_seconds=60))
    request = CreateResponse.model_validate({"model": "alias", "input": "hi", "stream": stream})
    if stream:
        events, _ = await responses.stream(CALLER, request)
        final = [e async for e in events][-1]
        assert final.type == "response.completed" and final.response["store"] is False  # type: ignore[attr-defined]
    else:
        response, _ = await responses.create(CALLER, request)
        assert response.status == "completed" and response.store is False
    assert [row.status for row in usage_rows(chat)] == ["ok"]


async def test_counting_tokens_runs_nothing_reserves_nothing_and_counts_against_the_rate() -> None:
    provider = ScriptedProvider(SCRIPT)
    chat = service(provider)
    request = CountTokensRequest.model_validate(
        {"model": "alias", "messages": [{"role": "user", "content": "How many?"}]}
    )
    count, _ = await MessagesService(chat).count_tokens(CALLER, request)
    assert count.input_tokens == provider.bound.prompt_tokens  # a provider that cannot count: its bound
    assert provider.ran == 0 and usage_rows(chat) == []
    limiter = chat.metering._limiter
    assert isinstance(limiter, CountingLimiter) and limiter.admitted == 1


@pytest.mark.parametrize(("kind", "api"), [(ResponsesService, "responses"), (MessagesService, "messages")])
def test_a_token_with_nothing_left_is_refused_unread_under_its_api(kind: type, api: str) -> None:
    chat = service(ScriptedProvider(SCRIPT))
    translated = (
        kind(chat, ResponseStore(UNUSED_DB, retention_seconds=60)) if api == "responses" else kind(chat)
    )
    broke = Caller(Principal(user_id=1, token_id=None, credits_left=0), "req_broke")
    with pytest.raises(InsufficientQuota):
        translated.check_credits(broke)
    refusals = chat.metering._refusals
    assert isinstance(refusals, Refusals)
    assert [(row.model, row.api) for row in refusals.rows] == [("", api)]
