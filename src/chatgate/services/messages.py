"""Anthropic's Messages API: each request answered as a chat request on the chat service's metered
path, its answer shaped as a Message (or its stream events); and prompt token counts."""

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator

from chatgate.protocol.messages_api import (
    CountTokensRequest,
    CreateMessage,
    Message,
    MessageEvent,
    TokenCount,
)
from chatgate.protocol.responses import ChatCompletionChunk
from chatgate.providers.base import count_prompt
from chatgate.services.chat import Caller, ChatService
from chatgate.services.messages_chat import (
    MessageEvents,
    count_request,
    from_completion,
    new_message_id,
    to_chat,
)
from chatgate.services.translated import TranslatedStream

API = "messages"


class MessagesService:
    def __init__(self, chat: ChatService) -> None:
        self._chat = chat

    def check_credits(self, caller: Caller) -> None:
        """Refuse a token with no credits left before its request is read (as chat does)."""
        self._chat.check_credits(dataclasses.replace(caller, api=API))

    async def create(self, caller: Caller, request: CreateMessage) -> tuple[Message, dict[str, str]]:
        caller = dataclasses.replace(caller, api=API)
        completion, headers = await self._chat.complete(caller, to_chat(request, stream=False))
        return from_completion(completion), headers

    async def stream(
        self, caller: Caller, request: CreateMessage
    ) -> tuple[AsyncIterator[MessageEvent], dict[str, str]]:
        """Admits the request (every refusal is still an HTTP status), then its events; a failure
        after the first event goes on up, for the edge to send as an ``error`` event."""
        caller = dataclasses.replace(caller, api=API)
        chunks, headers = await self._chat.stream(caller, to_chat(request, stream=True))
        state = MessageEvents(new_message_id(), self._chat.registry.resolve(request.model).name)
        return TranslatedStream(self._events(chunks, state), chunks), headers

    @staticmethod
    async def _events(
        chunks: AsyncIterator[ChatCompletionChunk], state: MessageEvents
    ) -> AsyncGenerator[MessageEvent, None]:
        for event in state.start():
            yield event
        async for chunk in chunks:
            for event in state.chunk(chunk):
                yield event
        for event in state.finish():
            yield event

    async def count_tokens(
        self, caller: Caller, request: CountTokensRequest
    ) -> tuple[TokenCount, dict[str, str]]:
        """The prompt's tokens, as the model's provider would charge them: exact on the local
        engine, an estimate for an upstream. Planned as a chat request (the same checks, nothing
        decoded or fetched), counted against the caller's request rate, and free: nothing runs."""
        route = self._chat.registry.resolve(request.model)
        caller.principal.check_model(request.model, route.name)
        provider, plan = self._chat.plan(route, count_request(request))
        headers = await self._chat.metering.limit(caller)
        return TokenCount(input_tokens=await count_prompt(provider, plan)), headers
