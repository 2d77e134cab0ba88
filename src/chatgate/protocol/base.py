"""The base of every wire model: strict on input, compact on output."""

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

_NULL = {"type": "null"}

# The range of the integers the database keeps (row ids, offsets): a value past it is refused,
# not passed on to fail there.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


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

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The JSON schema of what is sent, as precise as what is received.

        The serializer above would otherwise make every model's output schema a bare ``object``.
        Output is described field by field instead: a field ``None`` by default and not ``nullable``
        is left out when ``None`` (optional, never ``null``); every other field is always there.
        """
        if handler.mode != "serialization":
            return handler(core_schema)
        fields_only: Any = {k: v for k, v in core_schema.items() if k != "serialization"}
        schema = handler.resolve_ref_schema(handler(fields_only))
        properties: dict[str, Any] = schema.get("properties", {})
        required: list[str] = list(schema.get("required", []))
        for name, field in cls.model_fields.items():
            key = field.alias or name
            prop = properties.get(key)
            if prop is None or key in required:
                continue
            if field.default is None and name not in cls.nullable:
                _never_null(prop)
            elif name in cls.nullable or not _admits_null(prop):
                required.append(key)
        if required:
            schema["required"] = required
        return schema


def _admits_null(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or _NULL in prop.get("anyOf", [])


def _never_null(prop: dict[str, Any]) -> None:
    """A property that is left out rather than sent as ``null``."""
    prop.pop("default", None)
    branches = [b for b in prop.get("anyOf", []) if b != _NULL]
    if "anyOf" in prop and len(branches) == 1:
        del prop["anyOf"]
        prop.update(branches[0])
    elif "anyOf" in prop:
        prop["anyOf"] = branches
