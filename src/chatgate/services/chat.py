"""Chat completions: check what a request asks for, run it on its model's provider, shape the answer."""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import anyio

from chatgate.errors import ChatgateError, InvalidRequest
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
    ChoiceResult,
    Citations,
    Finished,
    ProviderEvent,
    Running,
    Started,
    TextDelta,
    UsageReport,
    collect,
)
from chatgate.providers.base import ToolCallDelta as ToolPiece
from chatgate.providers.images.prepare import ImagePreparer, has_images
from chatgate.services.auth import Principal
from chatgate.services.catalogue import ModelRegistry, Route
from chatgate.services.metrics import UNKNOWN_MODEL, Metrics
from chatgate.services.quota import QuotaService, Reservation
from chatgate.services.ratelimit import RateLimiter
from chatgate.services.usage import UsageRecorder
from chatgate.storage.ledger import Refund

requests_log = logging.getLogger("chatgate.requests")  # one JSON line per request


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
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


@dataclass(frozen=True)
class Caller:
    principal: Principal
    trace_id: str


@dataclass
class Admitted:
    """A request past every check, with its credits reserved and its provider stream open."""

    route: Route
    events: AsyncGenerator[ProviderEvent, None]
    prompt_tokens: int
    reservation: Reservation
    headers: dict[str, str]
    started: float


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


@dataclass
class Tally:
    delivered: int = 0  # completion tokens in the deltas sent so far
    completion: int = 0  # completion tokens of the choices that finished
    reported: UsageReport | None = None  # exact totals, from engines that count at the end


class ChatService:
    def __init__(
        self,
        registry: ModelRegistry,
        quota: QuotaService,
        limiter: RateLimiter,
        usage: UsageRecorder,
        metrics: Metrics | None = None,
        images: ImagePreparer | None = None,
    ) -> None:
        self.images = images
        self.registry = registry
        self.quota = quota
        self.limiter = limiter
        self.usage = usage
        self.metrics = metrics or Metrics()

    async def complete(
        self, caller: Caller, request: ChatCompletionRequest
    ) -> tuple[ChatCompletion, dict[str, str]]:
        admitted = await self._admit(caller, request)
        try:
            result = await collect(admitted.events)
        except asyncio.CancelledError:  # the client left before its answer was ready
            await self._settle(caller, admitted, 0, "cancelled", None)
            raise
        except BaseException as exc:
            await self._settle(caller, admitted, 0, "error", error_code(exc))
            if isinstance(exc, ChatgateError):
                exc.headers = {**admitted.headers, **exc.headers}
            raise
        if result.prompt_tokens:  # the engine's exact count replaces the estimate reserved on
            admitted.prompt_tokens = result.prompt_tokens
        await self._settle(caller, admitted, result.completion_tokens, "ok", None, result.extra_cost)
        wants_logprobs = bool(request.logprobs)
        completion = ChatCompletion(
            id=_completion_id(),
            created=int(time.time()),
            model=admitted.route.name,
            system_fingerprint=admitted.route.fingerprint,
            choices=[
                Choice(
                    index=index,
                    message=_message(choice),
                    logprobs=ChoiceLogprobs(content=choice.logprobs or []) if wants_logprobs else None,
                    finish_reason=choice.reason,
                )
                for index, choice in enumerate(result.choices)
            ],
            usage=_usage(admitted.prompt_tokens, result.completion_tokens),
        )
        return completion, admitted.headers

    async def stream(
        self, caller: Caller, request: ChatCompletionRequest
    ) -> tuple[AsyncIterator[ChatCompletionChunk], dict[str, str]]:
        """Admit the request and return its chunks.

        Everything that can refuse the request (unknown model, bad values, limits, quota, a full
        queue, a prompt too long) happens before this returns, so it can still become an HTTP status.
        """
        admitted = await self._admit(caller, request)
        stream = MeteredStream(
            self._metered(caller, admitted, request), lambda: self._abandon(caller, admitted)
        )
        return stream, admitted.headers

    async def _abandon(self, caller: Caller, admitted: Admitted) -> None:
        """The client left before the stream was read at all: release the engine, refund everything."""
        with anyio.CancelScope(shield=True):
            await admitted.events.aclose()
            await self._settle(caller, admitted, 0, "cancelled", None)

    async def _admit(self, caller: Caller, request: ChatCompletionRequest) -> Admitted:
        started = time.monotonic()
        model = request.model
        recorded = False
        limits: dict[str, str] = {}  # the caller's rate-limit state, once the limiter has been asked
        try:
            route = self.registry.resolve(request.model)
            model = route.name
            caller.principal.check_model(request.model, route.name)
            check_supported(request)
            decision = await self.limiter.admit(caller.principal)
            limits = decision.headers()
            if self.images is not None and not route.handles_images and has_images(request):
                request = await self.images.prepare(request, native=route.vision)
            events = route.provider.stream(request)
            try:
                first = await anext(events)
                if not isinstance(first, Started):
                    raise RuntimeError(f"provider stream began with {first!r}, not Started")
                # Reserve before waiting for the engine, so a queue of requests can't outspend the balance.
                # Shielded: a reservation that commits must be settled too, even if this task is cancelled.
                with anyio.CancelScope(shield=True):
                    reservation = await self.quota.reserve(
                        caller.principal,
                        caller.trace_id,
                        route.price,
                        first.prompt_tokens,
                        first.max_completion_tokens,
                        first.extra_cost,
                    )
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await events.aclose()
                raise
            admitted = Admitted(route, events, first.prompt_charge, reservation, limits, started)
            try:
                running = await anext(events)
                if not isinstance(running, Running):
                    raise RuntimeError(f"provider sent {running!r} before Running")
            except BaseException as exc:
                # Nothing ran: give back the whole reservation and log the request, before any await.
                refund = self.quota.settle(admitted.reservation, 0, 0)[1]
                self.record(caller, model, started, 0, 0, 0, "error", error_code(exc), refund)
                recorded = True
                with anyio.CancelScope(shield=True):
                    await events.aclose()
                raise
        except ChatgateError as exc:
            if not recorded:
                self.record(caller, model, started, 0, 0, 0, "error", exc.code)
            exc.headers = {**limits, **exc.headers}  # a failure after admission still reports the limits
            raise
        return admitted

    async def _metered(
        self, caller: Caller, admitted: Admitted, request: ChatCompletionRequest
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        tally = Tally()
        chunks = self._chunks(admitted, request, tally)
        status, code = "cancelled", None
        try:
            async for chunk in chunks:
                yield chunk
            status = "ok"
        except ChatgateError as exc:
            status, code = "error", exc.code
            raise
        finally:
            await chunks.aclose()
            # A stream cut short costs what was delivered; a finished one what was generated (at least
            # what was delivered, when the engine reported no count).
            if status != "ok":
                used = tally.delivered
            elif tally.reported is not None:
                used = tally.completion
            else:
                used = max(tally.completion, tally.delivered)
            extra = tally.reported.extra_cost if status == "ok" and tally.reported is not None else 0
            await self._settle(caller, admitted, used, status, code, extra)

    async def _settle(
        self,
        caller: Caller,
        admitted: Admitted,
        completion_tokens: int,
        status: str,
        code: str | None,
        extra_cost: int = 0,
    ) -> None:
        """Charge the real use, release the rest of the reservation, count tokens, log the request.

        The token count is shielded: it must finish even when a disconnect is cancelling the request.
        """
        prompt_tokens = admitted.prompt_tokens if completion_tokens or status == "ok" else 0
        await self.charge(
            caller,
            admitted.route.name,
            admitted.started,
            admitted.reservation,
            (prompt_tokens, completion_tokens, extra_cost),
            status,
            code,
        )

    async def charge(
        self,
        caller: Caller,
        model: str,
        started: float,
        reservation: Reservation,
        used: tuple[int, int, int],
        status: str,
        code: str | None,
    ) -> None:
        """Settle a reservation for what was used (prompt tokens, completion tokens, extra credits),
        log the request, and count its tokens against the rate limit."""
        prompt_tokens, completion_tokens, extra_cost = used
        charged, refund = self.quota.settle(reservation, prompt_tokens, completion_tokens, extra_cost)
        # The refund and the usage row are queued before any await, so nothing can skip them.
        self.record(caller, model, started, prompt_tokens, completion_tokens, charged, status, code, refund)
        with anyio.CancelScope(shield=True):
            await self.limiter.add_tokens(caller.principal, prompt_tokens + completion_tokens)

    def record(
        self,
        caller: Caller,
        model: str,
        started: float,
        prompt_tokens: int,
        completion_tokens: int,
        cost: int,
        status: str,
        code: str | None,
        refund: Refund | None = None,
    ) -> None:
        """One request's usage row (and refund), its metrics, and its structured log line."""
        seconds = time.monotonic() - started
        latency_ms = int(seconds * 1000)
        self.usage.record(
            trace_id=caller.trace_id,
            principal=caller.principal,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost=cost,
            latency_ms=latency_ms,
            status=status,
            error_code=code,
            refund=refund,
        )
        self.metrics.request(
            model=model if model in self.registry else UNKNOWN_MODEL,  # a client's name: unbounded
            status=status,
            code=code,
            seconds=seconds,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if requests_log.isEnabledFor(logging.INFO):
            requests_log.info(
                json.dumps(
                    {
                        "event": "chat_request",
                        "trace_id": caller.trace_id,
                        "user_id": caller.principal.user_id,
                        "token_id": caller.principal.token_id,
                        "model": model,
                        "status": status,
                        "code": code,
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "cost": cost,
                        "latency_ms": latency_ms,
                    }
                )
            )

    async def _chunks(
        self, admitted: Admitted, request: ChatCompletionRequest, tally: Tally
    ) -> AsyncGenerator[ChatCompletionChunk, None]:
        route, events = admitted.route, admitted.events
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
        first_token = True
        try:
            async for event in events:
                if isinstance(event, Started | Running | Citations):
                    continue  # a stream delta has no annotations: its citations are links in the text
                if isinstance(event, UsageReport):
                    tally.reported = event
                    admitted.prompt_tokens = event.prompt_tokens
                    continue
                if event.index not in opened:
                    opened.add(event.index)
                    yield chunk([ChunkChoice(index=event.index, delta=Delta(role="assistant", content=""))])
                if first_token and isinstance(event, TextDelta | ToolPiece):
                    first_token = False
                    self.metrics.first_token(model=route.name, seconds=time.monotonic() - admitted.started)
                if isinstance(event, TextDelta):
                    logprobs = ChoiceLogprobs(content=event.logprobs) if event.logprobs is not None else None
                    delta = Delta(refusal=event.text) if event.refusal else Delta(content=event.text)
                    yield chunk([ChunkChoice(index=event.index, delta=delta, logprobs=logprobs)])
                    tally.delivered += event.tokens
                elif isinstance(event, ToolPiece):
                    yield chunk(
                        [ChunkChoice(index=event.index, delta=Delta(tool_calls=[_tool_delta(event)]))]
                    )
                    tally.delivered += event.tokens
                elif isinstance(event, Finished):
                    tally.completion += event.completion_tokens
                    yield chunk([ChunkChoice(index=event.index, delta=Delta(), finish_reason=event.reason)])
            if tally.reported is not None:
                tally.completion = tally.reported.completion_tokens
            if include_usage:
                yield chunk([], _usage(admitted.prompt_tokens, tally.completion))
        finally:
            await events.aclose()


def error_code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, ChatgateError) else "internal_error"


def _tool_delta(piece: ToolPiece) -> ToolCallDelta:
    if piece.call_id is not None:
        return ToolCallDelta(
            index=piece.call_index,
            id=piece.call_id,
            type="function",
            function=FunctionCallDelta(name=piece.name, arguments=piece.arguments),
        )
    return ToolCallDelta(index=piece.call_index, function=FunctionCallDelta(arguments=piece.arguments))
