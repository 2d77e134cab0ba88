"""The model list: ``GET /v1/models`` and ``GET /v1/models/{id}``."""

from typing import Literal

from chatgate.protocol.base import WireModel


class Model(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[Model]
