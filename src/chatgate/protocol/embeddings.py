"""The Embeddings API request and response (``POST /v1/embeddings``), field by field as the OpenAI spec names them."""

from typing import Literal

from pydantic import ConfigDict, Field

from chatgate.protocol.base import WireModel

MAX_ITEMS = 2048  # items in ``input``, as the spec allows


class EmbeddingRequest(WireModel):
    # Strict, as OpenAI is: "dimensions": "256" or "input": 5 is a 400, not converted.
    model_config = ConfigDict(strict=True)

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text, a list of texts, a list of token ids, or a list of lists of token ids."
    )
    model: str = Field(min_length=1)
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = Field(default=None, max_length=256)


class Embedding(WireModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # base64 of little-endian float32 when asked for


class EmbeddingUsage(WireModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(WireModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
