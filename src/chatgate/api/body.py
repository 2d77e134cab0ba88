"""Request bodies read straight from their bytes into a protocol model, with FastAPI's errors.

A body is JSON whatever its Content-Type says (``curl -d`` sends form-encoded by default), in
UTF-8, UTF-16 or UTF-32, with or without a byte-order mark. Types are strict, as OpenAI's are:
``"max_tokens": true`` or ``"temperature": "0.5"`` is a 400, not converted. Text must be Unicode: a string
holding half of a UTF-16 surrogate pair (``"\\ud800"`` alone) is refused, naming where it is.
"""

import json
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from chatgate.api.errors import from_validation
from chatgate.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def parse(model: type[M], raw: bytes) -> M:
    if _SURROGATE_ESCAPE.search(raw):
        _refuse_lone_surrogates(raw)
    try:
        return model.model_validate_json(raw, strict=True)  # the fast path: UTF-8 JSON
    except ValidationError as exc:
        failure = exc
    if failure.errors()[0]["type"] != "json_invalid":
        raise _invalid(failure, _loads(raw)) from None
    text = _decoded(raw)
    if text is None:
        raise _invalid(failure) from None
    if _SURROGATE_ESCAPE.search(text.encode("utf-8", "surrogatepass")):
        _refuse_lone_surrogates(text)
    try:
        return model.model_validate_json(text, strict=True)
    except ValidationError as exc:
        raise _invalid(exc, _loads(text)) from None


def _decoded(raw: bytes) -> str | None:
    """The body as text when it is in another Unicode encoding than plain UTF-8 (or has a BOM)."""
    try:
        text = raw.decode(json.detect_encoding(raw))
    except (UnicodeDecodeError, LookupError):
        return None
    text = text.removeprefix("\ufeff")
    return None if text.encode("utf-8", "surrogatepass") == raw else text


def _loads(raw: bytes | str) -> Any:
    """The body as plain data, for naming the field at fault; None when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's stack
        return None


def _refuse_lone_surrogates(raw: bytes | str) -> None:
    body = _loads(raw)
    if body is None:
        return  # not JSON at all: validation says so
    path = _surrogate_path(body, "")
    if path is not None:
        where = f"'{path}'" if path else "the request body"
        raise InvalidRequest(
            f"Invalid value for {where}: the text holds an unpaired UTF-16 surrogate, which is not "
            "a Unicode character.",
            param=path or None,
        )


def _surrogate_path(node: Any, path: str) -> str | None:
    if isinstance(node, str):
        return None if _is_unicode(node) else path
    items: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            step = f"{path}.{key}" if path else key
            if not _is_unicode(key):
                return path
            items.append((step, value))
    elif isinstance(node, list):
        items = [(f"{path}[{i}]", value) for i, value in enumerate(node)]
    for step, value in items:
        found = _surrogate_path(value, step)
        if found is not None:
            return found
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(exc: ValidationError, body: Any = None) -> InvalidRequest:
    """Pydantic's locations for a model validated on its own, put under ``body`` as FastAPI's are."""
    return from_validation([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()], body)
