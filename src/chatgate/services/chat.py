"""Chat completions: check what a request asks for, run it on its model's provider, shape the answer."""

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from chatgate.errors import ChatgateError, InsufficientQuota, InvalidRequest
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
from chatgate.providers.base import (
    Accepted,
    AnyProvider,
    ChoiceResult,
    Citations,
    Finished,
    Plan,
    ProviderEvent,
    TextDelta,
    UsageReport,
    collect,
)
from chatgate.providers.base import ToolCallDelta as ToolPiece
from chatgate.providers.images.input import ImageInput
from chatgate.providers.images.prepare import ImagePreparer, has_images
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.metering import Caller as Caller
from chatgate.services.metering import Charge, Meter, Metering
from chatgate.services.metrics import Metrics


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def _usage(charge: Charge) -> Usage:
    return Usage(
        prompt_tokens=charge.prompt_tokens,
        completion_tokens=charge.completion_tokens,
        total_tokens=charge.prompt_tokens + charge.completion_tokens,
    )


def check_supported(request: ChatCompletionRequest) -> None:
    """Refuse combinations that are inconsistent whatever serves them, naming the param.

    What a particular engine cannot do (audio, predictions...) is its provider's to refuse.
    """
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


def _message(result: ChoiceResult) -> ResponseMessage:
    if result.refusal is not None:
        return ResponseMessage(content=result.text or None, refusal=result.refusal)
    if result.tool_calls:
        return ResponseMessage(content=result.text or None, tool_calls=result.tool_calls)
    return ResponseMessage(content=result.text, annotations=result.annotations)


@dataclass
class Run:
    """An admitted request whose provider has begun: its first event is in, the rest to follow.

    Iterating it gives every event, the first included, each counted by ``meter`` as it passes;
    ``aclose`` stops the provider (the generation, the upstream call). ``fingerprint`` is the
    answer's system_fingerprint: the one the deployment that took the request told (in its
    Accepted), else the route's.
    """

    route: Route
    meter: Meter
    events: AsyncGenerator[ProviderEvent, None]
    first: ProviderEvent | None  # None: the provider ended without a single event
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        self.fingerprint = self.route.fingerprint
        if self.first is not None:
            self._told(self.first)

    def __aiter__(self) -> "Run":
        return self

    async def __anext__(self) -> ProviderEvent:
        if self.first is not None:
            event, self.first = self.first, None  # counted when it came
            return event
        event = await self.events.__anext__()
        self.meter.observe(event)
        self._told(event)
        return event

    def _told(self, event: ProviderEvent) -> None:
        if isinstance(event, Accepted) and event.system_fingerprint is not None:
            self.fingerprint = event.system_fingerprint

    async def aclose(self) -> None:
        await self.events.aclose()


class MeteredStream:
    """A request's chunks. Closing it settles the request even if it was never iterated."""

    def __init__(
        self, chunks: AsyncGenerator[ChatCompletionChunk, None], abandon: Callable[[], Awaitable[None]]
    ) -> None:
        self._chunks = chunks
        self._abandon = abandon
        self._started = False
        self._closed = False

    def __aiter__(self) -> "MeteredStream":
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        self._started = True
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            await self._chunks.aclose()
        else:
            await self._abandon()


class ChatService:
    """Chat completions through the metering unit: plan (cheap checks and the cost bound), admit and
    reserve, run, settle before the answer's last byte."""

    def __init__(
        self, registry: ModelRegistry, metering: Metering, images: ImagePreparer | None = None
    ) -> None:
        self.registry = registry
        self.metering = metering
        self.images = images
        # With a model that costs nothing, an empty balance is no reason to refuse a request unread.
        self._free = any(not (r.price.prompt or r.price.completion) for r in registry.routes.values())

    @property
    def metrics(self) -> Metrics:
        """The request metrics the metering unit keeps (what ``/metrics`` shows)."""
        return self.metering.metrics

    def check_credits(self, caller: Caller) -> None:
        """Refuse a token that has no credits left before its request is even read (logged with no
        model: none was read)."""
        left = caller.principal.credits_left
        if left is not None and left <= 0 and not self._free:
            refusal = InsufficientQuota(
                "You exceeded your current quota: this API token has no credits left. Add credits."
            )
            self.metering.refused(caller, "", refusal, time.monotonic())
            raise refusal

    async def complete(
        self, caller: Caller, request: ChatCompletionRequest
    ) -> tuple[ChatCompletion, dict[str, str]]:
        run = await self.start(caller, request)
        meter = run.meter
        try:
            try:
                result = await collect(run)
            finally:
                await run.aclose()
            charge = await meter.settle()  # committed before the answer is written
        except BaseException as exc:
            await meter.close(exc)
            raise
        await meter.close()
        wants_logprobs = bool(request.logprobs)
        choices = [
            Choice(
                index=index,
                message=_message(choice),
                logprobs=ChoiceLogprobs(content=choice.logprobs or []) if wants_logprobs else None,
                finish_reason=choice.reason,
            )
            for index, choice in enumerate(result.choices)
        ]
        for made, choice in zip(choices, result.choices, strict=True):
            made._stop_sequence = choice.stop_sequence
        completion = ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=run.route.name,
            system_fingerprint=run.fingerprint,
            choices=choices,
            usage=_usage(charge),
        )
        return completion, meter.headers

    async def stream(
        self, caller: Caller, request: ChatCompletionRequest
    ) -> tuple[AsyncIterator[ChatCompletionChunk], dict[str, str]]:
        """Admit the request and return its chunks.

        Everything that can refuse the request (unknown model, bad values, limits, quota, a full
        queue, a prompt too long) happens before this returns, so it can still become an HTTP status.
        """
        run = await self.start(caller, request)
        stream = MeteredStream(self._chunks(run, request), lambda: self._abandon(run))
        return stream, run.meter.headers

    def plan(self, route: Route, request: ChatCompletionRequest) -> tuple[AnyProvider, Plan]:
        """The provider that will run the request on ``route``, and its plan: checks and the cost
        bound, from the request alone (nothing fetched, decoded or tokenized at length)."""
        check_supported(request)
        provider: AnyProvider = route.provider
        if self.images is not None and not route.handles_images and has_images(request):
            provider = ImageInput(provider, self.images, native=route.vision)
        return provider, provider.prepare(request)

    async def start(self, caller: Caller, request: ChatCompletionRequest) -> Run:
        """Plan, admit, reserve, and run the request up to its first event (an error until then
        is a refusal, recorded, that can still become an HTTP status).

        The caller (this service's ``complete`` and ``stream``, or another API's route built on
        chat) then iterates the Run, calls ``run.meter.settle()`` before writing its answer's last
        byte, and ends with ``run.meter.close()`` (``close(exc)`` and ``run.aclose()`` on failure).
        """
        started = time.monotonic()
        try:
            route = self.registry.resolve(request.model)
            caller.principal.check_model(request.model, route.name)
            provider, plan = self.plan(route, request)
        except ChatgateError as exc:
            self.metering.refused(caller, request.model, exc, started)
            raise
        meter = self.metering.admit(caller, model=route.name, price=route.price, bound=plan.bound)
        await meter.open()
        events = provider.run(plan)
        try:
            first: ProviderEvent | None = await anext(events)
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            try:
                await events.aclose()
            finally:
                await meter.close(exc)
            raise
        if first is not None:
            meter.observe(first)
        return Run(route, meter, events, first)

    async def _abandon(self, run: Run) -> None:
        """The client left before the stream was read at all: release the engine, settle."""
        try:
            await run.aclose()
        finally:
            await run.meter.close(asyncio.CancelledError())

    async def _chunks(
        self, run: Run, request: ChatCompletionRequest
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        """The chunks as the events come; the final ones (each choice's finish, the usage) are held
        until the request is settled, so an answer that ends is always a recorded one."""
        route, meter = run.route, run.meter
        completion_id, created = _completion_id(), int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=route.name,
                system_fingerprint=run.fingerprint,
                choices=choices,
                usage=usage,
            )

        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        opened: set[int] = set()
        first_token = True
        final: list[ChatCompletionChunk] = []
        try:
            async for event in run:
                if isinstance(event, Accepted | Citations | UsageReport):
                    continue  # a stream delta has no annotations: its citations are links in the text
                if event.index not in opened:
                    opened.add(event.index)
                    yield chunk([ChunkChoice(index=event.index, delta=Delta(role="assistant", content=""))])
                if first_token and isinstance(event, TextDelta | ToolPiece):
                    first_token = False
                    self.metrics.first_token(model=route.name, seconds=time.monotonic() - meter.started)
                if isinstance(event, TextDelta):
                    logprobs = ChoiceLogprobs(content=event.logprobs) if event.logprobs is not None else None
                    delta = Delta(refusal=event.text) if event.refusal else Delta(content=event.text)
                    yield chunk([ChunkChoice(index=event.index, delta=delta, logprobs=logprobs)])
                elif isinstance(event, ToolPiece):
                    yield chunk(
                        [ChunkChoice(index=event.index, delta=Delta(tool_calls=[_tool_delta(event)]))]
                    )
                elif isinstance(event, Finished):
                    ending = ChunkChoice(index=event.index, delta=Delta(), finish_reason=event.reason)
                    ending._stop_sequence = event.stop_sequence
                    final.append(chunk([ending]))
            charge = await meter.settle()
        except BaseException as exc:
            try:
                await run.aclose()
            finally:
                await meter.close(exc)
            raise
        await meter.close()
        if include_usage:
            final.append(chunk([], _usage(charge)))
        for last in final:
            yield last


def _tool_delta(piece: ToolPiece) -> ToolCallDelta:
    if piece.call_id is not None:
        return ToolCallDelta(
            index=piece.call_index,
            id=piece.call_id,
            type="function",
            function=FunctionCallDelta(name=piece.name, arguments=piece.arguments),
        )
    return ToolCallDelta(index=piece.call_index, function=FunctionCallDelta(arguments=piece.arguments))
