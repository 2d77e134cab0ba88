"""What a route declares for the OpenAPI document, beyond what FastAPI reads from its signature.

Most of a route's description comes from the route itself (see ``api/document.py``): its path
and method, its parameters and body model, its security (from the dependency that authenticates
it: ``CallerDep`` is the bearer token, ``SignedInDep`` the console session, ``AdminDep`` an
admin's), and the errors every route of its kind can answer. The decorator adds the rest:

    @router.post(
        "/images/generations",
        response_model=ImagesResponse,                # the success body (documentation: the route
                                                      # renders its own JSONResponse, and the tests
                                                      # check it against this)
        responses=raises(ModelNotFound, RateLimited),  # domain errors, mapped by the error table
    )

A route that reads its body or its caller by hand, or streams, says so with ``openapi_extra``:

    openapi_extra=described(body=ChatCompletionRequest, stream=ChatCompletionChunk, security=BEARER)
"""

from collections.abc import Mapping
from typing import Any, Literal

from fastapi.routing import APIRoute
from pydantic import BaseModel

from chatgate.api.errors import ERRORS
from chatgate.errors import (
    ChatgateError,
    Conflict,
    ContextLengthExceeded,
    EngineBusy,
    InsufficientQuota,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    TokenMismatch,
    UpstreamFailed,
    UpstreamRefused,
    UpstreamTimeout,
)
from chatgate.protocol.errors import ErrorEnvelope

BEARER = "bearer"  # an API token or the operator's master key, in ``Authorization: Bearer ...``
SESSION = "session"  # the console's session cookie
CSRF = "csrf"  # the session's CSRF token, in ``x-csrf-token``, on every state-changing call

Security = list[dict[str, list[str]]]
Mode = Literal["validation", "serialization"]
STAND_IN = "#/components/schemas/__stand_in__."

# The prefixes the OpenAI-compatible API is served under; the first is the canonical one.
API_PREFIXES = ("/v1", "/openai/v1", "/openai")


# A response that signs the caller in (``responses={201: SETS_COOKIE}``).
SETS_COOKIE: dict[str, Any] = {
    "headers": {
        "set-cookie": {
            "description": "The session cookie (HttpOnly, SameSite=Lax).",
            "required": True,
            "schema": {"type": "string"},
        }
    }
}


Raised = type[ChatgateError] | tuple[type[ChatgateError], str]

# What every route through the metering unit (services/metering.py) can answer: the model unknown,
# of the other API, or not this token's; too long for it; the admission refused (the limits, the
# credits, a request id already charged); the engine's or the host's bound; an upstream's failures.
# A route lists these with its own: ``raises(*METERED, InvalidImage)``.
METERED: tuple[Raised, ...] = (
    ModelNotFound,
    (InvalidRequest, "model_not_supported"),
    TokenMismatch,
    ContextLengthExceeded,
    (Conflict, "duplicate_request"),
    InsufficientQuota,
    RateLimited,
    EngineBusy,
    UpstreamRefused,
    UpstreamFailed,
    UpstreamTimeout,
)


def links(**targets: tuple[str, dict[str, str]]) -> dict[str, Any]:
    """A success response's ``links``: which other operation takes a value from it, and where
    (``links(RenameToken=("rename_token", {"token_id": "$response.body#/id"}))``)."""
    return {
        "links": {
            name: {"operationId": operation, "parameters": parameters}
            for name, (operation, parameters) in targets.items()
        }
    }


class Ref(dict[str, str]):
    """Stands for a model's schema in ``openapi_extra``: a ``$ref`` to a stand-in name, which the
    document replaces with the model's component (named as FastAPI names every other model)."""

    def __init__(self, model: type[BaseModel], mode: Mode = "serialization") -> None:
        super().__init__({"$ref": f"{STAND_IN}{model.__module__}.{model.__qualname__}.{mode}"})
        self.model = model
        self.mode = mode


def raises(*errors: Raised) -> dict[int | str, Any]:
    """``responses=`` entries for the domain errors a route can answer with, each under the status
    the error table (``api/errors.py``) gives it. An error may come with the code it is raised with
    when that is not its class's default: ``(Conflict, "duplicate_request")``."""
    responses: dict[int | str, Any] = {}
    for error in errors:
        cls, code = error if isinstance(error, tuple) else (error, _default_code(error))
        status, kind = status_of(cls)
        entry = responses.setdefault(status, {"model": ErrorEnvelope, "x-error-codes": {}})
        entry["x-error-codes"].setdefault(kind, [])
        if code not in entry["x-error-codes"][kind]:
            entry["x-error-codes"][kind].append(code)
    return responses


def _default_code(cls: type[ChatgateError]) -> str:
    return "upstream_error" if issubclass(cls, UpstreamRefused) else cls.code


def status_of(cls: type[ChatgateError]) -> tuple[int | str, str]:
    """The status and error type an error class is answered with (``4XX``: an upstream's own)."""
    if issubclass(cls, UpstreamRefused):
        return "4XX", "invalid_request_error"
    for base in cls.__mro__:
        if base in ERRORS:
            return ERRORS[base]
    return 500, "api_error"


def described(
    *,
    body: type[BaseModel] | None = None,
    media_type: str = "application/json",
    stream: type[BaseModel] | None = None,
    security: str | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` for what a route does by hand: reads ``body`` (as ``media_type``) from the
    request's bytes, answers with a ``stream`` of server-sent events (each a ``data:`` line holding
    one such model as JSON, or an error envelope, then ``data: [DONE]``), or authenticates its caller
    itself (``security``: ``BEARER``)."""
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {media_type: {"schema": Ref(body, "validation")}},
        }
    if stream is not None:
        extra["responses"] = {"200": {"content": {"text/event-stream": {"schema": sse_event(stream)}}}}
    if security is not None:
        extra["security"] = [{security: []}]
    return extra


def sse_event(chunk: type[BaseModel]) -> dict[str, Any]:
    """The schema of one server-sent event of a stream of ``chunk``s (OpenAPI 3.1 has no keyword
    for a stream's items; as in FastAPI's own documents, ``schema`` describes one event)."""
    return {
        "type": "object",
        "description": (
            f"One server-sent event: its `data` is a `{chunk.__name__}` as JSON; an error after the "
            "stream began comes as an error envelope; the last event's `data` is `[DONE]`. "
            "Lines starting with `:` are keep-alive comments."
        ),
        "properties": {
            "data": {
                "type": "string",
                "if": {"const": "[DONE]"},
                "else": {
                    "contentMediaType": "application/json",
                    "contentSchema": {"anyOf": [Ref(chunk), Ref(ErrorEnvelope)]},
                },
            }
        },
        "required": ["data"],
    }


def operation_id(route: APIRoute) -> str:
    """The route's function name; under the other prefixes of the OpenAI-compatible API, suffixed
    with the prefix (``list_models``, ``list_models_openai``, ``list_models_openai_v1``)."""
    for prefix in API_PREFIXES[1:]:
        if route.path_format.startswith(prefix + "/"):
            return route.name + prefix.replace("/", "_")
    return route.name


def codes_of(entry: Mapping[str, Any]) -> dict[str, list[str]]:
    """The error types and codes a ``raises`` entry collected."""
    codes: dict[str, list[str]] = entry.get("x-error-codes", {})
    return codes
