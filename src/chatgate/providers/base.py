"""The one small interface every engine and upstream implements, and the events it yields."""

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from chatgate.protocol.messages import FunctionCall, ToolCall
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import Annotation, FinishReason, TokenLogprob


@dataclass(frozen=True)
class Started:
    """The request is valid and its prompt measured; it has not yet waited for the engine."""

    prompt_tokens: int  # exact, or an upper bound: what credits are reserved on
    max_completion_tokens: int  # the most it can generate, all choices together
    extra_cost: int = 0  # credits beyond the tokens (a generated image), the most it can come to
    prompt_estimate: int | None = None  # charged when no exact count comes (an upstream without usage)

    @property
    def prompt_charge(self) -> int:
        """The prompt tokens to charge unless a UsageReport replaces them."""
        return self.prompt_tokens if self.prompt_estimate is None else self.prompt_estimate


@dataclass(frozen=True)
class Running:
    """The engine took the request (a free instance, a connected upstream); output follows."""


@dataclass(frozen=True)
class TextDelta:
    text: str
    index: int = 0
    logprobs: list[TokenLogprob] | None = None
    tokens: int = 0  # tokens generated since the previous delta of this request
    refusal: bool = False  # the text is the model's refusal, not content


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call: ``call_id`` and ``name`` come once, with its first piece."""

    call_index: int
    arguments: str
    call_id: str | None = None
    name: str | None = None
    index: int = 0
    tokens: int = 0


@dataclass(frozen=True)
class Finished:
    """One choice is complete; ``completion_tokens`` counts that choice's tokens."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    index: int = 0


@dataclass(frozen=True)
class UsageReport:
    """Exact counts for the whole request, when the engine reports them only at the end (upstreams).

    An engine that has no exact count sends none: the prompt is then charged at Started's
    ``prompt_charge``, and the completion at what each Finished counts.
    """

    prompt_tokens: int
    completion_tokens: int
    extra_cost: int = 0  # credits beyond the tokens, as in Started


@dataclass(frozen=True)
class Citations:
    """Sources a choice's text cites, with character offsets into that choice's whole text."""

    annotations: list[Annotation]
    index: int = 0


ProviderEvent = Started | Running | TextDelta | ToolCallDelta | Citations | Finished | UsageReport


@dataclass
class ChoiceResult:
    text: str = ""
    reason: FinishReason = "stop"
    refusal: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    annotations: list[Annotation] | None = None


@dataclass
class Completion:
    choices: list[ChoiceResult]
    prompt_tokens: int
    completion_tokens: int
    extra_cost: int = 0


class Provider(Protocol):
    """Generates chat completions for the catalogue models it serves.

    ``stream`` yields ``Started`` once the request is checked and measured, then ``Running`` once the
    engine has taken it (errors until then are refusals that can still become HTTP statuses), then
    deltas, then one ``Finished`` per choice.
    Closing the iterator early cancels the generation.
    """

    async def start(self) -> None: ...

    def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]: ...

    def stats(self) -> dict[str, int]:
        """Load figures for health checks: busy and queued requests, and the like."""
        ...

    def health(self) -> list[dict[str, object]]:
        """One entry per deployment behind this provider, with at least ``deployment`` and ``up``."""
        ...

    async def aclose(self) -> None: ...


def new_call_id() -> str:
    """An id for a tool call that came without one."""
    return "call_" + uuid.uuid4().hex[:24]


async def collect(events: AsyncIterator[ProviderEvent]) -> Completion:
    """Drain a provider stream into one completion with every choice."""
    choices: dict[int, ChoiceResult] = {}
    prompt_tokens = completion_tokens = extra_cost = 0
    reported = False
    async for event in events:
        if isinstance(event, Started):
            prompt_tokens = event.prompt_charge
            continue
        if isinstance(event, Running):
            continue
        if isinstance(event, UsageReport):
            prompt_tokens, completion_tokens = event.prompt_tokens, event.completion_tokens
            extra_cost = event.extra_cost
            reported = True
            continue
        choice = choices.setdefault(event.index, ChoiceResult())
        if isinstance(event, TextDelta) and event.refusal:
            choice.refusal = (choice.refusal or "") + event.text
        elif isinstance(event, TextDelta):
            choice.text += event.text
            if event.logprobs is not None:
                choice.logprobs = (choice.logprobs or []) + event.logprobs
        elif isinstance(event, Citations):
            choice.annotations = (choice.annotations or []) + event.annotations
        elif isinstance(event, ToolCallDelta):
            calls = choice.tool_calls
            if event.call_id is not None or event.call_index >= len(calls):
                call = FunctionCall(name=event.name or "", arguments="")
                calls.append(ToolCall(id=event.call_id or new_call_id(), function=call))
            target = calls[event.call_index] if event.call_index < len(calls) else calls[-1]
            target.function.arguments += event.arguments
        else:
            choice.reason = event.reason
            if not reported:
                completion_tokens += event.completion_tokens
    return Completion([choices[i] for i in sorted(choices)], prompt_tokens, completion_tokens, extra_cost)
