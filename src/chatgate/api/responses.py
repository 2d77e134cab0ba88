"""OpenAI's Responses API: ``POST /v1/responses`` and the stored responses (also under ``/openai``).

The body is read strictly from its bytes, as the chat route reads its own; errors are in OpenAI's
envelope, and a failure after the first streamed byte is a ``response.failed`` event.
"""

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from chatgate.api.body import parse
from chatgate.api.cancel import unless_gone
from chatgate.api.deps import AuthenticatedDep, CallerDep, services_of
from chatgate.api.openapi import METERED, described, links, raises
from chatgate.api.sse import event_stream_response
from chatgate.errors import (
    ChatgateError,
    EngineFailure,
    InvalidImage,
    InvalidRequest,
    NotFound,
    NotImplementedFeature,
    UnsupportedParameter,
)
from chatgate.protocol.responses_api import (
    CreateResponse,
    DeletedResponse,
    InputItemList,
    StreamEvent,
)
from chatgate.protocol.responses_api import (
    Response as ResponseObject,
)
from chatgate.services.responses import ResponsesService

router = APIRouter()


def _service(request: Request) -> ResponsesService:
    service: ResponsesService = services_of(request).responses
    return service


def _json(body: str, headers: dict[str, str] | None = None) -> Response:
    return Response(body, media_type="application/json", headers=headers)


def _late_failure(exc: ChatgateError) -> StreamEvent:
    """What the stream says when it breaks outside the service's own events (it sends response.failed)."""
    return StreamEvent(type="error", sequence_number=0, code=exc.code, message=exc.message, param=exc.param)


# A stored response's id, read from an answer by the operations that take it.
_STORED = "response_not_found"


@router.post(
    "/responses",
    response_model=ResponseObject,
    response_description="The response, or with `stream` its events.",
    responses={
        200: links(
            GetResponse=("get_response", {"response_id": "$response.body#/id"}),
            ListInputItems=("list_input_items", {"response_id": "$response.body#/id"}),
            DeleteResponse=("delete_response", {"response_id": "$response.body#/id"}),
        ),
        **raises(
            *METERED,
            NotImplementedFeature,
            UnsupportedParameter,
            InvalidImage,
            (EngineFailure, "engine_error"),
            (NotFound, _STORED),  # previous_response_id
        ),
    },
    # The body is read by hand, as chat's is: described here instead.
    openapi_extra=described(body=CreateResponse, events=StreamEvent),
)
async def create_response(request: Request, caller: AuthenticatedDep) -> Response:
    # Admitted once, by the metering unit the chat path runs it through (not by the route as well).
    service = _service(request)
    service.check_credits(caller)  # a token with nothing left is refused before its body is read
    body = parse(CreateResponse, await request.body())

    async def answer() -> Response:
        if body.stream:
            events, headers = await service.stream(caller, body)
            return event_stream_response(events, caller.trace_id, headers, _late_failure)
        response, headers = await service.create(caller, body)
        return _json(response.model_dump_json(by_alias=True), headers)

    return await unless_gone(request, answer)


@router.get("/responses/{response_id}", response_model=ResponseObject, responses=raises((NotFound, _STORED)))
async def get_response(response_id: str, request: Request, caller: CallerDep) -> Response:
    return _json(json.dumps(await _service(request).retrieve(caller, response_id)))


@router.delete(
    "/responses/{response_id}", response_model=DeletedResponse, responses=raises((NotFound, _STORED))
)
async def delete_response(response_id: str, request: Request, caller: CallerDep) -> Response:
    return _json((await _service(request).delete(caller, response_id)).model_dump_json())


@router.get(
    "/responses/{response_id}/input_items",
    response_model=InputItemList,
    responses=raises((NotFound, _STORED), InvalidRequest),  # InvalidRequest: an `after` not among them
)
async def list_input_items(
    response_id: str,
    request: Request,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> Response:
    items = await _service(request).input_items(caller, response_id, limit=limit, order=order, after=after)
    return _json(items.model_dump_json())
