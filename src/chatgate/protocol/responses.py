"""Chat Completions responses: the whole answer and the stream chunks."""

from typing import Literal

from chatgate.protocol.base import WireModel
from chatgate.protocol.messages import ToolCall  # a reply's calls are shaped as a request's

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(WireModel):
    nullable = frozenset({"bytes"})

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(WireModel):
    nullable = frozenset({"bytes"})

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(WireModel):
    nullable = frozenset({"content", "refusal"})

    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class UrlCitation(WireModel):
    """A cited web page; ``content[start_index:end_index]`` is the text that cites it."""

    end_index: int
    start_index: int
    url: str
    title: str


class Annotation(WireModel):
    type: Literal["url_citation"] = "url_citation"
    url_citation: UrlCitation


class ResponseMessage(WireModel):
    nullable = frozenset({"content", "refusal"})

    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    annotations: list[Annotation] | None = None


class Choice(WireModel):
    nullable = frozenset({"logprobs"})

    index: int
    message: ResponseMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason
    # Not on the wire (Chat Completions has no such field): which of the caller's stop sequences
    # ended the choice, for the APIs that report it (Anthropic's Messages: stop_sequence).
    _stop_sequence: str | None = None


class ChatCompletion(WireModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]
    usage: Usage | None = None


class FunctionCallDelta(WireModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(WireModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta | None = None


class Delta(WireModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChunkChoice(WireModel):
    nullable = frozenset({"finish_reason", "logprobs"})

    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None
    _stop_sequence: str | None = None  # not on the wire: see Choice


class ChatCompletionChunk(WireModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChunkChoice]
    usage: Usage | None = None
