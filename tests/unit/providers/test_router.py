"""The router: a request is bounded at the most any deployment can cost, retried before output on
another deployment, and sent only to the deployments that take it."""

from collections.abc import AsyncGenerator

import pytest

from chatgate.errors import UnsupportedParameter, UpstreamFailed
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Accepted, Bound, Finished, Plan, ProviderEvent, collect
from chatgate.providers.router import Deployment, RouterProvider


class Attempt:
    """Bounds a request on its own default output limit, and fails before output if told to."""

    def __init__(self, default_limit: int, *, fails: bool, refuses: bool = False) -> None:
        self.default_limit = default_limit
        self.fails = fails
        self.refuses = refuses
        self.runs = 0

    async def start(self) -> None:
        return None

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        if self.refuses:
            raise UnsupportedParameter("no top_k here", param="top_k")
        limit = request.token_limit or self.default_limit
        return Plan(request, Bound(5, limit * (request.n or 1)))

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        self.runs += 1
        if self.fails:
            raise UpstreamFailed("down")
        yield Accepted(5)
        yield Finished("stop", 5, plan.bound.completion_tokens)

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return []

    async def aclose(self) -> None:
        return None


def router(first: Attempt, second: Attempt) -> RouterProvider:
    deployments = [Deployment("first", first), Deployment("second", second)]
    return RouterProvider(deployments, retries=1, backoff=0)


def request(**extra: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
    )


@pytest.mark.parametrize(("n", "client_limit", "bound"), [(1, None, 4096), (2, None, 8192), (1, 50, 50)])
def test_the_bound_covers_whichever_deployment_runs_it(n: int, client_limit: int | None, bound: int) -> None:
    plan = router(Attempt(10, fails=True), Attempt(4096, fails=False)).prepare(
        request(n=n, max_tokens=client_limit)
    )
    assert plan.bound == Bound(5, bound)


async def test_a_failure_before_acceptance_is_retried_on_the_other_deployment() -> None:
    first, second = Attempt(10, fails=True), Attempt(4096, fails=False)
    routed = router(first, second)
    order = iter(routed.deployments)
    routed.pick = lambda exclude, among=None: next(order, None)  # type: ignore[method-assign]
    completion = await collect(routed.run(routed.prepare(request())))
    assert (first.runs, second.runs) == (1, 1)
    assert completion.completion_tokens == 4096


async def test_a_deployment_that_refuses_the_request_is_left_out() -> None:
    refusing, taking = Attempt(10, fails=False, refuses=True), Attempt(10, fails=False)
    routed = router(refusing, taking)
    plan = routed.prepare(request())
    assert [d.name for d in plan.plans] == ["second"]
    await collect(routed.run(plan))
    assert (refusing.runs, taking.runs) == (0, 1)
    with pytest.raises(UnsupportedParameter):
        router(Attempt(1, fails=False, refuses=True), Attempt(1, fails=False, refuses=True)).prepare(
            request()
        )
