"""The base of every wire model: strict on input, compact on output."""

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer


class WireModel(BaseModel):
    """A model sent or received over the OpenAI wire.

    Output drops fields that are ``None`` unless the OpenAI schema requires them to be present
    as ``null``; those are named in ``nullable``.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    nullable: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None or k in self.nullable}
