"""``POST /v1/chat/completions`` (and the same under ``/openai``)."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from chatgate.api.deps import CallerDep, ChatDep
from chatgate.api.sse import sse_response
from chatgate.protocol.requests import ChatCompletionRequest

router = APIRouter()


@router.post("/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, caller: CallerDep, chat: ChatDep) -> Response:
    if body.stream:
        chunks, headers = await chat.stream(caller, body)
        return sse_response(chunks, caller.trace_id, headers)
    completion, headers = await chat.complete(caller, body)
    return JSONResponse(completion.model_dump(mode="json"), headers=headers)
