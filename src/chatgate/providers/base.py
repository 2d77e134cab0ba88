"""The one small interface every engine and upstream implements, and the events it yields."""

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import FinishReason


@dataclass(frozen=True)
class Started:
    """The request was admitted and its prompt measured; nothing has been generated yet."""

    prompt_tokens: int


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


ProviderEvent = Started | TextDelta | Finished


@dataclass(frozen=True)
class Completion:
    text: str
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


class Provider(Protocol):
    """Generates chat completions for the catalogue models it serves.

    ``stream`` yields ``Started`` first (errors before it are the request's fault or admission
    refusals and may still become HTTP statuses), then ``TextDelta``s, then exactly one ``Finished``.
    Closing the iterator early cancels the generation.
    """

    async def start(self) -> None: ...

    def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]: ...

    async def complete(self, request: ChatCompletionRequest) -> Completion: ...

    def stats(self) -> dict[str, int]:
        """Load figures for health checks: busy and queued requests, and the like."""
        ...

    async def aclose(self) -> None: ...


async def collect(events: AsyncIterator[ProviderEvent]) -> Completion:
    """Drain a provider stream into one completion."""
    pieces: list[str] = []
    async for event in events:
        if isinstance(event, TextDelta):
            pieces.append(event.text)
        elif isinstance(event, Finished):
            return Completion("".join(pieces), event.reason, event.prompt_tokens, event.completion_tokens)
    raise RuntimeError("provider stream ended without a Finished event")
