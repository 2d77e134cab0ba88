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

``raises`` names the errors as OpenAI's envelope answers them; on Anthropic's paths (``/v1/messages``,
``/anthropic/...``) the document gives each the status and type Anthropic's shape answers it with.
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
X_API_KEY = "x_api_key"  # an API token in ``x-api-key``, as Anthropic's SDKs send it

Security = list[dict[str, list[str]]]
Mode = Literal["validation", "serialization"]
STAND_IN = "#/components/schemas/__stand_in__."

# The prefixes the OpenAI-compatible API is served under; the first is the canonical one.
API_PREFIXES = ("/v1", "/openai/v1", "/openai")
# The prefixes Anthropic's Messages API is served under (a client whose base URL must have a path
# takes the second).
ANTHROPIC_PREFIXES = ("/v1", "/anthropic/v1")


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


class Errors(dict[str, Any]):
    """A ``responses=`` entry for errors, which keeps the classes it was made of (with their codes),
    for the document to answer them in another API's shape too. (The framework copies the entry
    into the document as a plain dict: what it keeps is not sent.)"""

    def __init__(self) -> None:
        super().__init__({"model": ErrorEnvelope, "x-error-codes": {}})
        self.raised: list[tuple[type[ChatgateError], str]] = []


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
        entry = responses.setdefault(status, Errors())
        entry.raised.append((cls, code))
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
    events: type[BaseModel] | None = None,
    security: str | tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` for what a route does by hand: reads ``body`` (as ``media_type``) from the
    request's bytes; answers with a ``stream`` of server-sent events (each a ``data:`` line holding
    one such model as JSON, or an error envelope, then ``data: [DONE]``) or with named ``events``
    (each ``event: <type>`` and a ``data:`` line holding one such model, whose ``type`` it is; no
    ``[DONE]``: the Responses and Messages APIs' streams); or authenticates its caller itself
    (``security``: ``BEARER``, or a tuple of schemes any one of which will do)."""
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {
            "required": True,
            "content": {media_type: {"schema": Ref(body, "validation")}},
        }
    event = sse_event(stream) if stream else sse_named_event(events) if events else None
    if event is not None:
        extra["responses"] = {"200": {"content": {"text/event-stream": {"schema": event}}}}
    if security is not None:
        schemes = (security,) if isinstance(security, str) else security
        extra["security"] = [{scheme: []} for scheme in schemes]
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


def sse_named_event(event: type[BaseModel]) -> dict[str, Any]:
    """The schema of one named server-sent event: ``event: <type>``, then ``data:`` holding an
    ``event`` as JSON (whose ``type`` is the event's name), as the Responses and Messages APIs send
    them; a failure after the stream began is one of these events too, and no ``[DONE]`` follows."""
    return {
        "type": "object",
        "description": (
            f"One named server-sent event: `event` is its type, `data` a `{event.__name__}` as JSON "
            "of that type; a failure after the stream began is an event of this kind too (`error`, "
            "or the API's own failure event), and no `[DONE]` ends the stream. Lines starting with "
            "`:` are keep-alive comments."
        ),
        "properties": {
            "event": {"type": "string"},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": Ref(event)},
        },
        "required": ["event", "data"],
    }


def operation_id(route: APIRoute) -> str:
    """The route's function name; under the other prefixes of the OpenAI-compatible API (or of
    Anthropic's), suffixed with the prefix (``list_models``, ``list_models_openai``,
    ``list_models_openai_v1``, ``create_message_anthropic_v1``)."""
    for prefix in (*API_PREFIXES[1:], *ANTHROPIC_PREFIXES[1:]):
        if route.path_format.startswith(prefix + "/"):
            return route.name + prefix.replace("/", "_")
    return route.name


def codes_of(entry: Mapping[str, Any]) -> dict[str, list[str]]:
    """The error types and codes a ``raises`` entry collected."""
    codes: dict[str, list[str]] = entry.get("x-error-codes", {})
    return codes
