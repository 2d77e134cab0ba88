"""A stream of another API's events made from a metered chat stream, closed as one."""

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class TranslatedStream(Generic[T]):
    """The translated events of a chat stream (``source``).

    Closing it closes the source too, even when the events were never read: the source is what
    settles the request's credits (the chat service's MeteredStream refunds an unread stream).
    """

    def __init__(self, events: AsyncGenerator[T, None], source: AsyncIterator[Any]) -> None:
        self._events = events
        self._source = source

    def __aiter__(self) -> "TranslatedStream[T]":
        return self

    async def __anext__(self) -> T:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            close = getattr(self._source, "aclose", None)  # the chat service's streams all have one
            if close is not None:
                await close()
