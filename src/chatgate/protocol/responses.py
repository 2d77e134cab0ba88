"""Chat Completions responses: the whole answer and the stream chunks."""

from typing import Literal

from chatgate.protocol.base import WireModel

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(WireModel):
    nullable = frozenset({"content", "refusal"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class Choice(WireModel):
    nullable = frozenset({"logprobs"})

    index: int
    message: ResponseMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage | None = None


class Delta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(WireModel):
    nullable = frozenset({"finish_reason", "logprobs"})

    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None
