"""Server-sent events: one ``data:`` frame per chunk, errors after the first byte in the stream, then [DONE].

The Responses and Messages APIs send typed events instead: ``event: <type>`` before each ``data:``
line, no [DONE], and a failure after the first byte as an event of the API's own shape.
"""

import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from chatgate.api.errors import envelope
from chatgate.api.trace import TRACE_HEADER
from chatgate.errors import ChatgateError, EngineFailure
from chatgate.protocol.base import WireModel

log = logging.getLogger("chatgate.api")

DONE = b"data: [DONE]\n\n"


def frame(model: WireModel) -> bytes:
    return b"data: " + model.model_dump_json().encode() + b"\n\n"


async def frames(chunks: AsyncIterator[WireModel], trace_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield frame(chunk)
    except ChatgateError as exc:
        yield frame(envelope(exc, trace_id))
    except Exception:
        log.exception("stream failed", extra={"trace_id": trace_id})
        failure = EngineFailure("The server had an error while generating.", code="internal_error")
        yield frame(envelope(failure, trace_id))
    yield DONE


class TypedEvent(Protocol):
    @property
    def type(self) -> str: ...

    def model_dump_json(self) -> str: ...


def event_frame(event: TypedEvent) -> bytes:
    return b"event: " + event.type.encode() + b"\ndata: " + event.model_dump_json().encode() + b"\n\n"


async def event_frames(
    events: AsyncIterator[TypedEvent], trace_id: str, failure: Callable[[ChatgateError], TypedEvent]
) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event_frame(event)
    except ChatgateError as exc:
        yield event_frame(failure(exc))
    except Exception:
        log.exception("stream failed", extra={"trace_id": trace_id})
        yield event_frame(
            failure(EngineFailure("The server had an error while generating.", code="internal_error"))
        )


class ChunkStream(StreamingResponse):
    """An SSE response that closes its chunk stream however the response ends, even unstarted."""

    def __init__(
        self,
        chunks: AsyncIterator[WireModel],
        trace_id: str,
        headers: dict[str, str],
        body: AsyncIterator[bytes] | None = None,
    ) -> None:
        self._chunks = chunks
        content = body if body is not None else frames(chunks, trace_id)
        super().__init__(content, media_type="text/event-stream", headers=headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the response ended (done, failed, the client gone, never started): closing the
            # chunk stream stops generation and settles the request's cost, now rather than at GC.
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()


def _headers(trace_id: str, headers: dict[str, str] | None) -> dict[str, str]:
    return {"cache-control": "no-cache", "x-accel-buffering": "no", TRACE_HEADER: trace_id, **(headers or {})}


def sse_response(
    chunks: AsyncIterator[WireModel], trace_id: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    return ChunkStream(chunks, trace_id, _headers(trace_id, headers))


def event_stream_response(
    events: AsyncIterator[WireModel],
    trace_id: str,
    headers: dict[str, str] | None,
    failure: Callable[[ChatgateError], TypedEvent],
) -> StreamingResponse:
    """Typed events (``events`` yields models with a ``type``), a late failure sent as ``failure`` makes it."""
    body = event_frames(events, trace_id, failure)  # type: ignore[arg-type]
    return ChunkStream(events, trace_id, _headers(trace_id, headers), body)
