"""The in-process embedding engine as an Embedder: a bounded queue, batches spread over worker threads.

Tokenizing and encoding are CPU work: each job (a request's texts to tokenize, one batch to encode)
runs on one of the deployment's ``workers`` threads while it holds one of the host's heavy-work
slots (providers/heavy.py), so every chatgate process on the host shares one bound. A job waiting
for either is dropped if its request is cancelled; one that has started runs to its end.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from chatgate.aio import to_the_end
from chatgate.config import LocalEmbeddingDeployment
from chatgate.errors import EngineBusy
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings import assets
from chatgate.providers.embeddings.base import (
    Accept,
    EmbeddingPlan,
    Embeddings,
    Limits,
    check_dimensions,
    check_total,
    ignore,
    plan,
    shorten,
    too_long,
)
from chatgate.providers.embeddings.engine import Encoder, Pooling, batches
from chatgate.providers.heavy import HeavyWork
from chatgate.providers.local.assets import Progress
from chatgate.providers.local.pool import ThreadBudget

if TYPE_CHECKING:
    from chatgate.providers.embeddings.base import Vectors

T = TypeVar("T")
R = TypeVar("R")
PATH_MODEL_TOKENS = 512  # a model given by path, without max_input_tokens: BERT's usual positions


def load(
    deployment: LocalEmbeddingDeployment, model_dir: Path, progress: Progress | None = None
) -> tuple[Encoder, int]:
    """The deployment's encoder, and the most tokens one input may have."""
    if deployment.asset is not None:
        asset = assets.resolve(deployment.asset)
        directory = assets.ensure(asset, model_dir, progress)
        longest = min(asset.max_input_tokens, deployment.max_input_tokens or asset.max_input_tokens)
        return Encoder(directory, Pooling(asset.pooling, asset.normalize)), longest
    assert deployment.path is not None
    encoder = Encoder(deployment.path, Pooling(deployment.pooling, deployment.normalize))
    return encoder, deployment.max_input_tokens or PATH_MODEL_TOKENS


class LocalEmbedder:
    def __init__(
        self,
        name: str,
        deployment: LocalEmbeddingDeployment,
        encoder: Encoder,
        max_input_tokens: int,
        budget: ThreadBudget | None = None,
        heavy: HeavyWork | None = None,
    ) -> None:
        self.name = name
        self.deployment = deployment
        self.encoder = encoder
        self.limits = Limits(max_input_tokens=max_input_tokens, special_tokens=encoder.special_tokens)
        self._budget = budget
        self._heavy = heavy or HeavyWork(None, slots=deployment.workers)
        self._threads = asyncio.Semaphore(deployment.workers)  # a job holds a slot only with a thread free
        self._pool = ThreadPoolExecutor(deployment.workers, thread_name_prefix=f"embed-{name}")
        self.in_flight = 0
        self.requests = 0

    @property
    def dimensions(self) -> int | None:
        return self.encoder.dimensions

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def stats(self) -> dict[str, int]:
        return {"workers": self.deployment.workers, "in_flight": self.in_flight, "requests": self.requests}

    def health(self) -> list[dict[str, object]]:
        return [
            {
                "deployment": f"local:{self.deployment.asset or self.deployment.path}",
                "up": True,
                **self.stats(),
            }
        ]

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan:
        check_dimensions(request.dimensions, self.encoder.dimensions, self.deployment.matryoshka, self.name)
        return plan(request, self.limits, vocabulary=self.encoder.vocabulary)

    async def run(self, work: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings:
        if self.in_flight >= self.deployment.workers + self.deployment.max_queue:
            raise EngineBusy(
                f"The embedding model '{self.name}' has {self.in_flight} requests in hand; retry after a moment.",
                retry_after=1,
            )
        self.in_flight += 1
        self.requests += 1
        try:
            sequences = work.token_ids
            if sequences is None:
                assert work.texts is not None
                sequences = await self._on_worker(self.encoder.tokenize, work.texts)
                for i, ids in enumerate(sequences):
                    if len(ids) > self.limits.max_input_tokens:
                        raise too_long(None if work.single else i, len(ids), self.limits.max_input_tokens)
            tokens = sum(len(ids) for ids in sequences)
            check_total(tokens, self.limits)
            accepted(tokens)  # read and counted: billable from here, even if the client leaves
            groups = batches(sequences)
            parts = await asyncio.gather(
                *(self._on_worker(self.encoder.encode, [sequences[i] for i in group]) for group in groups)
            )
            import numpy as np  # loaded with the model, not with the gateway (see embeddings/base.py)

            vectors: Vectors = np.empty((len(sequences), self.encoder.dimensions), np.float32)
            for group, part in zip(groups, parts, strict=True):
                vectors[group] = part
            return Embeddings(
                shorten(vectors, work.dimensions, normalize=self.encoder.pooling.normalize), tokens
            )
        finally:
            self.in_flight -= 1

    async def _on_worker(self, job: Callable[[T], R], argument: T) -> R:
        budget = self._budget

        def counted() -> R:
            if budget is None:
                return job(argument)
            budget.begin()  # the chat engines give up a thread while this one computes
            try:
                return job(argument)
            finally:
                budget.end()

        async with self._threads, self._heavy.slot():
            return await to_the_end(asyncio.get_running_loop().run_in_executor(self._pool, counted))
