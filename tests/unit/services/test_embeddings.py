"""Embeddings through the metering unit, against a store of credits in memory: reserved on the
request's bytes before anything is tokenized, settled on the exact count, nothing taken or held by a
refusal or a failure, the inputs paid for once the engine has read them; the engine's work waits
for the host's heavy-work bound."""

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chatgate.config import LocalEmbeddingDeployment, Price
from chatgate.errors import EngineBusy, InsufficientQuota, InvalidRequest
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings.base import (
    Accept,
    EmbeddingPlan,
    Embeddings,
    Limits,
    ignore,
    plan,
)
from chatgate.providers.embeddings.engine import Encoder
from chatgate.providers.embeddings.local import LocalEmbedder
from chatgate.providers.heavy import HeavyWork
from chatgate.services.auth import Principal
from chatgate.services.catalogue import EmbeddingRoute, ModelRegistry
from chatgate.services.embeddings import EmbeddingService
from chatgate.services.metering import Caller, Metering
from tests.unit.fakes import CountingLimiter, FakeStore, Refusals
from tests.unit.providers.embeddings.conftest import loaded, model_dir  # noqa: F401 (fixtures)

USER = Principal(user_id=1, token_id=None, credits_left=1000)
BALANCE = 1000
TEXTS = ["The cat sat on the mat.", "Quarterly revenue grew by 12%."]
BYTES_BOUND = sum(len(t.encode()) + 2 for t in TEXTS)  # what is reserved: bytes and [CLS], [SEP]


class Scripted:
    """An embedding engine that reads its inputs (``accepted`` with ``tokens``) and then answers,
    fails with ``fail``, or waits on ``release``. A fake engine: the unit under test is the money."""

    def __init__(self, tokens: int = 9, fail: Exception | None = None, read_first: bool = True) -> None:
        self.tokens = tokens
        self.fail = fail
        self.read_first = read_first
        self.release: asyncio.Event | None = None
        self.reading = asyncio.Event()

    @property
    def dimensions(self) -> int | None:
        return 3

    async def start(self) -> None:
        return None

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan:
        return plan(request, Limits())

    async def run(self, work: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings:
        if self.read_first:
            accepted(self.tokens)
        self.reading.set()
        if self.release is not None:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return Embeddings(np.ones((work.count, 3), np.float32), self.tokens)

    def stats(self) -> dict[str, int]:
        return {}

    def health(self) -> list[dict[str, object]]:
        return []

    async def aclose(self) -> None:
        return None


class Setup:
    def __init__(self, embedder: object, balance: int = BALANCE) -> None:
        self.store = FakeStore()
        self.store.grant(1, balance)
        self.limiter = CountingLimiter()
        self.refusals = Refusals()
        route = EmbeddingRoute("e", "me", 0, embedder, Price())
        registry = ModelRegistry([], {}, [route])
        self.metering = Metering(self.store, self.limiter, self.refusals, owner="me", models=registry)
        self.service = EmbeddingService(registry, self.metering)
        self.requests = 0
        self.reserved: list[int] = []
        reserve = self.store.reserve

        async def watched(**held: Any) -> bool:
            self.reserved.append(held["amount"])
            return await reserve(**held)

        self.store.reserve = watched  # type: ignore[method-assign]

    @property
    def caller(self) -> Caller:
        """A new request's caller (each with its own request id)."""
        self.requests += 1
        return Caller(USER, f"t{self.requests}")

    def charged(self) -> int:
        return BALANCE - self.store.balances[1]

    def conserved(self) -> None:
        """Nothing held, the ledger adds up, the limiter told of every admitted request once."""
        assert not self.store.open
        assert self.store.discrepancies() == []
        assert self.limiter.balanced, (self.limiter.admitted, self.limiter.tokens)


def request(inputs: object = TEXTS) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "e", "input": inputs})


async def test_reserved_on_the_bytes_and_settled_on_the_exact_count() -> None:
    s = Setup(Scripted(tokens=9))
    answer, _ = await s.service.create(s.caller, request())
    assert s.reserved == [BYTES_BOUND] and s.charged() == 9
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 9
    row = s.store.usage[0]
    assert (row.status, row.prompt_tokens, row.completion_tokens, row.cost) == ("ok", 9, 0, 9)
    assert row.api == "embeddings"
    assert s.limiter.tokens == [9]
    s.conserved()


async def test_bad_input_is_refused_before_any_limit_or_credit() -> None:
    s = Setup(Scripted())
    with pytest.raises(InvalidRequest) as caught:
        await s.service.create(s.caller, request(["ok", ""]))
    assert caught.value.param == "input[1]"
    assert s.reserved == [] and s.limiter.admitted == 0 and s.charged() == 0
    assert [(r.error_code, r.api) for r in s.refusals.rows] == [("invalid_value", "embeddings")]
    s.conserved()


async def test_a_request_past_the_balance_takes_nothing() -> None:
    s = Setup(Scripted(), balance=BYTES_BOUND - 1)
    with pytest.raises(InsufficientQuota):
        await s.service.create(s.caller, request())
    assert s.store.balances[1] == BYTES_BOUND - 1 and not s.store.usage
    assert [r.error_code for r in s.refusals.rows] == ["insufficient_quota"]
    s.conserved()


async def test_a_token_with_nothing_left_is_refused_unread() -> None:
    s = Setup(Scripted())
    broke = Caller(Principal(user_id=1, token_id=None, credits_left=0), "t2")
    with pytest.raises(InsufficientQuota):
        s.service.check_credits(broke)
    assert s.limiter.admitted == 0 and [(r.model, r.api) for r in s.refusals.rows] == [("", "embeddings")]


@pytest.mark.parametrize("read_first", [True, False])
async def test_a_failure_after_admission_returns_no_vectors_and_costs_nothing(read_first: bool) -> None:
    s = Setup(Scripted(fail=EngineBusy("busy", retry_after=1), read_first=read_first))
    with pytest.raises(EngineBusy):
        await s.service.create(s.caller, request())
    assert s.charged() == 0 and s.store.usage[0].status == "error" and s.limiter.tokens == [0]
    s.conserved()


@pytest.mark.parametrize(("read_first", "paid"), [(True, 9), (False, 0)])
async def test_a_client_that_leaves_pays_for_the_inputs_once_they_were_read(
    read_first: bool, paid: int
) -> None:
    engine = Scripted(tokens=9, read_first=read_first)
    engine.release = asyncio.Event()
    s = Setup(engine)
    task = asyncio.create_task(s.service.create(s.caller, request()))
    await engine.reading.wait()
    task.cancel()  # the client went away (api/cancel.py cancels the request's task)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.charged() == paid and s.store.usage[0].status == "cancelled"
    s.conserved()


async def test_the_local_engine_waits_for_the_host_s_heavy_work_bound(
    loaded: tuple[Encoder, int],  # noqa: F811
    tmp_path: Path,
) -> None:
    """With the host's one slot held elsewhere, nothing is tokenized: a client that leaves then pays
    nothing. Once the slot is free, the request is charged the tokenizer's exact count."""
    encoder, longest = loaded
    heavy = HeavyWork(tmp_path, slots=1)
    other = HeavyWork(tmp_path, slots=1)  # another chatgate process on this host
    deployment = LocalEmbeddingDeployment(kind="local_embedding", asset="all-minilm-l6-v2")
    embedder = LocalEmbedder("e", deployment, encoder, longest, heavy=heavy)
    s = Setup(embedder)
    try:
        async with other.slot():
            task = asyncio.create_task(s.service.create(s.caller, request()))
            while not s.store.open:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            assert heavy.running == 0  # reserved, waiting for the slot: nothing read yet
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert s.charged() == 0 and s.store.usage[0].status == "cancelled"
        answer, _ = await s.service.create(s.caller, request())
        exact = sum(len(ids) for ids in encoder.tokenize(TEXTS))
        assert answer.usage.prompt_tokens == exact < BYTES_BOUND and s.charged() == exact
        assert s.reserved == [BYTES_BOUND, BYTES_BOUND]
        s.conserved()
    finally:
        await embedder.aclose()
        heavy.close()
        other.close()
