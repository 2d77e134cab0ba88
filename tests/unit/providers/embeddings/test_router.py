"""Several deployments behind one embedding model: a retryable failure goes to another, a refusal does not."""

import numpy as np
import pytest

from chatgate.errors import ChatgateError, InvalidRequest, UpstreamFailed
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings import router
from chatgate.providers.embeddings.base import Accept, EmbeddingPlan, Embeddings, Limits, ignore, plan
from chatgate.providers.embeddings.router import Choice, EmbeddingRouter


class Scripted:
    def __init__(self, failure: ChatgateError | None, bound_extra: int = 0) -> None:
        self.failure = failure
        self.calls = 0
        self.bound_extra = bound_extra

    @property
    def dimensions(self) -> int | None:
        return 2

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return []

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan:
        p = plan(request, Limits())
        return EmbeddingPlan(p.texts, p.token_ids, p.dimensions, p.bound + self.bound_extra, p.estimate)

    async def run(self, work: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings:
        self.calls += 1
        if self.failure is not None:
            raise self.failure
        return Embeddings(np.ones((work.count, 2), np.float32), 3)


REQUEST = EmbeddingRequest(model="m", input=["a", "b"])


@pytest.fixture(autouse=True)
def first_is_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The weighted draw picks the first deployment it may: the order under test, every time."""
    monkeypatch.setattr(router.random, "choices", lambda pool, weights: [pool[0]])


async def test_a_retryable_failure_goes_to_the_other_deployment() -> None:
    broken, working = Scripted(UpstreamFailed("down")), Scripted(None, bound_extra=10)
    two = EmbeddingRouter([Choice("broken", broken), Choice("working", working)], retries=2, backoff=0)
    work = two.prepare(REQUEST)
    assert work.bound == plan(REQUEST, Limits()).bound + 10  # reserved on the largest bound
    result = await two.run(work)
    assert result.vectors.shape == (2, 2) and (broken.calls, working.calls) == (1, 1)


async def test_a_refusal_is_not_retried() -> None:
    refusing, other = Scripted(InvalidRequest("no", param="input")), Scripted(None)
    two = EmbeddingRouter([Choice("a", refusing), Choice("b", other)], backoff=0)
    with pytest.raises(InvalidRequest):
        await two.run(two.prepare(REQUEST))
    assert other.calls == 0
