"""The Responses API: each request answered as a chat request on the chat service's metered path,
its answer shaped as a Response (or its typed events), and kept when ``store`` is on."""

import dataclasses
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from pydantic import TypeAdapter

from chatgate.errors import ChatgateError, EngineFailure, InvalidRequest
from chatgate.protocol.responses import ChatCompletionChunk
from chatgate.protocol.responses_api import (
    CreateResponse,
    DeletedResponse,
    FunctionCallOutputItem,
    InputItem,
    InputItemList,
    InputMessage,
    Response,
    StreamEvent,
)
from chatgate.services.chat import Caller, ChatService
from chatgate.services.responses_chat import from_completion, new_id, shell, to_chat
from chatgate.services.responses_events import ResponseEvents
from chatgate.services.stored_responses import ResponseStore
from chatgate.services.translated import TranslatedStream

API = "responses"
log = logging.getLogger("chatgate.responses")
_ITEMS = TypeAdapter(list[InputItem])


def input_items(request: CreateResponse) -> list[InputItem]:
    if isinstance(request.input, str):
        return [InputMessage(role="user", content=request.input)]
    return list(request.input)


def listed(item: InputItem) -> dict[str, Any]:
    """An input item as ``GET /v1/responses/{id}/input_items`` lists it: with an id and a status,
    a message's text as a content list."""
    data: dict[str, Any] = item.model_dump(mode="json", exclude_none=True, by_alias=True)
    if isinstance(item, InputMessage):
        if isinstance(item.content, str):
            kind = "output_text" if item.role == "assistant" else "input_text"
            part: dict[str, Any] = {"type": kind, "text": item.content}
            if kind == "output_text":
                part.update(annotations=[], logprobs=[])
            data["content"] = [part]
        data.setdefault("id", new_id("msg"))
        data.setdefault("status", "completed")
    elif isinstance(item, FunctionCallOutputItem):
        data.setdefault("id", new_id("fco"))
        data.setdefault("status", "completed")
    else:
        data.setdefault("id", new_id("item"))
        if data.get("type") == "function_call":
            data.setdefault("status", "completed")
    return data


class ResponsesService:
    def __init__(self, chat: ChatService, store: ResponseStore) -> None:
        self._chat = chat
        self._store = store

    def check_credits(self, caller: Caller) -> None:
        """Refuse a token with no credits left before its request is read (as chat does)."""
        self._chat.check_credits(dataclasses.replace(caller, api=API))

    async def _context(self, caller: Caller, request: CreateResponse) -> list[InputItem]:
        """The conversation to answer: an earlier response's (its context and output), then the input."""
        items = input_items(request)
        if request.previous_response_id is None:
            return items
        earlier = await self._store.get(
            caller.principal, request.previous_response_id, param="previous_response_id"
        )
        try:
            prior = _ITEMS.validate_python([*earlier.context, *earlier.response.get("output", [])])
        except ValueError as exc:  # written by an older chatgate in another shape: not continued silently
            raise InvalidRequest(
                "The previous response cannot be continued.", param="previous_response_id"
            ) from exc
        return [*prior, *items]

    async def _save(
        self, caller: Caller, request: CreateResponse, response: Response, context: list[InputItem]
    ) -> Response:
        """Keeps the response (unless ``store`` is off); the response as answered. The answer is paid
        for by now: if it cannot be kept, it is still given, saying ``store: false``."""
        if request.store is False:
            return response
        try:
            await self._store.save(
                caller.principal,
                response=response.model_dump(mode="json", by_alias=True),
                input_items=[listed(item) for item in input_items(request)],
                context=[item.model_dump(mode="json", exclude_none=True, by_alias=True) for item in context],
            )
        except Exception:
            log.exception("could not store response %s", response.id, extra={"trace_id": caller.trace_id})
            return response.model_copy(update={"store": False})
        return response

    async def create(self, caller: Caller, request: CreateResponse) -> tuple[Response, dict[str, str]]:
        caller = dataclasses.replace(caller, api=API)
        context = await self._context(caller, request)
        completion, headers = await self._chat.complete(caller, to_chat(request, context, stream=False))
        response = from_completion(request, completion, new_id("resp"), int(time.time()))
        return await self._save(caller, request, response, context), headers

    async def stream(
        self, caller: Caller, request: CreateResponse
    ) -> tuple[AsyncIterator[StreamEvent], dict[str, str]]:
        """Admits the request (every refusal is still an HTTP status), then its events."""
        caller = dataclasses.replace(caller, api=API)
        context = await self._context(caller, request)
        chunks, headers = await self._chat.stream(caller, to_chat(request, context, stream=True))
        model = self._chat.registry.resolve(request.model).name
        state = ResponseEvents(shell(request, model, new_id("resp"), int(time.time())))
        return TranslatedStream(self._events(caller, request, context, chunks, state), chunks), headers

    async def _events(
        self,
        caller: Caller,
        request: CreateResponse,
        context: list[InputItem],
        chunks: AsyncIterator[ChatCompletionChunk],
        state: ResponseEvents,
    ) -> AsyncGenerator[StreamEvent, None]:
        for event in state.start():
            yield event
        try:
            async for chunk in chunks:
                for event in state.chunk(chunk):
                    yield event
        except ChatgateError as exc:
            yield state.fail(exc)
            return
        except Exception:
            log.exception("a Responses stream failed", extra={"trace_id": caller.trace_id})
            yield state.fail(
                EngineFailure("The server had an error while generating.", code="internal_error")
            )
            return
        final, events = state.finish()
        if await self._save(caller, request, final, context) is not final:  # could not be kept
            events[-1] = state.restate(events[-1], store=False)
        for event in events:
            yield event

    async def retrieve(self, caller: Caller, response_id: str) -> dict[str, Any]:
        found = await self._store.get(caller.principal, response_id)
        return found.response

    async def delete(self, caller: Caller, response_id: str) -> DeletedResponse:
        await self._store.delete(caller.principal, response_id)
        return DeletedResponse(id=response_id)

    async def input_items(
        self,
        caller: Caller,
        response_id: str,
        *,
        limit: int,
        order: Literal["asc", "desc"],
        after: str | None,
    ) -> InputItemList:
        found = await self._store.get(caller.principal, response_id)
        items: list[dict[str, Any]] = list(found.input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise InvalidRequest(f"No input item with id '{after}' in this response.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return InputItemList(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=len(items) > limit,
        )
