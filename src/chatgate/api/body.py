"""Request bodies read straight from their bytes into a protocol model, with FastAPI's errors.

A body is JSON whatever its Content-Type says (``curl -d`` sends form-encoded by default), in
UTF-8, UTF-16 or UTF-32, with or without a byte-order mark.
"""

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from chatgate.api.errors import from_validation
from chatgate.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw)  # the fast path: UTF-8 JSON
    except ValidationError as exc:
        failure = exc
    try:
        body: Any = json.loads(raw)  # other encodings, a byte-order mark
    except ValueError:
        raise _invalid(failure) from None
    if failure.errors()[0]["type"] != "json_invalid":
        raise _invalid(failure, body) from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid(exc, body) from None


def _invalid(exc: ValidationError, body: Any = None) -> InvalidRequest:
    """Pydantic's locations for a model validated on its own, put under ``body`` as FastAPI's are."""
    return from_validation([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()], body)
