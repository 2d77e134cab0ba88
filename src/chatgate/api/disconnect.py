"""Requests whose client leaves before the answer starts are cancelled, so their work stops and their credits come back."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response

T = TypeVar("T")
GONE = 499  # nginx's "client closed request": logged, never read by anyone


async def cancel_when_gone(request: Request, task: asyncio.Task[object]) -> None:
    """Cancels ``task`` if the client disconnects (its body is read, so nothing else can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    task.cancel()


async def unless_gone(request: Request, work: Awaitable[T]) -> T | Response:
    """``work``'s result, or a 499 once the client has gone (the work cancelled)."""
    this = asyncio.current_task()
    assert this is not None
    watcher = asyncio.create_task(cancel_when_gone(request, this))
    try:
        return await work
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and this.uncancel() == 0:
            return Response(status_code=GONE)
        raise
    finally:
        watcher.cancel()
