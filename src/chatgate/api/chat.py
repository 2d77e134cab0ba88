"""``POST /v1/chat/completions`` (and the same under ``/openai``).

Every request of the gateway's hot path comes through here, so the route reads its caller and its
body itself instead of through FastAPI's dependency and body machinery: the body is validated
straight from its bytes (``model_validate_json``) and the answer serialised straight to bytes,
which together take about a third of what the framework's path took (see docs/benchmarks.md).
Errors are the same as everywhere: the caller first (401), then the body (400 naming the field).

A token with no credits left is refused before its body is read. A client that leaves before its
answer starts (a non-streamed answer being generated, or a stream still waiting for its upstream's
first byte) cancels the request: the generation or the upstream call stops, and the request is
settled as cancelled (see services/metering.py for what that costs). Once a stream is flowing, its
own response watches for the client leaving.
"""

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatgate.api.body import parse
from chatgate.api.cancel import cancel_when_gone
from chatgate.api.deps import services_of
from chatgate.api.openapi import BEARER, METERED, described, raises
from chatgate.api.sse import sse_response
from chatgate.api.trace import trace_id_of
from chatgate.errors import EngineFailure, InvalidImage, NotImplementedFeature, UnsupportedParameter
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import ChatCompletion, ChatCompletionChunk
from chatgate.services.auth import AuthService
from chatgate.services.chat import ChatService
from chatgate.services.metering import Caller

router = APIRouter()


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses=raises(
        *METERED,
        NotImplementedFeature,
        UnsupportedParameter,
        InvalidImage,
        (EngineFailure, "engine_error"),
    ),
    # The body and the caller are read by hand, for speed (above): described here instead.
    openapi_extra=described(body=ChatCompletionRequest, stream=ChatCompletionChunk, security=BEARER),
)
async def create_chat_completion(request: Request) -> Response:
    services = services_of(request)
    auth: AuthService = services.auth
    chat: ChatService = services.chat
    caller = Caller(await auth.authenticate(request.headers.get("authorization")), trace_id_of(request))
    chat.check_credits(caller)  # a token with nothing left is refused before its body is read
    body = parse(ChatCompletionRequest, await request.body())
    this = asyncio.current_task()
    assert this is not None
    watcher = asyncio.create_task(cancel_when_gone(request, this))
    try:
        if body.stream:
            chunks, headers = await chat.stream(caller, body)
            return sse_response(chunks, caller.trace_id, headers)
        completion, headers = await chat.complete(caller, body)
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and this.uncancel() == 0:
            return Response(status_code=499)  # the client has gone: nobody reads this
        raise
    finally:
        watcher.cancel()
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)
