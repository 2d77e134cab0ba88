"""``POST /v1/chat/completions`` (and the same under ``/openai``)."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from chatgate.api.deps import CallerDep, ChatDep
from chatgate.api.sse import sse_response
from chatgate.api.trace import trace_id_of
from chatgate.protocol.requests import ChatCompletionRequest

router = APIRouter()


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, caller: CallerDep, chat: ChatDep
) -> Response:
    if body.stream:
        return sse_response(await chat.stream(body), trace_id_of(request))
    return JSONResponse((await chat.complete(body)).model_dump(mode="json"))
