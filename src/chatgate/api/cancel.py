"""Work for a client that may leave before its answer starts: its leaving cancels the work."""

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response


async def cancel_when_gone(request: Request, task: asyncio.Task[object]) -> None:
    """Cancels ``task`` if the client disconnects (its body is read, so nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def unless_gone(request: Request, work: Callable[[], Awaitable[Response]]) -> Response:
    """``work``'s response; a 499 nobody reads if the client left first (the work is cancelled,
    which gives back what it reserved)."""
    this = asyncio.current_task()
    assert this is not None
    watcher = asyncio.create_task(cancel_when_gone(request, this))
    try:
        return await work()
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and this.uncancel() == 0:
            return Response(status_code=499)
        raise
    finally:
        watcher.cancel()
