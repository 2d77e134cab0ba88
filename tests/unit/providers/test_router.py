"""The router's fallback: a later attempt never asks for more output than the first one reserved."""

from collections.abc import AsyncGenerator

import pytest

from chatgate.errors import UpstreamFailed
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Finished, ProviderEvent, Running, Started, collect
from chatgate.providers.router import Deployment, RouterProvider


class Attempt:
    """Reserves on its own default output bound, and fails before output if told to."""

    def __init__(self, default_limit: int, *, fails: bool) -> None:
        self.default_limit = default_limit
        self.fails = fails
        self.limits: list[int | None] = []

    async def start(self) -> None:
        return None

    async def stream(self, request: ChatCompletionRequest) -> AsyncGenerator[ProviderEvent, None]:
        self.limits.append(request.token_limit)
        limit = request.token_limit or self.default_limit
        yield Started(prompt_tokens=5, max_completion_tokens=limit * (request.n or 1))
        if self.fails:
            raise UpstreamFailed("down")
        yield Running()
        yield Finished("stop", 5, limit)

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return []

    async def aclose(self) -> None:
        return None


def router(first: Attempt, second: Attempt) -> RouterProvider:
    deployments = [Deployment("first", first), Deployment("second", second)]
    routed = RouterProvider(deployments, retries=1, backoff=0)
    order = iter(deployments)
    routed.pick = lambda exclude: next(order, None)  # type: ignore[method-assign]
    return routed


@pytest.mark.parametrize(("n", "client_limit", "sent"), [(1, None, 10), (2, None, 10), (1, 50, 50)])
async def test_a_fallback_asks_for_no_more_than_was_reserved(
    n: int, client_limit: int | None, sent: int
) -> None:
    first, second = Attempt(10, fails=True), Attempt(4096, fails=False)
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": n, "max_tokens": client_limit}
    )
    events = [event async for event in router(first, second).stream(request)]
    started = [e for e in events if isinstance(e, Started)]
    assert len(started) == 1 and started[0].max_completion_tokens == sent * n  # reserved once
    assert first.limits == [client_limit] and second.limits == [sent]


async def test_the_request_itself_is_left_as_the_client_sent_it() -> None:
    first, second = Attempt(10, fails=True), Attempt(4096, fails=False)
    request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    completion = await collect(router(first, second).stream(request))
    assert completion.completion_tokens == 10 and request.token_limit is None
