"""Anthropic's Messages API (``POST /v1/messages``): the request, its content blocks, the message
answered, the stream events and the error shape, as Anthropic's API reference names them."""

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag

from chatgate.protocol.base import WireModel
from chatgate.protocol.requests import INT32_MAX


class AnthropicModel(WireModel):
    """Anthropic's SDKs send fields this gateway has no use for (``cache_control`` on any block,
    ``citations``...): they are accepted, as Anthropic's own API accepts them."""

    model_config = ConfigDict(extra="ignore")


# ---- content blocks ----------------------------------------------------------------------------


class TextBlock(AnthropicModel):
    type: Literal["text"]
    text: str


class Base64Source(AnthropicModel):
    type: Literal["base64"]
    media_type: str
    data: str


class URLSource(AnthropicModel):
    type: Literal["url"]
    url: str


class ImageBlock(AnthropicModel):
    type: Literal["image"]
    source: Annotated[Base64Source | URLSource, Field(discriminator="type")]


class ToolUseBlock(AnthropicModel):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(AnthropicModel):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] = ""
    is_error: bool | None = None


class ThinkingBlock(AnthropicModel):
    """A Claude model's earlier thinking, sent back in an assistant turn: not part of the prompt here."""

    type: Literal["thinking", "redacted_thinking"]


class OtherBlock(AnthropicModel):
    """A block this gateway cannot serve (``document``, ``search_result``, server tool results...):
    kept by its type so the refusal can name it."""

    type: str


def _block_kind(value: Any) -> str:
    """The block's tag; any type that is not a known one's, a string or not, is ``other`` (which
    refuses a type that is no string, naming it)."""
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return "other"
    if kind in ("thinking", "redacted_thinking"):
        return "thinking"
    return kind if kind in {"text", "image", "tool_use", "tool_result"} else "other"


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[OtherBlock, Tag("other")],
    Discriminator(_block_kind),
]


class MessageParam(AnthropicModel):
    # Claude Code sends "system" turns among the messages (a string or text blocks) too.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# ---- the request -------------------------------------------------------------------------------


class Tool(AnthropicModel):
    """A client tool; Anthropic's server tools (``web_search_20250305``...) carry another ``type``."""

    type: str | None = None
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(AnthropicModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(AnthropicModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None


class JsonOutputFormat(AnthropicModel):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(AnthropicModel):
    effort: str | None = None
    format: JsonOutputFormat | None = None


class Metadata(AnthropicModel):
    user_id: str | None = None


class CountTokensRequest(AnthropicModel):
    model: str = Field(min_length=1)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class CreateMessage(CountTokensRequest):
    max_tokens: int = Field(ge=1, le=INT32_MAX)
    stop_sequences: list[str] | None = None
    stream: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=INT32_MAX)
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    service_tier: str | None = None
    mcp_servers: list[dict[str, Any]] | None = None
    container: Any = None


# ---- the answer --------------------------------------------------------------------------------

StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal"]


class TextContent(WireModel):
    nullable = frozenset({"citations"})

    type: Literal["text"] = "text"
    text: str
    citations: list[dict[str, Any]] | None = None


class ToolUseContent(WireModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class Usage(WireModel):
    nullable = frozenset({"cache_creation_input_tokens", "cache_read_input_tokens", "service_tier"})

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = 0
    cache_read_input_tokens: int | None = 0
    service_tier: Literal["standard"] | None = "standard"


class Message(WireModel):
    nullable = frozenset({"stop_reason", "stop_sequence"})

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextContent | ToolUseContent]
    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage


class TokenCount(WireModel):
    input_tokens: int


# ---- stream events -----------------------------------------------------------------------------


class MessageEvent(WireModel):
    """One server-sent event of a streamed message: ``event: <type>`` then its JSON."""

    model_config = ConfigDict(extra="allow")

    type: str


# ---- errors ------------------------------------------------------------------------------------


class ErrorDetail(WireModel):
    type: str
    message: str


class AnthropicError(WireModel):
    """``{"type": "error", "error": {...}, "request_id": ...}``, as Anthropic answers a failure."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None
