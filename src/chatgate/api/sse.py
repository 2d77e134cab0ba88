"""Server-sent events: one ``data:`` frame per chunk, errors after the first byte in the stream, then [DONE]."""

import logging
from collections.abc import AsyncIterator

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


class ChunkStream(StreamingResponse):
    """An SSE response that closes its chunk stream however the response ends, even unstarted."""

    def __init__(self, chunks: AsyncIterator[WireModel], trace_id: str, headers: dict[str, str]) -> None:
        self._chunks = chunks
        super().__init__(frames(chunks, trace_id), media_type="text/event-stream", headers=headers)

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


def sse_response(
    chunks: AsyncIterator[WireModel], trace_id: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    return ChunkStream(
        chunks,
        trace_id,
        {"cache-control": "no-cache", "x-accel-buffering": "no", TRACE_HEADER: trace_id, **(headers or {})},
    )
