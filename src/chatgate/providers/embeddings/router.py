"""Several deployments behind one embedding model: weighted choice, and retries on another deployment.

An embedding request is answered whole or not at all, so a retryable failure (connection refused,
a time-out, an upstream 5xx or 429, a full local queue) is always safe to try again elsewhere.
"""

import asyncio
import random
from dataclasses import dataclass

from chatgate.errors import ChatgateError, EngineBusy
from chatgate.protocol.embeddings import EmbeddingRequest
from chatgate.providers.embeddings.base import Accept, Embedder, EmbeddingPlan, Embeddings, ignore
from chatgate.providers.router import retryable


@dataclass(eq=False)
class Choice:
    name: str
    embedder: Embedder
    weight: int = 1
    max_concurrency: int | None = None
    in_flight: int = 0
    requests: int = 0
    failures: int = 0


class EmbeddingRouter:
    def __init__(self, choices: list[Choice], *, retries: int = 2, backoff: float = 0.1) -> None:
        self.choices = choices
        self.retries = retries
        self.backoff = backoff

    @property
    def dimensions(self) -> int | None:
        known = {c.embedder.dimensions for c in self.choices} - {None}
        return known.pop() if len(known) == 1 else None

    async def start(self) -> None:
        for choice in self.choices:
            await choice.embedder.start()

    async def aclose(self) -> None:
        for choice in self.choices:
            await choice.embedder.aclose()

    def stats(self) -> dict[str, int]:
        return {"deployments": len(self.choices), "in_flight": sum(c.in_flight for c in self.choices)}

    def health(self) -> list[dict[str, object]]:
        return [
            {
                "deployment": c.name,
                "up": True,
                "in_flight": c.in_flight,
                "requests": c.requests,
                "failures": c.failures,
            }
            for c in self.choices
        ]

    def prepare(self, request: EmbeddingRequest) -> EmbeddingPlan:
        """Checked by every deployment (any may serve it), reserved on the largest bound among them."""
        plans = [c.embedder.prepare(request) for c in self.choices]
        return max(plans, key=lambda p: p.bound)

    def _pick(self, tried: set[Choice]) -> Choice | None:
        pool = [
            c
            for c in self.choices
            if c not in tried
            and c.weight > 0
            and (c.max_concurrency is None or c.in_flight < c.max_concurrency)
        ]
        if not pool:
            return None
        return random.choices(pool, weights=[c.weight for c in pool])[0]

    async def run(self, plan: EmbeddingPlan, accepted: Accept = ignore) -> Embeddings:
        tried: set[Choice] = set()
        last: ChatgateError | None = None
        for attempt in range(self.retries + 1):
            choice = self._pick(tried) or (self._pick(set()) if tried else None)
            if choice is None:
                break
            if attempt:
                await asyncio.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
            tried.add(choice)
            choice.in_flight += 1
            choice.requests += 1
            try:
                return await choice.embedder.run(plan, accepted)
            except ChatgateError as exc:
                choice.failures += 1
                if not retryable(exc):
                    raise
                last = exc
            finally:
                choice.in_flight -= 1
        if last is not None:
            raise last
        raise EngineBusy("Every deployment of this model is at its concurrency limit.", retry_after=1)
