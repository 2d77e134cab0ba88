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
    ChunkChoice,
    Delta,
    ResponseMessage,
    Usage,
)
from chatgate.providers.base import Finished, ProviderEvent, Started, TextDelta
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
    """Refuse inconsistent combinations, and features this deployment cannot honour, naming the param."""
    if request.stream_options is not None and not request.stream:
        raise InvalidRequest("stream_options is only allowed when stream is true.", param="stream_options")
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs to be true.", param="top_logprobs")
    unsupported: list[tuple[str, bool]] = [
        ("n", request.n is not None and request.n > 1),
        ("tools", bool(request.tools)),
        ("tool_choice", request.tool_choice is not None and request.tool_choice != "none"),
        ("parallel_tool_calls", request.parallel_tool_calls is not None),
        ("functions", bool(request.functions)),
        ("function_call", request.function_call is not None and request.function_call != "none"),
        ("response_format", (request.response_format or {"type": "text"}).get("type") != "text"),
        ("logprobs", bool(request.logprobs)),
        ("logit_bias", bool(request.logit_bias)),
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
            raise NotImplementedFeature(f"'{param}' is not supported by this model yet.", param=param)


class ChatService:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        route = self.registry.resolve(request.model)
        check_supported(request)
        result = await route.provider.complete(request)
        return ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=route.name,
            system_fingerprint=route.fingerprint,
            choices=[
                Choice(index=0, message=ResponseMessage(content=result.text), finish_reason=result.reason)
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
        return self._chunks(route, request, events)

    async def _chunks(
        self, route: Route, request: ChatCompletionRequest, events: AsyncGenerator[ProviderEvent, None]
    ) -> AsyncIterator[ChatCompletionChunk]:
        completion_id, created = _completion_id(), int(time.time())

        def chunk(delta: Delta, finish: Finished | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=route.name,
                system_fingerprint=route.fingerprint,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish.reason if finish else None)],
            )

        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        try:
            yield chunk(Delta(role="assistant", content=""))
            async for event in events:
                if isinstance(event, TextDelta):
                    yield chunk(Delta(content=event.text))
                elif isinstance(event, Finished):
                    yield chunk(Delta(), event)
                    if include_usage:
                        yield ChatCompletionChunk(
                            id=completion_id,
                            created=created,
                            model=route.name,
                            system_fingerprint=route.fingerprint,
                            choices=[],
                            usage=_usage(event.prompt_tokens, event.completion_tokens),
                        )
        finally:
            await events.aclose()
