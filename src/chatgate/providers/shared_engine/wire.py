"""How provider events and errors travel between the engine process and the workers: one JSON line each.

Every event keeps its type and every field (a delta's token count, a finished choice's exact usage,
logprobs, citations), so a worker charges exactly what the engine counted. A domain error keeps
its class and attributes (an EngineBusy's retry_after, a refusal's param and code), so a full
queue is the same 429 and a bad value the same 400 in a worker as in a single process.
"""

import json
from dataclasses import asdict, fields
from typing import Any

from pydantic import TypeAdapter

from chatgate.errors import ChatgateError
from chatgate.protocol.responses import Annotation, TokenLogprob
from chatgate.providers.base import (
    Accepted,
    Citations,
    Finished,
    ProviderEvent,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)

EVENTS: dict[str, type[Any]] = {
    cls.__name__: cls for cls in (Accepted, TextDelta, ToolCallDelta, Finished, UsageReport, Citations)
}
_LOGPROBS = TypeAdapter(list[TokenLogprob] | None)
_ANNOTATIONS = TypeAdapter(list[Annotation])
ERROR = "error"


class WireError(Exception):
    """A line that is not an event or an error of this protocol."""


def encode(event: ProviderEvent) -> bytes:
    body: dict[str, Any] = {"type": type(event).__name__}
    for f in fields(event):
        value = getattr(event, f.name)
        if f.name == "logprobs":
            value = _LOGPROBS.dump_python(value, mode="json")
        elif f.name == "annotations":
            value = _ANNOTATIONS.dump_python(value, mode="json")
        elif not isinstance(value, str | int | float | bool | None):
            value = asdict(value)
        body[f.name] = value
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def encode_error(exc: ChatgateError) -> bytes:
    """A domain error with all its attributes (message, param, code, headers, retry_after...)."""
    attributes = {k: v for k, v in vars(exc).items() if isinstance(v, str | int | float | bool | dict | None)}
    body = {"type": ERROR, "class": type(exc).__name__, "attributes": attributes}
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> ProviderEvent | ChatgateError:
    try:
        body = json.loads(line)
        kind = body.pop("type")
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise WireError(f"not a line of the engine protocol: {line[:80]!r}") from exc
    if kind == ERROR:
        return _error(body)
    cls = EVENTS.get(kind)
    if cls is None:
        raise WireError(f"unknown event type {kind!r}")
    if "logprobs" in body:
        body["logprobs"] = _LOGPROBS.validate_python(body["logprobs"])
    if "annotations" in body:
        body["annotations"] = _ANNOTATIONS.validate_python(body["annotations"])
    try:
        event: ProviderEvent = cls(**body)
    except TypeError as exc:
        raise WireError(f"bad fields for {kind}: {exc}") from exc
    return event


def _error(body: dict[str, Any]) -> ChatgateError:
    cls = _error_classes().get(str(body.get("class")), ChatgateError)
    attributes = dict(body.get("attributes") or {})
    exc = cls.__new__(cls)
    Exception.__init__(exc, str(attributes.get("message", "")))
    exc.message, exc.param, exc.headers = "", None, {}
    exc.__dict__.update(attributes)
    return exc


def _error_classes() -> dict[str, type[ChatgateError]]:
    found: dict[str, type[ChatgateError]] = {}
    pending: list[type[ChatgateError]] = [ChatgateError]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        pending.extend(cls.__subclasses__())
    return found
