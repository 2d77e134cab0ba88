"""asyncio helpers every layer may use."""

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if this task is cancelled meanwhile, then let the cancellation
    through. (anyio's shielded scopes do not hold off a plain ``task.cancel()``, which is how a
    request whose client left is cancelled.)"""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
