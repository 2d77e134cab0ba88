"""The one table from domain errors to HTTP, and the envelope every failure is rendered in."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import ErrorDetails
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatgate.api.routes import allowed_methods
from chatgate.api.trace import TRACE_HEADER, new_trace_id, trace_id_of
from chatgate.errors import (
    AuthError,
    ChatgateError,
    Conflict,
    EngineBusy,
    EngineFailure,
    Forbidden,
    Gone,
    InsufficientQuota,
    InvalidRequest,
    MailFailed,
    ModelNotFound,
    ModelUnavailable,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StorageFull,
    StorageUnavailable,
    Unavailable,
    UpstreamFailed,
    UpstreamRefused,
    UpstreamTimeout,
)
from chatgate.protocol.errors import ErrorBody, ErrorEnvelope
from chatgate.protocol.messages_api import AnthropicError, ErrorDetail

log = logging.getLogger("chatgate.api")

# Looked up along the error's class hierarchy, most specific first.
ERRORS: dict[type[ChatgateError], tuple[int, str]] = {
    InvalidRequest: (400, "invalid_request_error"),
    PayloadTooLarge: (413, "invalid_request_error"),
    AuthError: (401, "authentication_error"),
    Forbidden: (403, "permission_error"),
    ModelNotFound: (404, "invalid_request_error"),
    NotFound: (404, "invalid_request_error"),
    Conflict: (409, "invalid_request_error"),
    Gone: (410, "invalid_request_error"),
    EngineBusy: (429, "rate_limit_error"),
    RateLimited: (429, "rate_limit_error"),
    InsufficientQuota: (429, "insufficient_quota"),
    Unavailable: (503, "api_error"),
    StorageFull: (507, "api_error"),
    EngineFailure: (500, "api_error"),
    UpstreamFailed: (502, "api_error"),
    UpstreamTimeout: (504, "api_error"),
    StorageUnavailable: (503, "api_error"),
    ModelUnavailable: (503, "api_error"),
    MailFailed: (502, "api_error"),
}
# An upstream's own refusal keeps its status; its type follows from the status.
_UPSTREAM_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
INTERNAL = (500, "api_error")


def status_and_type(exc: ChatgateError) -> tuple[int, str]:
    if isinstance(exc, UpstreamRefused):
        return exc.status, _UPSTREAM_TYPES.get(exc.status, "invalid_request_error")
    for cls in type(exc).__mro__:
        if cls in ERRORS:
            return ERRORS[cls]
    return INTERNAL


def envelope(exc: ChatgateError, trace_id: str) -> ErrorEnvelope:
    _, kind = status_and_type(exc)
    body = ErrorBody(message=exc.message, type=kind, param=exc.param, code=exc.code)
    return ErrorEnvelope(error=body, trace_id=trace_id)


# Anthropic's Messages API answers in its own error shape, with its own statuses and types.
ANTHROPIC_HEADER = "request-id"  # where Anthropic's SDKs read a request's id
_ANTHROPIC_STATUSES: dict[type[ChatgateError], int] = {InsufficientQuota: 402, EngineBusy: 529}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def is_anthropic(path: str) -> bool:
    """Whether a path is one of Anthropic's API (``/v1/messages``...), answered in its error shape."""
    return path.startswith(("/v1/messages", "/anthropic/"))


def anthropic_type(status: int) -> str:
    """The type of Anthropic's error answered with ``status``."""
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def anthropic_answer(cls: type[ChatgateError], status: int) -> tuple[int, str]:
    """The status and type Anthropic's shape answers an error of ``cls`` with, which OpenAI's
    envelope answers with ``status`` (the OpenAPI document translates a route's errors with this)."""
    for base in cls.__mro__:
        if base in _ANTHROPIC_STATUSES:
            status = _ANTHROPIC_STATUSES[base]
            break
    return status, anthropic_type(status)


def anthropic_status(exc: ChatgateError) -> int:
    return anthropic_answer(type(exc), status_and_type(exc)[0])[0]


def anthropic_error(exc: ChatgateError, trace_id: str) -> AnthropicError:
    _, kind = anthropic_answer(type(exc), status_and_type(exc)[0])
    return AnthropicError(error=ErrorDetail(type=kind, message=exc.message), request_id=trace_id)


def error_response(exc: ChatgateError, trace_id: str, path: str = "") -> JSONResponse:
    if is_anthropic(path):
        headers = {**_error_headers(exc, trace_id), ANTHROPIC_HEADER: trace_id}
        body = anthropic_error(exc, trace_id).model_dump(mode="json")
        return JSONResponse(body, status_code=anthropic_status(exc), headers=headers)
    status, _ = status_and_type(exc)
    return JSONResponse(
        envelope(exc, trace_id).model_dump(mode="json"),
        status_code=status,
        headers=_error_headers(exc, trace_id),
    )


def _error_headers(exc: ChatgateError, trace_id: str) -> dict[str, str]:
    headers = {TRACE_HEADER: trace_id}
    if isinstance(exc, EngineBusy | RateLimited | Unavailable):
        headers["retry-after"] = str(exc.retry_after)
    headers.update(exc.headers)  # the rate-limit state, for a refusal and any failure after admission
    if isinstance(exc, UpstreamRefused) and exc.retry_after:
        headers["retry-after"] = exc.retry_after
    if isinstance(exc, InsufficientQuota):
        headers["x-should-retry"] = "false"  # the official SDKs honour this: no pointless retries
    return headers


def _param(loc: tuple[int | str, ...], body: Any) -> str | None:
    """The request field at fault, as ``messages[0].content``.

    Pydantic's locations also name union members and discriminator tags (``user``, ``str``); only
    the steps that exist in the request body itself are kept.
    """
    if loc[:1] in (("path",), ("query",), ("header",), ("cookie",)):
        return str(loc[1]) if len(loc) > 1 else None  # a path or query parameter: its name
    text, node = "", body
    for part in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(part, int) and isinstance(node, list) and 0 <= part < len(node):
            text, node = f"{text}[{part}]", node[part]
        elif isinstance(part, str) and isinstance(node, dict) and (part in node or part == loc[-1]):
            text, node = (f"{text}.{part}" if text else part), node.get(part)
    return text or None


_CODES: Mapping[str, str] = {
    "json_invalid": "invalid_json",
    "missing": "missing_required_parameter",
    "extra_forbidden": "unknown_parameter",
}


def _most_specific(errors: Sequence[ErrorDetails], body: Any) -> tuple[ErrorDetails, str | None]:
    """The first error, or a deeper one about the same field.

    A value that may take several shapes (a message's content: a string or a list of parts)
    fails once per shape. The first failure is for the plain string, whatever was sent; the one
    that reaches deepest into what was sent (``messages[0].content[0].type``) says what is wrong.
    """
    first = errors[0]
    best, best_param = first, _param(first["loc"], body)
    for error in errors[1:]:
        param = _param(error["loc"], body)
        if (
            param
            and best_param
            and param.startswith(best_param)
            and param[len(best_param) : len(best_param) + 1] in (".", "[")
        ):
            best, best_param = error, param
    return best, best_param


def from_validation(errors: Sequence[ErrorDetails], body: Any) -> InvalidRequest:
    """The 400 for a body that failed validation, naming its first fault (locations as FastAPI
    gives them, under ``body``)."""
    fallback: ErrorDetails = {"type": "value_error", "loc": ("body",), "msg": "invalid", "input": None}
    errors = errors or [fallback]
    error, param = _most_specific(errors, body)
    kind = error["type"]
    if kind == "json_invalid":
        return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
    if kind in ("model_attributes_type", "model_type") and not param:
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "extra_forbidden":
        return InvalidRequest(
            f"Unrecognized request argument supplied: {param}", param=param, code=_CODES[kind]
        )
    return InvalidRequest(f"Invalid value for '{param}': {error['msg']}.", param=param, code=_CODES.get(kind))


async def on_chatgate_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChatgateError)
    return error_response(exc, trace_id_of(request), request.url.path)


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(from_validation(exc.errors(), exc.body), trace_id_of(request), request.url.path)


def _unreadable_body(request: Request, exc: StarletteHTTPException) -> ChatgateError:
    """What a 400 the framework raised while reading a body was about. It wraps whatever failed:
    ours (BodyLimit's 413 for a body without a declared length, grown too long) or a body that is no
    text (bytes that are not UTF-8); a form's own refusal (too many fields) comes as is."""
    cause = exc.__cause__
    if isinstance(cause, ChatgateError):
        return cause
    if isinstance(cause, UnicodeDecodeError) and "json" in request.headers.get("content-type", "json"):
        return InvalidRequest(
            "The request body is not valid JSON (it is not UTF-8 text).", code="invalid_json"
        )
    return InvalidRequest(f"The request body could not be read: {exc.detail}")


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        err: ChatgateError = NotFound(f"Unknown path {request.url.path}.", code="not_found")
        return error_response(err, trace_id_of(request), request.url.path)
    if exc.status_code == 400:
        return error_response(_unreadable_body(request, exc), trace_id_of(request), request.url.path)
    trace_id = trace_id_of(request)
    headers = {TRACE_HEADER: trace_id, **(exc.headers or {})}
    if exc.status_code == 405:  # every method the path is served with, not just one route's
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["allow"] = ", ".join(allowed_methods(request.app, request.url.path))
    if is_anthropic(request.url.path):
        detail = ErrorDetail(type=anthropic_type(exc.status_code), message=str(exc.detail))
        return JSONResponse(
            AnthropicError(error=detail, request_id=trace_id).model_dump(mode="json"),
            status_code=exc.status_code,
            headers={**headers, ANTHROPIC_HEADER: trace_id},
        )
    body = ErrorBody(message=str(exc.detail), type="invalid_request_error", code=f"http_{exc.status_code}")
    return JSONResponse(
        ErrorEnvelope(error=body, trace_id=trace_id).model_dump(mode="json"),
        status_code=exc.status_code,
        headers=headers,
    )


def _trace_of(scope: Scope) -> str:
    """The trace id TraceMiddleware gave the request (a fresh one outside it)."""
    trace_id = scope.get("state", {}).get("trace_id")
    return trace_id if isinstance(trace_id, str) else new_trace_id()


class CatchAll:
    """Answers anything unexpected with the enveloped 500, here, and keeps the connection usable.

    (An ``Exception`` handler registered with the framework answers too, but then re-raises, and
    the server drops the connection under a client that may already be sending its next request.)
    A failure after the response has started cannot change it; that one goes on up.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            if started:
                raise
            trace_id = _trace_of(scope)
            log.exception("unhandled error", extra={"trace_id": trace_id})
            err = EngineFailure(
                "The server had an error while processing your request.", code="internal_error"
            )
            await error_response(err, trace_id, scope.get("path", ""))(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with an enveloped 413, before they are read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(self._too_large(), _trace_of(scope), scope.get("path", ""))(
                scope, receive, send
            )
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise self._too_large()  # a body without a declared length, grown too long
            return message

        await self.app(scope, counting, send)

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body is larger than this server accepts ({self.limit} bytes).")
