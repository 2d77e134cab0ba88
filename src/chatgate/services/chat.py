"""Chat completions: check what a request asks for, run it on its model's provider, shape the answer."""

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

from chatgate.errors import InvalidRequest, NotImplementedFeature
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    FunctionCallDelta,
    ResponseMessage,
    ToolCallDelta,
    Usage,
)
from chatgate.providers.base import ChoiceResult, Finished, ProviderEvent, Started, TextDelta
from chatgate.providers.base import ToolCallDelta as ToolPiece
from chatgate.services.catalogue import ModelRegistry, Route


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


def check_supported(request: ChatCompletionRequest) -> None:
    """Refuse inconsistent combinations, and features no deployment here can honour, naming the param."""
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest("stream_options is only allowed when stream is true.", param="stream_options")
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    if request.tool_choice is not None and not request.tools:
        raise InvalidRequest("tool_choice is only allowed when tools are specified.", param="tool_choice")
    if request.parallel_tool_calls is not None and not request.tools:
        raise InvalidRequest(
            "parallel_tool_calls is only allowed when tools are specified.", param="parallel_tool_calls"
        )
    unsupported: list[tuple[str, bool]] = [
        ("functions", bool(request.functions)),
        ("function_call", request.function_call is not None),
        ("audio", request.audio is not None),
        ("modalities", any(m != "text" for m in request.modalities or [])),
        ("prediction", request.prediction is not None),
        ("web_search_options", request.web_search_options is not None),
        ("store", bool(request.store)),
        ("reasoning_effort", request.reasoning_effort is not None),
        ("verbosity", request.verbosity is not None),
    ]
    for param, used in unsupported:
        if used:
            raise NotImplementedFeature(f"'{param}' is not supported by this model.", param=param)


def _message(result: ChoiceResult) -> ResponseMessage:
    if result.tool_calls:
        return ResponseMessage(content=result.text or None, tool_calls=result.tool_calls)
    return ResponseMessage(content=result.text)


class ChatService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        route = self.registry.resolve(request.model)
        check_supported(request)
        result = await route.provider.complete(request)
        wants_logprobs = bool(request.logprobs)
        return ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=route.name,
            system_fingerprint=route.fingerprint,
            choices=[
                Choice(
                    index=index,
                    message=_message(choice),
                    logprobs=ChoiceLogprobs(content=choice.logprobs or []) if wants_logprobs else None,
                    finish_reason=choice.reason,
                )
                for index, choice in enumerate(result.choices)
            ],
            usage=_usage(result.prompt_tokens, result.completion_tokens),
        )

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Admit the request and return its chunks.

        Everything that can refuse the request (unknown model, bad values, a full queue, a prompt
        too long) happens before this returns, so it can still become an HTTP status.
        """
        route = self.registry.resolve(request.model)
        check_supported(request)
        events = route.provider.stream(request)
        first = await anext(events)
        if not isinstance(first, Started):
            await events.aclose()
            raise RuntimeError(f"provider stream began with {first!r}, not Started")
        return self._chunks(route, request, events, first.prompt_tokens)

    async def _chunks(
        self,
        route: Route,
        request: ChatCompletionRequest,
        events: AsyncGenerator[ProviderEvent, None],
        prompt_tokens: int,
    ) -> AsyncIterator[ChatCompletionChunk]:
        completion_id, created = _completion_id(), int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=route.name,
                system_fingerprint=route.fingerprint,
                choices=choices,
                usage=usage,
            )

        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        opened: set[int] = set()
        completion_tokens = 0
        try:
            async for event in events:
                if isinstance(event, Started):
                    continue
                if event.index not in opened:
                    opened.add(event.index)
                    yield chunk([ChunkChoice(index=event.index, delta=Delta(role="assistant", content=""))])
                if isinstance(event, TextDelta):
                    logprobs = ChoiceLogprobs(content=event.logprobs) if event.logprobs is not None else None
                    delta = Delta(content=event.text)
                    yield chunk([ChunkChoice(index=event.index, delta=delta, logprobs=logprobs)])
                elif isinstance(event, ToolPiece):
                    yield chunk(
                        [ChunkChoice(index=event.index, delta=Delta(tool_calls=[_tool_delta(event)]))]
                    )
                elif isinstance(event, Finished):
                    completion_tokens += event.completion_tokens
                    yield chunk([ChunkChoice(index=event.index, delta=Delta(), finish_reason=event.reason)])
            if include_usage:
                yield chunk([], _usage(prompt_tokens, completion_tokens))
        finally:
            await events.aclose()


def _tool_delta(piece: ToolPiece) -> ToolCallDelta:
    if piece.call_id is not None:
        return ToolCallDelta(
            index=piece.call_index,
            id=piece.call_id,
            type="function",
            function=FunctionCallDelta(name=piece.name, arguments=piece.arguments),
        )
    return ToolCallDelta(index=piece.call_index, function=FunctionCallDelta(arguments=piece.arguments))
