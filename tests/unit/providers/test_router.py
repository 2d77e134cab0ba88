"""The router: a request is bounded at the most any deployment can cost, retried before output on
another deployment, and sent only to the deployments that take it; disabled deployments get no
traffic; every attempt is told to the observer."""

from collections.abc import AsyncGenerator

import pytest

from chatgate.errors import EngineBusy, ModelUnavailable, UnsupportedParameter, UpstreamFailed
from chatgate.protocol.requests import ChatCompletionRequest
from chatgate.providers.base import Accepted, Bound, Finished, Plan, ProviderEvent, TextDelta, collect
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


class Scripted:
    """A deployment that answers "OK", or fails with the error it is given (which may change)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.calls = 0

    async def start(self) -> None:
        return None

    def prepare(self, request: ChatCompletionRequest) -> Plan:
        return Plan(request, Bound(1, 1))

    async def run(self, plan: Plan) -> AsyncGenerator[ProviderEvent, None]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        yield Accepted(1)
        yield TextDelta("OK", tokens=1)
        yield Finished("stop", 1, 1)

    def stats(self) -> dict[str, int]:
        return {"queued": 1}

    def health(self) -> list[dict[str, object]]:
        return [{"deployment": "inner", "up": True, "queued": 1}]

    async def aclose(self) -> None:
        return None


class Seen:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, BaseException | None]] = []

    def attempted(self, deployment: Deployment, seconds: float, exc: BaseException | None) -> None:
        assert seconds >= 0
        self.attempts.append((deployment.id, exc))


HI = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})


async def test_a_disabled_deployment_is_never_chosen_and_all_disabled_is_unavailable() -> None:
    on, off = Scripted(), Scripted()
    deployments = [Deployment("on", on, id="a"), Deployment("off", off, id="b", disabled=True)]
    routed = RouterProvider(deployments, retries=2, backoff=0)
    for _ in range(20):
        await collect(routed.run(routed.prepare(HI)))
    assert on.calls == 20 and off.calls == 0
    assert [d["state"] for d in routed.health()] == ["up", "disabled"]
    assert routed.health()[1]["up"] is False and routed.health()[0]["queued"] == 1
    assert routed.stats()["healthy"] == 1 and routed.stats()["queued"] == 2  # its engines' own figures
    deployments[0].disabled = True
    with pytest.raises(ModelUnavailable):
        routed.prepare(HI)  # refused before anything is reserved
    assert on.calls == 20


async def test_every_attempt_is_observed_and_only_failures_cool_a_deployment_down() -> None:
    seen = Seen()
    busy, broken, fine = (
        Scripted(EngineBusy("full", retry_after=1)),
        Scripted(UpstreamFailed("down")),
        Scripted(),
    )
    deployments = [Deployment("busy", busy), Deployment("broken", broken), Deployment("fine", fine)]
    routed = RouterProvider(deployments, retries=2, backoff=0, failure_threshold=1, observer=seen)
    order = iter(deployments)
    routed.pick = lambda exclude, among=None: next(order, None)  # type: ignore[method-assign]
    await collect(routed.run(routed.prepare(HI)))
    assert [(name, type(exc).__name__) for name, exc in seen.attempts] == [
        ("busy", "EngineBusy"),
        ("broken", "UpstreamFailed"),
        ("fine", "NoneType"),
    ]
    states = {d["deployment"]: d["state"] for d in routed.health()}
    assert states == {"busy": "up", "broken": "cooling", "fine": "up"}  # busy is not failing


async def test_a_client_that_leaves_is_observed_as_a_cancellation() -> None:
    seen = Seen()
    routed = RouterProvider([Deployment("one", Scripted())], observer=seen)
    events = routed.run(routed.prepare(HI))
    await anext(events)  # accepted
    await events.aclose()
    assert len(seen.attempts) == 1 and isinstance(seen.attempts[0][1], GeneratorExit)
