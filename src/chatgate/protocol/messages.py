"""Chat messages and their content parts, as a request carries them."""

from typing import Annotated, Any, Literal

from pydantic import Field

from chatgate.protocol.base import WireModel


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ImageURL(WireModel):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(WireModel):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(WireModel):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(WireModel):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FileRef(WireModel):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(WireModel):
    type: Literal["file"]
    file: FileRef


class FileURL(WireModel):
    url: str


class FileURLPart(WireModel):
    """An image (or other file) by URL, as the drawing model takes its input images."""

    type: Literal["file_url"]
    file_url: FileURL


class RefusalPart(WireModel):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | FileURLPart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(WireModel):
    name: str
    arguments: str


class ToolCall(WireModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(WireModel):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(WireModel):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(WireModel):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class AssistantMessage(WireModel):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: dict[str, Any] | None = None


class ToolMessage(WireModel):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(WireModel):
    role: Literal["function"]
    content: str | None
    name: str


ChatMessage = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


def text_of(message: ChatMessage) -> str:
    """The message's text: a string content as is, text parts joined (other parts are not text)."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))
