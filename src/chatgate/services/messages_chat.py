"""Anthropic's Messages API as Chat Completions: a request's blocks become chat messages, and a
chat completion (whole, or its chunks) becomes a Message (or its stream events).

A translated request runs on the chat service's metered path, so it costs what the same chat
request costs.
"""

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.messages import (
    AssistantMessage,
    ChatMessage,
    FunctionCall,
    ImagePart,
    ImageURL,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from chatgate.protocol.messages_api import (
    Base64Source,
    CountTokensRequest,
    CreateMessage,
    ImageBlock,
    Message,
    MessageEvent,
    MessageParam,
    OtherBlock,
    StopReason,
    TextBlock,
    TextContent,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
    ToolUseContent,
    Usage,
)
from chatgate.protocol.requests import (
    ChatCompletionRequest,
    FunctionDefinition,
    FunctionTool,
    JsonSchemaFormat,
    JsonSchemaResponseFormat,
    NamedFunction,
    NamedToolChoice,
    StreamOptions,
)
from chatgate.protocol.responses import ChatCompletion, ChatCompletionChunk, FinishReason

MAX_STOPS = 4  # what Chat Completions takes


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _image(block: ImageBlock) -> ImagePart:
    source = block.source
    url = f"data:{source.media_type};base64,{source.data}" if isinstance(source, Base64Source) else source.url
    return ImagePart(type="image_url", image_url=ImageURL(url=url))


def _tool_result(block: ToolResultBlock) -> tuple[ToolMessage, list[ImagePart]]:
    """A tool's result as a tool message; its images follow in a user message (a tool message is text)."""
    images: list[ImagePart] = []
    if isinstance(block.content, str):
        text = block.content
    else:
        texts = []
        for part in block.content:
            if isinstance(part, TextBlock):
                texts.append(part.text)
            else:
                images.append(_image(part))
        text = "\n".join(texts)
    if block.is_error:
        text = f"Error: {text}" if text else "Error"
    return ToolMessage(role="tool", content=text, tool_call_id=block.tool_use_id), images


def _refuse_block(block: OtherBlock, param: str) -> NotImplementedFeature:
    return NotImplementedFeature(
        f"'{block.type}' content blocks are not supported here.", param=f"{param}.type"
    )


def _user(message: MessageParam, param: str) -> list[ChatMessage]:
    if isinstance(message.content, str):
        return [UserMessage(role="user", content=message.content)]
    if not message.content:  # as Anthropic's API refuses it (found by the fuzzer: it was a 500)
        raise InvalidRequest("A user message's content must not be empty.", param=f"{param}.content")
    results: list[ChatMessage] = []
    parts: list[TextPart | ImagePart] = []
    for j, block in enumerate(message.content):
        where = f"{param}.content[{j}]"
        if isinstance(block, TextBlock):
            parts.append(TextPart(type="text", text=block.text))
        elif isinstance(block, ImageBlock):
            parts.append(_image(block))
        elif isinstance(block, ToolResultBlock):
            result, images = _tool_result(block)
            results.append(result)
            parts += images
        elif isinstance(block, OtherBlock):
            raise _refuse_block(block, where)
        else:
            raise InvalidRequest(f"A user message cannot hold '{block.type}' blocks.", param=f"{where}.type")
    # Tool results answer the assistant's calls just before: they come first, then the user's words.
    return [*results, UserMessage(role="user", content=parts)] if parts else results


def _assistant(message: MessageParam, param: str) -> AssistantMessage:
    if isinstance(message.content, str):
        return AssistantMessage(role="assistant", content=message.content)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(message.content):
        where = f"{param}.content[{j}]"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append(ToolCall(id=block.id, function=FunctionCall(name=block.name, arguments=arguments)))
        elif isinstance(block, ThinkingBlock):
            continue  # a Claude model's thinking: nothing another model can read back
        elif isinstance(block, OtherBlock):
            raise _refuse_block(block, where)
        else:
            raise InvalidRequest(
                f"An assistant message cannot hold '{block.type}' blocks.", param=f"{where}.type"
            )
    return AssistantMessage(role="assistant", content="".join(texts) or None, tool_calls=calls or None)


def _system_text(message: MessageParam, param: str) -> str:
    if isinstance(message.content, str):
        return message.content
    texts: list[str] = []
    for j, block in enumerate(message.content):
        if not isinstance(block, TextBlock):
            raise InvalidRequest("A system turn holds text only.", param=f"{param}.content[{j}].type")
        texts.append(block.text)
    return "\n\n".join(texts)


def chat_messages(request: CountTokensRequest) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    system = request.system
    if system:
        text = system if isinstance(system, str) else "\n\n".join(block.text for block in system)
        messages.append(SystemMessage(role="system", content=text))
    for i, message in enumerate(request.messages):
        where = f"messages[{i}]"
        if message.role == "user":
            messages += _user(message, where)
        elif message.role == "assistant":
            messages.append(_assistant(message, where))
        else:
            messages.append(SystemMessage(role="system", content=_system_text(message, where)))
    return messages


def _tools(request: CountTokensRequest) -> list[FunctionTool]:
    tools: list[FunctionTool] = []
    for i, tool in enumerate(request.tools or []):
        if tool.type not in (None, "custom"):
            raise NotImplementedFeature(
                f"Anthropic's server tool '{tool.type}' is not available here; client tools are.",
                param=f"tools[{i}].type",
            )
        try:
            definition = FunctionDefinition(
                name=tool.name, description=tool.description, parameters=tool.input_schema
            )
        except ValueError as exc:
            raise InvalidRequest(
                "Tool names here are 1 to 64 letters, digits, '_' or '-'.", param=f"tools[{i}].name"
            ) from exc
        tools.append(FunctionTool(type="function", function=definition))
    return tools


def to_chat(request: CreateMessage, *, stream: bool) -> ChatCompletionRequest:
    if request.mcp_servers:
        raise NotImplementedFeature("MCP servers are not supported here.", param="mcp_servers")
    if request.container is not None:
        raise NotImplementedFeature("Containers are not supported here.", param="container")
    stops = request.stop_sequences or []
    if len(stops) > MAX_STOPS:
        raise InvalidRequest(
            f"At most {MAX_STOPS} stop sequences are supported here.", param="stop_sequences"
        )
    if any(stop == "" for stop in stops):
        raise InvalidRequest("Stop sequences must not be empty.", param="stop_sequences")
    tools = _tools(request)
    choice = request.tool_choice
    tool_choice: Any = None
    parallel: bool | None = None
    if tools and choice is not None:
        named = NamedToolChoice(type="function", function=NamedFunction(name=choice.name or ""))
        tool_choice = {"auto": "auto", "any": "required", "none": "none", "tool": named}[choice.type]
        if choice.type == "tool" and not choice.name:
            raise InvalidRequest("tool_choice of type 'tool' names the tool.", param="tool_choice.name")
        parallel = False if choice.disable_parallel_tool_use else None
    fmt = request.output_config.format if request.output_config is not None else None
    response_format = (
        JsonSchemaResponseFormat(
            type="json_schema",
            json_schema=JsonSchemaFormat.model_validate({"name": "output", "schema": fmt.schema_}),
        )
        if fmt is not None
        else None
    )
    return ChatCompletionRequest(
        model=request.model,
        messages=chat_messages(request),
        max_tokens=request.max_tokens,
        response_format=response_format,
        stop=stops or None,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        tools=tools or None,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        user=request.metadata.user_id if request.metadata is not None else None,
        stream=stream,
        stream_options=StreamOptions(include_usage=True) if stream else None,
    )


def count_request(request: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request whose prompt is the one to count (``max_tokens`` 1: nothing is generated)."""
    tools = _tools(request)
    return ChatCompletionRequest(
        model=request.model, messages=chat_messages(request), max_tokens=1, tools=tools or None
    )


# ---- answer -------------------------------------------------------------------------------------

STOP_REASONS: dict[FinishReason, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(reason: FinishReason | None, called: bool, stop_sequence: str | None = None) -> StopReason:
    if called:
        return "tool_use"  # a forced named call finishes with "stop" in Chat Completions
    if stop_sequence is not None and reason in (None, "stop"):
        return "stop_sequence"  # the engine knows which of the caller's stop sequences matched
    return STOP_REASONS.get(reason or "stop", "end_turn")


def matched_stop(reason: StopReason, stop_sequence: str | None) -> str | None:
    """The ``stop_sequence`` field: the one that matched, only when that is why the message ended.
    (An upstream's chat answer does not say which stop matched: it ends as ``end_turn``.)"""
    return stop_sequence if reason == "stop_sequence" else None


def arguments_json(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object tool_use carries; a model's malformed arguments are kept
    whole under ``_raw`` rather than dropped."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"_value": value}


def from_completion(completion: ChatCompletion) -> Message:
    choice = completion.choices[0]
    message = choice.message
    content: list[TextContent | ToolUseContent] = []
    text = (message.content or "") + (message.refusal or "")
    if text:
        content.append(TextContent(text=text))
    for call in message.tool_calls or []:
        content.append(
            ToolUseContent(id=call.id, name=call.function.name, input=arguments_json(call.function.arguments))
        )
    usage = completion.usage
    ended = stop_reason(choice.finish_reason, bool(message.tool_calls), choice._stop_sequence)
    return Message(
        id=new_message_id(),
        model=completion.model,
        content=content,
        stop_reason=ended,
        stop_sequence=matched_stop(ended, choice._stop_sequence),
        usage=Usage(
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        ),
    )


@dataclass
class MessageEvents:
    """Turns chat chunks into Anthropic's stream events: one content block at a time."""

    message_id: str
    model: str
    index: int = -1  # the open block's index
    kind: str | None = None  # the open block's type: "text" or "tool_use"
    calls: dict[int, int] = field(default_factory=dict)  # a chat call's index -> its block
    called: bool = False
    reason: FinishReason | None = None
    stop_sequence: str | None = None
    usage: tuple[int, int] = (0, 0)

    @staticmethod
    def event(kind: str, **fields: Any) -> MessageEvent:
        return MessageEvent(type=kind, **fields)

    def start(self) -> list[MessageEvent]:
        message = Message(
            id=self.message_id,
            model=self.model,
            content=[],
            stop_reason=None,
            usage=Usage(input_tokens=0, output_tokens=0),
        )
        return [self.event("message_start", message=message.model_dump(mode="json")), self.event("ping")]

    def _close(self) -> list[MessageEvent]:
        if self.kind is None:
            return []
        self.kind = None
        return [self.event("content_block_stop", index=self.index)]

    def _open(self, block: dict[str, Any]) -> list[MessageEvent]:
        events = self._close()
        self.index += 1
        self.kind = block["type"]
        events.append(self.event("content_block_start", index=self.index, content_block=block))
        return events

    def chunk(self, chunk: ChatCompletionChunk) -> list[MessageEvent]:
        events: list[MessageEvent] = []
        if chunk.usage is not None:
            self.usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        for choice in chunk.choices:
            delta = choice.delta
            text = (delta.content or "") + (delta.refusal or "")
            if text:
                if self.kind != "text":
                    events += self._open({"type": "text", "text": ""})
                events.append(
                    self.event(
                        "content_block_delta", index=self.index, delta={"type": "text_delta", "text": text}
                    )
                )
            for piece in delta.tool_calls or []:
                if piece.index not in self.calls:
                    self.called = True
                    name = (piece.function.name if piece.function else None) or ""
                    block = {
                        "type": "tool_use",
                        "id": piece.id or "toolu_" + uuid.uuid4().hex,
                        "name": name,
                        "input": {},
                    }
                    events += self._open(block)
                    self.calls[piece.index] = self.index
                arguments = piece.function.arguments if piece.function else None
                if arguments:
                    events.append(
                        self.event(
                            "content_block_delta",
                            index=self.calls[piece.index],
                            delta={"type": "input_json_delta", "partial_json": arguments},
                        )
                    )
            if choice.finish_reason is not None:
                self.reason, self.stop_sequence = choice.finish_reason, choice._stop_sequence
        return events

    def finish(self) -> list[MessageEvent]:
        prompt, completion = self.usage
        ended = stop_reason(self.reason, self.called, self.stop_sequence)
        return [
            *self._close(),
            self.event(
                "message_delta",
                delta={"stop_reason": ended, "stop_sequence": matched_stop(ended, self.stop_sequence)},
                usage={"input_tokens": prompt, "output_tokens": completion},
            ),
            self.event("message_stop"),
        ]
