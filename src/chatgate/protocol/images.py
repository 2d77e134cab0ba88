"""The Images API request and response (``POST /v1/images/generations``)."""

from typing import Any, Literal

from pydantic import ConfigDict, Field

from chatgate.protocol.base import WireModel


class ImageGenerationRequest(WireModel):
    # Types are strict, as in a chat request (api/body.py): "n": "2" or "n": true is a 400.
    model_config = ConfigDict(strict=True)

    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=4)
    size: str | None = None
    response_format: Literal["url", "b64_json"] | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    output_format: Literal["png"] | None = None
    output_compression: int | None = None
    moderation: str | None = None
    partial_images: Any = None
    stream: bool | None = None
    user: str | None = None


class ImageData(WireModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(WireModel):
    created: int
    data: list[ImageData]
