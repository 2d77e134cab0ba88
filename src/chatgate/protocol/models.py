"""The model list: ``GET /v1/models`` and ``GET /v1/models/{id}``."""

from typing import Literal

from chatgate.protocol.base import WireModel


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # chatgate's addition: what the model is called through. "chat" models answer the chat
    # completions (and the APIs built on them); "embedding" models answer /v1/embeddings only.
    type: Literal["chat", "embedding"] = "chat"


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[Model]
