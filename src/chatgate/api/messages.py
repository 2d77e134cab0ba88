"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``
(also under ``/anthropic/v1``, for clients whose base URL must have a path).

The caller's token comes in ``x-api-key`` (as Anthropic's SDKs send it) or ``Authorization: Bearer``;
``anthropic-version`` and ``anthropic-beta`` are accepted. Errors are in Anthropic's shape (see
api/errors.py), with the trace id in ``request-id`` as well as ``x-request-id``.
"""

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from chatgate.api.body import parse
from chatgate.api.cancel import unless_gone
from chatgate.api.deps import services_of
from chatgate.api.errors import ANTHROPIC_HEADER, anthropic_error
from chatgate.api.openapi import BEARER, METERED, X_API_KEY, described, raises
from chatgate.api.sse import event_stream_response
from chatgate.api.trace import trace_id_of
from chatgate.errors import (
    ChatgateError,
    ContextLengthExceeded,
    EngineFailure,
    InvalidImage,
    InvalidRequest,
    ModelNotFound,
    NotImplementedFeature,
    RateLimited,
    TokenMismatch,
    UnsupportedParameter,
)
from chatgate.protocol.messages_api import (
    CountTokensRequest,
    CreateMessage,
    Message,
    MessageEvent,
    TokenCount,
)
from chatgate.services.auth import AuthService
from chatgate.services.chat import Caller
from chatgate.services.messages import MessagesService

router = APIRouter()

# The token, in either header (the document's security schemes say so: not parameters besides).
ApiKey = Annotated[str | None, Header(alias="x-api-key", include_in_schema=False)]
Authorization = Annotated[str | None, Header(alias="authorization", include_in_schema=False)]
# A message's checks, as chat's (a message is answered as a chat request).
_CHECKS = (NotImplementedFeature, UnsupportedParameter, InvalidImage)


async def _caller(request: Request, x_api_key: str | None, authorization: str | None) -> Caller:
    auth: AuthService = services_of(request).auth
    header = f"Bearer {x_api_key}" if x_api_key and not authorization else authorization
    return Caller(await auth.authenticate(header), trace_id_of(request))


def _service(request: Request) -> MessagesService:
    service: MessagesService = services_of(request).messages
    return service


def _json(body: str, caller: Caller, headers: dict[str, str]) -> Response:
    headers = {**headers, ANTHROPIC_HEADER: caller.trace_id}
    return Response(body, media_type="application/json", headers=headers)


@router.post(
    "/messages",
    response_model=Message,
    response_description="The message, or with `stream` its events.",
    responses=raises(*METERED, *_CHECKS, (EngineFailure, "engine_error")),
    # The body and the caller are read by hand: described here instead.
    openapi_extra=described(body=CreateMessage, events=MessageEvent, security=(X_API_KEY, BEARER)),
)
async def create_message(
    request: Request, x_api_key: ApiKey = None, authorization: Authorization = None
) -> Response:
    caller = await _caller(request, x_api_key, authorization)
    service = _service(request)
    service.check_credits(caller)  # a token with nothing left is refused before its body is read
    body = parse(CreateMessage, await request.body())

    def late_failure(exc: ChatgateError) -> MessageEvent:
        error = anthropic_error(exc, caller.trace_id)
        return MessageEvent(type="error", error=error.error.model_dump())

    async def answer() -> Response:
        if body.stream:
            events, headers = await service.stream(caller, body)
            headers = {**headers, ANTHROPIC_HEADER: caller.trace_id}
            return event_stream_response(events, caller.trace_id, headers, late_failure)
        message, headers = await service.create(caller, body)
        return _json(message.model_dump_json(), caller, headers)

    return await unless_gone(request, answer)


@router.post(
    "/messages/count_tokens",
    response_model=TokenCount,
    # Planned as a message is (the model, the token's models, its checks), then the request rate.
    responses=raises(
        ModelNotFound,
        (InvalidRequest, "model_not_supported"),
        TokenMismatch,
        ContextLengthExceeded,
        RateLimited,
        *_CHECKS,
    ),
    openapi_extra=described(body=CountTokensRequest, security=(X_API_KEY, BEARER)),
)
async def count_tokens(
    request: Request, x_api_key: ApiKey = None, authorization: Authorization = None
) -> Response:
    caller = await _caller(request, x_api_key, authorization)
    body = parse(CountTokensRequest, await request.body())
    count, headers = await _service(request).count_tokens(caller, body)
    return _json(count.model_dump_json(), caller, headers)
