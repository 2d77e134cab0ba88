"""The one small interface every engine and upstream implements, and the events it yields."""

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from chatgate.protocol.messages import FunctionCall, ToolCall
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.protocol.responses import Annotation, FinishReason, TokenLogprob


@dataclass(frozen=True)
class Bound:
    """The most a request can cost, computed from the request alone: what credits are reserved on."""

    prompt_tokens: int
    completion_tokens: int  # all choices together
    extra_cost: int = 0  # credits beyond the tokens (a generated image), the most it can come to

    def __add__(self, other: "Bound") -> "Bound":
        return Bound(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.extra_cost + other.extra_cost,
        )


@dataclass(frozen=True)
class Plan:
    """A request its provider has checked, and the most it can cost. Providers extend it with
    whatever they worked out cheaply and ``run`` needs."""

    request: ChatCompletionRequest
    bound: Bound


@dataclass(frozen=True)
class Accepted:
    """The engine or upstream took the request: from here its prompt is billable, even if the client
    leaves before the first token. ``prompt_tokens`` is charged for the prompt unless a UsageReport
    gives an exact count; a provider that runs several steps may send it again with a larger count.
    ``system_fingerprint`` is the configuration of the backend that took it (docs/parameters.md): an
    upstream that tells its own only in its first chunk sends Accepted again with it."""

    prompt_tokens: int
    system_fingerprint: str | None = None


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
    stop_sequence: str | None = None  # the caller's stop sequence that ended it, where the engine knows


@dataclass(frozen=True)
class UsageReport:
    """Exact counts for the whole request, when the engine reports them only at the end (upstreams).

    An engine that has no exact count sends none: the prompt is then charged at Accepted's
    ``prompt_tokens``, and the completion at what each Finished counts.
    """

    prompt_tokens: int
    completion_tokens: int
    extra_cost: int = 0  # credits beyond the tokens, as in Bound


@dataclass(frozen=True)
class Citations:
    """Sources a choice's text cites, with character offsets into that choice's whole text."""

    annotations: list[Annotation]
    index: int = 0


ProviderEvent = Accepted | TextDelta | ToolCallDelta | Citations | Finished | UsageReport


@dataclass
class ChoiceResult:
    text: str = ""
    reason: FinishReason = "stop"
    stop_sequence: str | None = None
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


PlanT = TypeVar("PlanT", bound=Plan)


class Provider(Protocol[PlanT]):
    """Generates chat completions for the catalogue models it serves, in two steps.

    ``prepare`` checks a request and bounds what it can cost, from the request alone: no network,
    no decoder, no engine, no tokenizing of a long prompt (a 400 from here costs nothing, and
    nothing has been reserved yet). ``run`` does the work, after the caller's credits are
    reserved on the plan's bound: it yields ``Accepted`` once the engine or upstream has taken the
    request (an error before then can still become an HTTP status, and a router may retry it
    elsewhere), then deltas, then one ``Finished`` per choice, then at most one ``UsageReport``.
    Closing the iterator early cancels the generation.
    """

    async def start(self) -> None: ...

    def prepare(self, request: ChatCompletionRequest) -> PlanT: ...

    def run(self, plan: PlanT) -> AsyncGenerator[ProviderEvent, None]: ...

    def stats(self) -> dict[str, int]:
        """Load figures for health checks: busy and queued requests, and the like."""
        ...

    def health(self) -> list[dict[str, object]]:
        """One entry per deployment behind this provider, with at least ``deployment`` and ``up``."""
        ...

    async def aclose(self) -> None: ...


AnyProvider = Provider[Any]  # a provider of any plan type: what routes and deployments hold


@runtime_checkable
class PromptCounter(Protocol):
    """A provider that can count a planned request's prompt without running it: the count its
    ``Accepted`` would give (exact with the model's own tokenizer, else its estimate)."""

    async def count_prompt(self, plan: Any) -> int: ...


async def count_prompt(provider: AnyProvider, plan: Plan) -> int:
    """The prompt tokens ``plan`` is charged at unless its provider reports exact usage; for a
    provider that cannot count, the plan's bound."""
    if isinstance(provider, PromptCounter):
        return await provider.count_prompt(plan)
    return plan.bound.prompt_tokens


async def generate(provider: AnyProvider, request: ChatCompletionRequest) -> Completion:
    """Prepare and run a request to the end: for steps inside a provider (a browsing model's query,
    a drawing model's plan), whose credits the outer request has already reserved."""
    return await collect(provider.run(provider.prepare(request)))


async def replay(events: list[ProviderEvent]) -> AsyncGenerator[ProviderEvent, None]:
    """Events already taken from a provider, as a stream again (to ``collect`` them)."""
    for event in events:
        yield event


def new_call_id() -> str:
    """An id for a tool call that came without one."""
    return "call_" + uuid.uuid4().hex[:24]


async def collect(events: AsyncIterator[ProviderEvent]) -> Completion:
    """Drain a provider stream into one completion with every choice."""
    choices: dict[int, ChoiceResult] = {}
    prompt_tokens = completion_tokens = extra_cost = 0
    reported = False
    async for event in events:
        if isinstance(event, Accepted):
            if not reported:
                prompt_tokens = event.prompt_tokens
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
            choice.reason, choice.stop_sequence = event.reason, event.stop_sequence
            if not reported:
                completion_tokens += event.completion_tokens
    return Completion([choices[i] for i in sorted(choices)], prompt_tokens, completion_tokens, extra_cost)
