"""Server-sent events: one ``data:`` frame per chunk, errors after the first byte in the stream, then [DONE]."""

import logging
from collections.abc import AsyncIterator

import anyio
from starlette.responses import StreamingResponse

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
    finally:
        # Close the chunk stream now, even when the client went away: that stops generation and
        # settles the request's cost without waiting for garbage collection.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()
    yield DONE


def sse_response(
    chunks: AsyncIterator[WireModel], trace_id: str, headers: dict[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        frames(chunks, trace_id),
        media_type="text/event-stream",
        headers={
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            TRACE_HEADER: trace_id,
            **(headers or {}),
        },
    )
